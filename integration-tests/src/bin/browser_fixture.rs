//! What the headless-browser test (`integration-tests/browser/`) runs against: the example echo
//! backend (with its page), the chat example's backend (on a second listener), a pool member
//! the test can kill, and Tether in front of them; the echo backend also behind an HTTPS
//! listener (HTTP/2 by ALPN, WebSockets over HTTP/2) with a certificate for `localhost` made
//! here.
//!
//! Prints one JSON line with the addresses — `{"demo": …, "chat": …, "status": …, "doomed": …,
//! "secure": …, "cert": …}` (`cert`: the PEM file of the HTTPS listener's certificate) — then
//! reads commands on stdin: `kill` kills the member of pool `doomed` (its probe fails within
//! ~200 ms) and answers `killed`; end of input stops everything.

use std::io::BufRead;

use tether_integration_tests::pool::Member;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(tether_examples::echo::serve(echo));
    let chat = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind chat");
    let chat_addr = chat.local_addr().expect("addr");
    tokio::spawn(tether_examples::chat::serve(chat));
    let mut doomed = Member::start("doomed").await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = std::env::temp_dir().join(format!("tether-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write key");
    let toml = format!(
        r#"workers = 1
shutdown_grace = "2s"
admin = {{ bind = "127.0.0.1:0" }}
[listeners.public]
bind = "127.0.0.1:0"
[listeners.chat]
bind = "127.0.0.1:0"
[listeners.secure]
bind = "127.0.0.1:0"
protocol = "https"
[[listeners.secure.certificates]]
cert_file = "{cert_file}"
key_file = "{key_file}"
[routing_rules.secure]
listener = "secure"
backend_pool = "echo"
backend_settings = "echo"
[backend_pools.chat]
members = ["{chat_addr}"]
[routing_rules.chat]
listener = "chat"
backend_pool = "chat"
backend_settings = "echo"
[backend_pools.echo]
members = ["{echo_addr}"]
[backend_pools.doomed]
members = ["{}"]
[backend_settings.echo]
[backend_settings.doomed]
probe = "doomed"
[probes.doomed]
path = "/health"
interval = "200ms"
timeout = "150ms"
unhealthy_threshold = 1
healthy_threshold = 1
[routing_rules.echo]
listener = "public"
backend_pool = "echo"
backend_settings = "echo"
[routing_rules.doomed]
listener = "public"
paths = ["/doomed/*"]
backend_pool = "doomed"
backend_settings = "doomed"
"#,
        doomed.addr,
        cert_file = cert_file.display(),
        key_file = key_file.display(),
    );
    let config = tether_integration_tests::config(&toml);
    let sidecar = tether::Sidecar::start(config).expect("sidecar starts");
    println!(
        "{}",
        serde_json::json!({
            "demo": format!("http://{}/", sidecar.addr("public")),
            "chat": format!("http://{}/", sidecar.addr("chat")),
            "status": format!("http://{}/", sidecar.admin_addr()),
            "doomed": doomed.addr.to_string(),
            "secure": format!("https://localhost:{}/", sidecar.addr("secure").port()),
            "cert": cert_file.display().to_string(),
        })
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(command) = rx.recv().await {
        if command.trim() == "kill" {
            doomed.kill();
            println!("killed");
        }
    }
    let _ = sidecar.stop().await;
}
