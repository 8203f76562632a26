//! How probing and route-table updates scale with the size of a pool: a measurement run, not a
//! test.
//!
//! ```sh
//! cargo run --release -p tether-integration-tests --bin pool_scale -- [MEMBERS] [INTERVAL_MS] [WINDOW_S]
//! # default: 1000 members, 5000 ms probe interval, 20 s steady-state window
//! ```
//!
//! It starts MEMBERS real HTTP members on 127.0.0.1 (port 0 each), an in-process sidecar with one
//! probed pool over all of them, and reports:
//!
//! * start-up: time until every member is in rotation, snapshots published meanwhile, and the
//!   CPU the sidecar's own threads used for it;
//! * steady state: probes per second and the sidecar threads' CPU over the window;
//! * a mass flip: 10 % of the members fail their probe; time until they are out, and the build
//!   time of the last snapshot;
//! * picks: nanoseconds per pick of each balancing policy over MEMBERS members, and the time to
//!   build a route snapshot from them.
//!
//! The sidecar's threads are told apart from the members' (`members`) by name: `tether-main` and
//! `tether-runtime` (the System arbiter: route table, admin endpoint) and `actix-rt|…` (the probe
//! arbiter, and the idle workers); CPU comes from `/proc/self/task/*/stat` (Linux, 100 ticks per
//! second).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use tether_actors::balance::{Member as PoolMember, Pool};
use tether_actors::route_table::RouteTableActor;
use tether_config::{HashKey, LoadBalancing};
use tether_integration_tests::pool::{backends, Member};

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
fn thread_cpu(prefix: &str) -> f64 {
    let mut ticks = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
            let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
            ticks += utime + stime;
        }
    }
    ticks as f64 / 100.0
}

/// The sidecar's threads: `tether-main` (System arbiter: route table, resolvers), `tether-runtime`
/// (admin endpoint, I/O driver of the System runtime), and the actix arbiters (`actix-rt|…`: the
/// probe arbiter and the workers, idle here).
fn sidecar_cpu() -> f64 {
    thread_cpu("tether-main") + thread_cpu("tether-runtime") + thread_cpu("actix-rt")
}

fn in_rotation(status: &serde_json::Value) -> u64 {
    status["pools"][0]["in_rotation"].as_u64().unwrap_or(0)
}

async fn wait_rotation(admin: SocketAddr, want: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = backends(admin).await;
        if in_rotation(&status) == want {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "never reached {want} in rotation"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn bench_picks(n: usize) {
    let members: Vec<Arc<PoolMember>> = (0..n)
        .map(|i| {
            Arc::new(PoolMember::new(
                SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
                1,
                "p".into(),
                0,
                None,
            ))
        })
        .collect();
    let client = std::net::IpAddr::from([10, 0, 0, 1]);
    let mut headers = HeaderMap::new();
    headers.insert("x-user", "user-42".parse().unwrap());
    for (label, policy, key) in [
        ("round_robin", LoadBalancing::RoundRobin, HashKey::ClientIp),
        (
            "least_connections",
            LoadBalancing::LeastConnections,
            HashKey::ClientIp,
        ),
        (
            "consistent_hash(header)",
            LoadBalancing::ConsistentHash,
            HashKey::Header("x-user".into()),
        ),
    ] {
        let pool = Pool::new("p".into(), policy, &key, members.clone());
        let picks = if policy == LoadBalancing::RoundRobin {
            2_000_000
        } else {
            200_000
        };
        let started = Instant::now();
        for _ in 0..picks {
            std::hint::black_box(pool.pick(client, &headers));
        }
        let per = started.elapsed().as_nanos() as f64 / f64::from(picks);
        println!("pick  {label:<24} {n} members: {per:>9.1} ns/pick");
    }
}

fn bench_snapshot(n: usize) {
    let members: Vec<String> = (0..n)
        .map(|i| format!("\"127.0.0.1:{}\"", 10_000 + i))
        .collect();
    let toml = format!(
        "[listeners.public]\nbind = \"127.0.0.1:0\"\n[backend_pools.app]\nmembers = [{}]\n\
         [backend_settings.app]\n[routing_rules.app]\nlistener = \"public\"\nbackend_pool = \"app\"\n\
         backend_settings = \"app\"\n",
        members.join(", ")
    );
    let config = Arc::new(tether_config::from_toml_str(&toml).unwrap());
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(RouteTableActor::new(
            config.clone(),
            &[],
            None,
            Default::default(),
        ));
    }
    let per = started.elapsed() / rounds;
    println!("route table with {n} members (records + first snapshot): {per:?} per build");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let interval_ms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let window_s: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);

    bench_picks(n);
    bench_snapshot(n);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("members")
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(Member::start(&format!("m{i}")).await);
        }
        let list: Vec<String> = members.iter().map(|m| format!("\"{}\"", m.addr)).collect();
        let timeout_ms = interval_ms.min(2000);
        let toml = format!(
            r#"workers = 1
shutdown_grace = "1s"
admin = {{ bind = "127.0.0.1:0" }}
[listeners.public]
bind = "127.0.0.1:0"
[backend_pools.app]
members = [{}]
[backend_settings.app]
probe = "health"
[probes.health]
path = "/health"
interval = "{interval_ms}ms"
timeout = "{timeout_ms}ms"
[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"
"#,
            list.join(", ")
        );
        let config = tether_config::from_toml_str(&toml).unwrap();
        let cpu0 = sidecar_cpu();
        let started = Instant::now();
        let sidecar = tether::Sidecar::start(config).unwrap();
        let admin = sidecar.admin_addr();
        let status = wait_rotation(admin, n as u64).await;
        let startup = started.elapsed();
        let cpu1 = sidecar_cpu();
        println!(
            "start-up: {n} members in rotation after {startup:?} (polled every 250 ms); {} snapshots \
             published; sidecar threads used {:.2} s CPU; last snapshot built in {} us",
            status["generation"],
            cpu1 - cpu0,
            status["snapshot_build_us"]
        );

        let probes_before: usize = members.iter().map(|m| m.health.served().len()).sum();
        let cpu_before = sidecar_cpu();
        let split_before = (
            thread_cpu("tether-main") + thread_cpu("tether-runtime"),
            thread_cpu("actix-rt"),
        );
        let window = Duration::from_secs(window_s);
        tokio::time::sleep(window).await;
        let cpu_after = sidecar_cpu();
        let split_after = (
            thread_cpu("tether-main") + thread_cpu("tether-runtime"),
            thread_cpu("actix-rt"),
        );
        let probes_after: usize = members.iter().map(|m| m.health.served().len()).sum();
        let probes = (probes_after - probes_before) as f64 / window.as_secs_f64();
        let cpu = (cpu_after - cpu_before) / window.as_secs_f64();
        println!(
            "steady state ({interval_ms} ms interval): {probes:.0} probes/s; sidecar threads {:.1} % of one core \
             ({:.1} us CPU per probe; System arbiter {:.2} s, probe arbiter and idle workers {:.2} s)",
            cpu * 100.0,
            if probes > 0.0 { cpu / probes * 1e6 } else { 0.0 },
            split_after.0 - split_before.0,
            split_after.1 - split_before.1,
        );

        let flip = n / 10;
        for m in members.iter().take(flip) {
            m.health.set_status(500);
        }
        let cpu_before = sidecar_cpu();
        let generation_before = backends(admin).await["generation"].as_u64().unwrap_or(0);
        let flipped_at = Instant::now();
        let status = wait_rotation(admin, (n - flip) as u64).await;
        println!(
            "mass flip: {flip} members out after {:?} (3 probes each); {} snapshots published; sidecar \
             threads used {:.2} s CPU; last snapshot built in {} us",
            flipped_at.elapsed(),
            status["generation"].as_u64().unwrap_or(0) - generation_before,
            sidecar_cpu() - cpu_before,
            status["snapshot_build_us"]
        );
        let _ = sidecar.stop().await;
        drop(members);
    });
}
