//! The access log as an operator reads it: the real binary with `log_format = "json"`, its
//! stderr parsed line by line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

mod common;
use common::{clean_env, free_port, STEP};

/// A backend on its own thread: reads each request head and its `Content-Length` body, records
/// the head, answers `200` with the body `hello`.
fn backend() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, heads) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, tx));
        }
    });
    (addr, heads)
}

fn serve(mut stream: TcpStream, heads: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let _ = heads.send(head);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
    }
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// The next access-log line (target `tether::access`), as JSON.
    fn access_line(&self) -> serde_json::Map<String, serde_json::Value> {
        let deadline = Instant::now() + STEP;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("an access-log line");
            let Ok(serde_json::Value::Object(json)) = serde_json::from_str(&line) else {
                panic!("not a JSON object: {line}");
            };
            if json.get("target").and_then(|t| t.as_str()) == Some("tether::access") {
                return json;
            }
        }
    }
}

/// Runs the binary with `telemetry` in its `[telemetry]` table, in front of `backend`.
fn run(name: &str, listen: SocketAddr, backend: SocketAddr, telemetry: &str) -> Running {
    let dir = std::env::temp_dir().join(format!("tether-access-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.toml");
    std::fs::write(
        &path,
        format!(
            r#"workers = 1
admin = {{ bind = "127.0.0.1:0" }}
[telemetry]
log_format = "json"
{telemetry}
[listeners.public]
bind = "{listen}"
[backend_pools.app]
members = ["{backend}"]
[backend_settings.app]
[routing_rules.app]
listener = "public"
paths = ["/upload"]
backend_pool = "app"
backend_settings = "app"
"#
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    clean_env(&mut cmd);
    let mut child = cmd
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn,tether::access=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Running { child, lines }
}

/// Sends `request` once Tether answers (bounded: the socket is bound before it serves), and
/// returns the response.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            stream.set_read_timeout(Some(STEP)).unwrap();
            if stream.write_all(request).is_ok() {
                let mut response = String::new();
                if stream.read_to_string(&mut response).is_ok() && !response.is_empty() {
                    return response;
                }
            }
        }
        assert!(Instant::now() < deadline, "tether never answered");
        std::thread::yield_now();
    }
}

/// One JSON object per request with every field at the top level: bytes in and out, user
/// agent, host, HTTP version, the request id the backend also got, upstream connect time and
/// time to first byte; no query unless `record_query`.
#[test]
fn the_json_access_line_has_flat_fields_bytes_timings_and_the_request_id() {
    let (backend, heads) = backend();
    let listen = free_port();
    let tether = run("all", listen, backend, "");
    let response = exchange(
        listen,
        b"POST /upload?token=secret HTTP/1.1\r\nHost: files.example\r\nUser-Agent: access-test/2\r\n\
          Content-Length: 11\r\nConnection: close\r\n\r\nhello world",
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let head = heads.recv_timeout(STEP).unwrap();
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("the backend got a request id")
        .to_owned();
    assert!(
        response.contains(&format!("x-request-id: {id}\r\n")),
        "{response}"
    );

    let line = tether.access_line();
    assert!(!line.contains_key("fields"), "flat: {line:?}");
    assert_eq!(line["message"], "request");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/upload");
    assert!(!line.contains_key("query"), "queries are off by default");
    assert_eq!(line["host"], "files.example");
    assert_eq!(line["version"], "1.1");
    assert_eq!(line["user_agent"], "access-test/2");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 11);
    assert_eq!(line["bytes_out"], 5);
    assert_eq!(line["request_id"], id.as_str());
    assert_eq!(line["route"], "app");
    assert_eq!(line["backend"], backend.to_string());
    assert_eq!(line["retries"], 0);
    assert_eq!(line["websocket"], false);
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(line["listener"], "public");
    // A fresh backend connection: its connect time is known; the head came after it.
    let connect = line["connect_us"].as_u64().expect("connect_us");
    let ttfb = line["ttfb_us"].as_u64().expect("ttfb_us");
    assert!(ttfb >= connect, "{line:?}");
    assert!(line["duration_us"].as_u64().unwrap() >= ttfb, "{line:?}");
}

/// `access_log_fields` chooses the fields (nothing else of the request is written);
/// `record_query = true` adds the query.
#[test]
fn access_log_fields_choose_the_fields_and_record_query_adds_the_query() {
    let (backend, _heads) = backend();
    let listen = free_port();
    let tether = run(
        "some",
        listen,
        backend,
        "access_log_fields = [\"status\", \"query\", \"bytes_out\"]\nrecord_query = true",
    );
    let response = exchange(
        listen,
        b"GET /upload?page=2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let line = tether.access_line();
    let mut keys: Vec<&str> = line.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bytes_out",
            "level",
            "message",
            "query",
            "status",
            "target",
            "timestamp"
        ]
    );
    assert_eq!(line["query"], "page=2");
    assert_eq!(line["bytes_out"], 5);
}
