//! What Tether's own HTTP/1.1 client does with a backend's answers, byte for byte: raw-TCP
//! backends answer each request with a scripted response, and the client side reads raw bytes
//! too. Chunked bodies with trailers, close-delimited bodies, interim `1xx` answers, framing
//! that is ambiguous (502, the member blamed), a body cut short (the client's connection cut,
//! the member blamed), and one backend connection carrying many requests.
//!
//! Nothing sleeps to synchronize: each step waits for a response, a closed socket or a count,
//! under a bounded deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tether_integration_tests::pool::{backends, member};
use tether_integration_tests::{config_toml, raw, start, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A raw backend: reads each request (head, and a `Content-Length` or chunked body), writes `answer`
/// verbatim, and closes the connection after it when `close` is set. Counts connections and
/// requests.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Scripted {
    async fn start(answer: &'static [u8], close: bool) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = read_request(&mut stream, &mut buf).await else {
                            return;
                        };
                        buf.drain(..end);
                        reqs.fetch_add(1, Ordering::SeqCst);
                        if stream.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            connections,
            requests,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head, and a `Content-Length` or chunked body) into `buf`: where it ends in `buf`, or
/// `None` when the connection closed first.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
            let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
            if text.contains("transfer-encoding: chunked") {
                // The last chunk and an empty trailer section end it (enough for these tests).
                let body = &buf[head..];
                if body.starts_with(b"0\r\n\r\n") {
                    return Some(head + 5);
                }
                if let Some(p) = body.windows(7).position(|w| w == b"\r\n0\r\n\r\n") {
                    return Some(head + p + 7);
                }
            } else {
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= head + length {
                    return Some(head + length);
                }
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One sidecar worker (so every request shares one pool), everything to `backend`.
fn sidecar_for(backend: SocketAddr) -> tether::Sidecar {
    let toml = config_toml(backend, "", "").replace("workers = 2", "workers = 1");
    start(&toml)
}

/// Reads from `stream` until the sidecar closes it (a reset after some bytes keeps those).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// The only member's consecutive passive failures on `GET /backends`.
fn passive_failures(status: &Value, addr: SocketAddr) -> u64 {
    member(status, "app", addr)["passive"]["consecutive_failures"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Decodes a chunked body (as hyper's server writes it to the client): the data, and the
/// trailer section's lines.
fn dechunk(mut body: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut data = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("size line");
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16)
            .expect("hex size");
        body = &body[line_end + 2..];
        if size == 0 {
            let text = String::from_utf8_lossy(body);
            let trailers = text
                .split("\r\n")
                .take_while(|l| !l.is_empty())
                .map(str::to_ascii_lowercase)
                .collect();
            return (data, trailers);
        }
        data.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[tokio::test]
async fn a_chunked_answer_with_trailers_is_relayed_and_its_connection_reused() {
    let backend = Scripted::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n",
        false,
    )
    .await;
    let sidecar = sidecar_for(backend.addr);
    for _ in 0..3 {
        let resp = within(
            "GET",
            raw::send(
                sidecar.addr("public"),
                b"GET / HTTP/1.1\r\nHost: app\r\nTE: trailers\r\nConnection: close\r\n\r\n",
            ),
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        let (data, trailers) = dechunk(&resp.body);
        assert_eq!(String::from_utf8_lossy(&data), "hello world");
        assert_eq!(trailers, ["x-checksum: abc"]);
    }
    assert_eq!(backend.requests(), 3);
    assert_eq!(
        backend.connections(),
        1,
        "one backend connection for all three"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_close_delimited_answer_is_relayed_whole_and_its_connection_not_reused() {
    let backend =
        Scripted::start(b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nuntil the end", true).await;
    let sidecar = sidecar_for(backend.addr);
    for _ in 0..2 {
        let resp = within(
            "GET",
            raw::send(
                sidecar.addr("public"),
                b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
            ),
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-kind"), Some("eof"));
        let body = match resp.header("transfer-encoding") {
            Some("chunked") => dechunk(&resp.body).0,
            _ => resp.body.clone(),
        };
        assert_eq!(String::from_utf8_lossy(&body), "until the end");
    }
    assert_eq!(
        backend.connections(),
        2,
        "a close-delimited body ends its connection"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn interim_answers_are_skipped_and_the_final_one_relayed() {
    let backend = Scripted::start(
        b"HTTP/1.1 100 Continue\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let sidecar = sidecar_for(backend.addr);
    let resp = within(
        "GET",
        raw::send(
            sidecar.addr("public"),
            b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn an_answer_with_both_transfer_encoding_and_content_length_is_502_and_blamed() {
    let backend = Scripted::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
        false,
    )
    .await;
    let sidecar = sidecar_for(backend.addr);
    let resp = within(
        "GET",
        raw::send(
            sidecar.addr("public"),
            b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(resp.text().contains("Transfer-Encoding"), "{}", resp.text());
    let status = backends(sidecar.admin_addr()).await;
    assert_eq!(passive_failures(&status, backend.addr), 1, "{status:#}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_cuts_the_client_and_blames_the_member() {
    let backend =
        Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", true).await;
    let sidecar = sidecar_for(backend.addr);
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    // Keep-alive: only a cut connection ends the read below.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let all = within("truncated answer", read_to_close(&mut stream)).await;
    // The cut may come before hyper's server flushed the head (all of the backend's bytes
    // arrive at once here); either way the client never gets a complete response.
    if !all.is_empty() {
        let resp = raw::parse(&all);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("10"));
        assert!(b"hello".starts_with(&resp.body), "{:?}", resp.body);
    }
    let status = backends(sidecar.admin_addr()).await;
    assert_eq!(passive_failures(&status, backend.addr), 1, "{status:#}");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn sequential_requests_share_one_backend_connection() {
    let backend = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong", false).await;
    let sidecar = sidecar_for(backend.addr);
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    for i in 0..10 {
        // Requests without a body, with a Content-Length one, and with a chunked one.
        let request: &[u8] = match i % 3 {
            0 => b"GET /a HTTP/1.1\r\nHost: app\r\n\r\n",
            1 => b"POST /b HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nabc",
            _ => b"POST /c HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n",
        };
        stream.write_all(request).await.unwrap();
        let head = within("head", raw::read_head(&mut stream)).await;
        assert_eq!(head.status, 200);
        let mut body = [0u8; 4];
        within("body", stream.read_exact(&mut body)).await.unwrap();
        assert_eq!(&body, b"pong");
    }
    assert_eq!(backend.requests(), 10);
    assert_eq!(
        backend.connections(),
        1,
        "one backend connection for ten requests"
    );
    within("stop", sidecar.stop()).await.unwrap();
}
