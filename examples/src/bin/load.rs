//! `load`: the benchmark's load tool (issue 8). One scenario per run, against one target on
//! `127.0.0.0/8`; `bench/run.sh` drives it. See [`tether_examples::load`] for what each
//! scenario measures.
//!
//! ```text
//! load echo      --url ws://127.0.0.1:18183/ws --pid PID [--size 64] [--connections 64] [--window 16]
//! load latency   --url ws://127.0.0.1:18183/ws [--rate 5000] [--connections 64]
//! load handshake --url ws://127.0.0.1:18183/ws --pid PID [--workers 32]
//! load idle      --url ws://127.0.0.1:18183/ws --pid PID [--sessions 1000]
//! load idle_http --url http://127.0.0.1:18183/ --pid PID [--connections 1000]
//! load drain     --url ws://127.0.0.1:18183/ws --pid PID [--sessions 1000] [--grace 30s]
//! load http      --url http://127.0.0.1:18183/ --pid PID [--connections 64]
//! load wait      --url http://127.0.0.1:18183/ [--timeout 10s]
//! load report    --raw FILE [--md FILE] [--json FILE] [--meta KEY=VALUE]...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tether_examples::load::client::{wait_ready, Target, Upgrader};
use tether_examples::load::procstat::{machine_cores, Watched};
use tether_examples::load::scenarios::{
    self, DrainParams, EchoParams, HandshakeParams, HttpParams, IdleHttpParams, IdleParams,
    LatencyParams, Metrics,
};
use tether_examples::load::{parse_duration, report, BoxError, Record};

const USAGE: &str = "\
usage: load SCENARIO [options]

scenarios (each appends one JSON line to --out, or prints it):
  echo       --url WS [--size 64] [--connections 64] [--window 16] [--warmup 500ms] [--duration 3s]
             messages/s and proxy CPU µs per echoed message
  latency    --url WS [--rate 5000] [--connections 64] [--size 64] [--warmup 500ms] [--duration 5s]
             round-trip p50/p99/p99.9 at a fixed total message rate
  handshake  --url WS [--workers 32] [--size 64] [--warmup 500ms] [--duration 3s]
             connect + upgrade + one echo + close: handshakes/s and CPU µs per handshake
  idle       --url WS [--sessions 1000] [--concurrency 64]
             proxy RSS growth per idle session, then one echo on every session
  idle_http  --url HTTP [--connections 1000] [--concurrency 64]
             proxy RSS growth per plain connection that has not sent a request yet
  drain      --url WS --pid PID [--sessions 1000] [--concurrency 64] [--grace 30s]
             hold N idle sessions, SIGTERM the first --pid: close frames and their codes,
             time to the last close frame and to the proxy's exit, RSS growth per session
  http       --url HTTP [--connections 64] [--threads 1] [--duration 3s]
             wrk with keep-alive: requests/s and CPU µs per request
  wait       --url HTTP [--timeout 10s]
             wait until GET URL answers 200 (readiness of a backend or proxy)
  report     --raw FILE [--md FILE] [--json FILE] [--meta KEY=VALUE]...
             medians over rounds, ratios and targets: markdown on stdout

common options:
  --pid PID      a process of the proxy to measure (repeat for several; CPU and RSS are summed)
  --label NAME   what is measured: direct, nginx, haproxy, tether (default: target)
  --round N      round number (default 1)
  --out FILE     append the JSON record to FILE instead of printing it
  --id NAME      record the run under this scenario id instead of the default one
                 (e.g. workers2_echo_64B for the echo run of the workers = 2 step)

URLs must be ws:// or http:// with an IPv4 address in 127.0.0.0/8 and a port.";

/// Parsed `--key value` options, in order.
struct Options {
    pairs: Vec<(String, String)>,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>, allowed: &[&str]) -> Result<Self, BoxError> {
        let mut pairs = Vec::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let Some(key) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}").into());
            };
            let (key, value) = match key.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| format!("--{key} needs a value"))?;
                    (key.to_owned(), value)
                }
            };
            if !allowed.contains(&key.as_str()) {
                return Err(format!("unknown option --{key} for this scenario").into());
            }
            pairs.push((key, value));
        }
        Ok(Self { pairs })
    }

    fn last(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, BoxError> {
        match self.last(key) {
            Some(text) => text
                .parse()
                .map_err(|_| format!("--{key}: not a number: {text:?}").into()),
            None => Ok(default),
        }
    }

    fn duration(&self, key: &str, default: &str) -> Result<Duration, BoxError> {
        parse_duration(self.last(key).unwrap_or(default))
    }

    fn target(&self) -> Result<Target, BoxError> {
        Target::parse(self.last("url").ok_or("--url is required")?)
    }

    fn watched(&self) -> Result<Watched, BoxError> {
        let pids = self
            .all("pid")
            .map(|p| p.parse().map_err(|_| format!("--pid: not a pid: {p:?}")))
            .collect::<Result<Vec<u32>, _>>()?;
        Ok(Watched::new(pids))
    }
}

/// `--grace` of the drain scenario when not given: Tether's default `shutdown_grace`.
const DEFAULT_GRACE: &str = "30s";

const COMMON: &[&str] = &["url", "pid", "label", "round", "out", "id"];

fn allowed(scenario: &str) -> Option<Vec<&'static str>> {
    let own: &[&str] = match scenario {
        "echo" => &["size", "connections", "window", "warmup", "duration"],
        "latency" => &["rate", "connections", "size", "warmup", "duration"],
        "handshake" => &["workers", "size", "warmup", "duration"],
        "idle" => &["sessions", "concurrency"],
        "idle_http" => &["connections", "concurrency"],
        "drain" => &["sessions", "concurrency", "grace"],
        "http" => &["connections", "threads", "duration"],
        "wait" => return Some(vec!["url", "timeout"]),
        "report" => return Some(vec!["raw", "md", "json", "meta"]),
        _ => return None,
    };
    Some(COMMON.iter().chain(own).copied().collect())
}

/// Runs one measuring scenario: returns its record id, parameters and figures.
async fn measure(
    scenario: &str,
    opts: &Options,
) -> Result<(String, serde_json::Value, Metrics), BoxError> {
    let target = opts.target()?;
    let watched = opts.watched()?;
    let upgrader = Upgrader::new(target.clone());
    let warmup = opts.duration("warmup", "500ms")?;
    Ok(match scenario {
        "echo" => {
            let p = EchoParams {
                connections: opts.number("connections", 64)?,
                size: opts.number("size", 64)?,
                window: opts.number("window", 16)?,
                warmup,
                duration: opts.duration("duration", "3s")?,
            };
            let params = serde_json::json!({
                "connections": p.connections, "size": p.size, "window": p.window,
                "warmup_s": p.warmup.as_secs_f64(), "duration_s": p.duration.as_secs_f64(),
            });
            let id = format!("echo_{}B", p.size);
            (id, params, scenarios::echo(&upgrader, &watched, &p).await?)
        }
        "latency" => {
            let p = LatencyParams {
                connections: opts.number("connections", 64)?,
                rate: opts.number("rate", 5000)?,
                size: opts.number("size", 64)?,
                warmup,
                duration: opts.duration("duration", "5s")?,
            };
            let params = serde_json::json!({
                "connections": p.connections, "rate": p.rate, "size": p.size,
                "warmup_s": p.warmup.as_secs_f64(), "duration_s": p.duration.as_secs_f64(),
            });
            (
                "latency".into(),
                params,
                scenarios::latency(&upgrader, &p).await?,
            )
        }
        "handshake" => {
            let p = HandshakeParams {
                workers: opts.number("workers", 32)?,
                size: opts.number("size", 64)?,
                warmup,
                duration: opts.duration("duration", "3s")?,
            };
            let params = serde_json::json!({
                "workers": p.workers, "size": p.size,
                "warmup_s": p.warmup.as_secs_f64(), "duration_s": p.duration.as_secs_f64(),
            });
            (
                "handshake".into(),
                params,
                scenarios::handshake(&upgrader, &watched, &p).await?,
            )
        }
        "idle" => {
            let p = IdleParams {
                sessions: opts.number("sessions", 1000)?,
                concurrency: opts.number("concurrency", 64)?,
            };
            let params =
                serde_json::json!({ "sessions": p.sessions, "concurrency": p.concurrency });
            (
                "idle".into(),
                params,
                scenarios::idle(&upgrader, &watched, &p).await?,
            )
        }
        "idle_http" => {
            let p = IdleHttpParams {
                connections: opts.number("connections", 1000)?,
                concurrency: opts.number("concurrency", 64)?,
                accept_wait: scenarios::ACCEPT_WAIT,
            };
            let params =
                serde_json::json!({ "connections": p.connections, "concurrency": p.concurrency });
            (
                "idle_http".into(),
                params,
                scenarios::idle_http(&target, &watched, &p).await?,
            )
        }
        "drain" => {
            let p = DrainParams {
                sessions: opts.number("sessions", 1000)?,
                concurrency: opts.number("concurrency", 64)?,
                grace: opts.duration("grace", DEFAULT_GRACE)?,
            };
            let params = serde_json::json!({
                "sessions": p.sessions, "concurrency": p.concurrency,
                "grace_s": p.grace.as_secs_f64(),
            });
            (
                "drain".into(),
                params,
                scenarios::drain(&upgrader, &watched, &p).await?,
            )
        }
        "http" => {
            let p = HttpParams {
                connections: opts.number("connections", 64)?,
                threads: opts.number("threads", 1)?,
                duration: opts.duration("duration", "3s")?,
            };
            let params = serde_json::json!({
                "connections": p.connections, "threads": p.threads,
                "duration_s": p.duration.as_secs_f64(),
            });
            (
                "http".into(),
                params,
                scenarios::http(&target, &watched, &p).await?,
            )
        }
        other => return Err(format!("unknown scenario {other:?}").into()),
    })
}

/// A one-line human summary of a record, for the script's progress output.
fn summary(record: &Record) -> String {
    let wanted = [
        "msgs_per_s",
        "cpu_us_per_msg",
        "p50_us",
        "p99_us",
        "p999_us",
        "handshakes_per_s",
        "cpu_us_per_handshake",
        "opened",
        "alive",
        "kib_per_session",
        "kib_per_session_after_echo",
        "accepted",
        "kib_per_conn",
        "drained",
        "close_1001",
        "no_close",
        "drain_seconds",
        "exit_seconds",
        "reqs_per_s",
        "cpu_us_per_req",
        "proxy_cpu_share",
        "client_msgs_per_read",
        "steal_share",
        "errors",
    ];
    let figures: Vec<String> = wanted
        .iter()
        .filter_map(|k| record.metrics.get(*k).map(|v| format!("{k}={v:.2}")))
        .collect();
    format!(
        "round {} {:>10} {:>8}: {}",
        record.round,
        record.scenario,
        record.label,
        figures.join(" ")
    )
}

async fn run(scenario: &str, opts: Options) -> Result<(), BoxError> {
    match scenario {
        "wait" => {
            let timeout = opts.duration("timeout", "10s")?;
            return wait_ready(&opts.target()?, timeout).await;
        }
        "report" => return write_report(&opts),
        _ => {}
    }
    // Every scenario ends by itself; this bounds a run even if a proxy stops answering.
    let limit = Duration::from_secs(120)
        + opts.duration("duration", "5s")?
        + opts.duration("warmup", "500ms")?
        + if scenario == "drain" {
            opts.duration("grace", DEFAULT_GRACE)?
        } else {
            Duration::ZERO
        };
    let (id, mut params, metrics) = tokio::time::timeout(limit, measure(scenario, &opts))
        .await
        .map_err(|_| format!("{scenario} did not finish within {limit:?}"))??;
    // The machine's cores: the report says when a scaling figure is bounded by them.
    let cores = machine_cores();
    if let Some(map) = params.as_object_mut() {
        map.insert("cores".into(), cores.into());
    }
    let record = Record {
        scenario: opts.last("id").map_or(id, str::to_owned),
        label: opts.last("label").unwrap_or("target").to_owned(),
        round: opts.number("round", 1)?,
        pids: opts.watched()?.pids().to_vec(),
        params: serde_json::from_value(params)?,
        metrics,
    };
    eprintln!("{}", summary(&record));
    match opts.last("out") {
        Some(path) => record.append_to(&PathBuf::from(path))?,
        None => println!("{}", serde_json::to_string(&record)?),
    }
    Ok(())
}

fn write_report(opts: &Options) -> Result<(), BoxError> {
    let raw = opts.last("raw").ok_or("--raw is required")?;
    let text = std::fs::read_to_string(raw).map_err(|e| format!("{raw}: {e}"))?;
    let records = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<Record>, _>>()
        .map_err(|e| format!("{raw}: {e}"))?;
    let meta = opts
        .all("meta")
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--meta {kv:?}: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let markdown = report::markdown(&records, &meta);
    print!("{markdown}");
    if let Some(path) = opts.last("md") {
        std::fs::write(path, &markdown)?;
    }
    if let Some(path) = opts.last("json") {
        let summary = report::json_summary(&records, &meta);
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(scenario) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    if scenario == "-h" || scenario == "--help" {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let Some(allowed) = allowed(&scenario) else {
        eprintln!("load: unknown scenario {scenario:?}\n\n{USAGE}");
        return ExitCode::from(64);
    };
    let opts = match Options::parse(args, &allowed) {
        Ok(opts) => opts,
        Err(error) => {
            eprintln!("load {scenario}: {error}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    // One thread: the tool is pinned to one core, where non-blocking sockets on a single
    // thread drive the most load.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("load: cannot start the runtime: {error}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(run(&scenario, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("load {scenario}: {error}");
            ExitCode::from(70)
        }
    }
}
