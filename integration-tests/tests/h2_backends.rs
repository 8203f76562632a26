//! HTTP/2 backends end to end (`backend_settings.protocol = "h2c"` / `"h2"`): an HTTP/1.1
//! client (hyper's, or raw bytes where the framing matters) → Tether → an HTTP/2 backend, and a
//! Python grpcio client → Tether over h2c → a grpcio server. The backends are real HTTP/2
//! servers on 127.0.0.1: hyper's (echo, concurrency, TLS with ALPN), h2's (GOAWAY,
//! REFUSED_STREAM) and a Python grpcio server (unary and streaming calls, status trailers,
//! deadlines, the health service).
//!
//! Nothing sleeps to synchronize: each step waits on an observable state (a response, a frame,
//! the backend's own counters, `GET /backends`) under a bounded deadline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, KeyPair};
use tether_integration_tests::pool::{backends, member, state, wait_for};
use tether_integration_tests::{
    config_toml, metrics, python_clients, python_script, start, within,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Barrier};

/// What an HTTP/2 test backend saw.
#[derive(Clone, Default)]
struct Seen {
    /// TCP (or TLS) connections accepted.
    connections: Arc<AtomicUsize>,
    /// Each request's version and headers, in arrival order.
    heads: Arc<Mutex<Vec<(Version, String, HeaderMap)>>>,
}

/// A hyper HTTP/2 server (prior knowledge, or TLS with `tls`) on 127.0.0.1 that answers:
/// * `/echo`: its request body, frame by frame as it arrives, with `trailer: x-frames` and the
///   trailer `x-frames: N` (the number of data frames) at the end;
/// * `/together`: `200` once `together` requests are in flight at the same time;
/// * anything else: `200 ok`.
async fn h2_backend(together: usize, tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let barrier = Arc::new(Barrier::new(together.max(1)));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            record.connections.fetch_add(1, Ordering::SeqCst);
            let record = record.clone();
            let barrier = barrier.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    let barrier = barrier.clone();
                    async move { Ok::<_, Infallible>(answer(req, &record, &barrier).await) }
                });
                let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = server.serve_connection(TokioIo::new(sock), service).await;
                    }
                    Some(config) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(sock).await
                        else {
                            return;
                        };
                        let _ = server.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

type EchoBody =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

async fn answer(req: Request<Incoming>, record: &Seen, barrier: &Barrier) -> Response<EchoBody> {
    record.heads.lock().unwrap().push((
        req.version(),
        req.uri().to_string(),
        req.headers().clone(),
    ));
    let path = req.uri().path().to_owned();
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(4);
    match path.as_str() {
        "/echo" => {
            let mut body = req.into_body();
            tokio::spawn(async move {
                let mut frames = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        if data.is_empty() {
                            continue; // an empty DATA frame may just carry END_STREAM
                        }
                        frames += 1;
                        if tx.send(Frame::data(data)).await.is_err() {
                            return;
                        }
                    }
                }
                let mut trailers = HeaderMap::new();
                trailers.insert("x-frames", frames.into());
                let _ = tx.send(Frame::trailers(trailers)).await;
            });
        }
        p if p.starts_with("/header/") => {
            let size: usize = p["/header/".len()..].parse().unwrap();
            let mut resp = Response::new(StreamBody::new(Box::pin(futures_util::stream::empty())
                as futures_util::stream::BoxStream<'static, _>));
            resp.headers_mut().insert(
                "x-big",
                http::HeaderValue::from_str(&"a".repeat(size)).unwrap(),
            );
            return resp;
        }
        "/together" => {
            barrier.wait().await;
            let _ = tx.send(Frame::data(Bytes::from_static(b"together"))).await;
        }
        _ => {
            let _ = tx.send(Frame::data(Bytes::from_static(b"ok"))).await;
        }
    }
    drop(path);
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|f| (Ok(f), rx)) },
        );
    let mut resp = Response::new(StreamBody::new(
        Box::pin(stream) as futures_util::stream::BoxStream<'static, _>
    ));
    resp.headers_mut().insert(
        http::header::TRAILER,
        http::HeaderValue::from_static("x-frames"),
    );
    resp
}

fn h2c_toml(backend: SocketAddr, settings: &str) -> String {
    config_toml(
        backend,
        &format!("protocol = \"h2c\"\nrequest_timeout = \"40s\"\n{settings}"),
        "",
    )
    .replace("workers = 2", "workers = 1")
}

/// An HTTP/1.1 client connection to Tether (hyper's), driven on its own task.
async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let sock = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn empty() -> BoxBody {
    Full::new(Bytes::new()).boxed()
}

/// Streaming both ways without buffering: each chunk the client sends comes back through the
/// h2c backend before the client sends the next one; the backend's trailers reach a client
/// that sent `TE: trailers`, and the backend saw HTTP/2 with `te: trailers`.
#[tokio::test]
async fn h2c_backend_streams_both_ways_and_relays_trailers() {
    let (backend, seen) = h2_backend(1, None).await;
    let sidecar = start(&h2c_toml(backend, ""));
    let addr = sidecar.addr("public");
    let mut client = h1_client(addr).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (f, rx))
    }));
    let req = Request::post("/echo")
        .header("host", "app")
        .header("te", "trailers")
        .body(BodyExt::boxed(body))
        .unwrap();
    let resp = within("response head", client.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for round in 0..3 {
        let chunk = Bytes::from(format!("chunk {round}"));
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        let echoed = within("echo of one chunk", body.frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_data().unwrap(), chunk, "round {round}");
    }
    drop(tx);
    let last = within("trailers", body.frame()).await.unwrap().unwrap();
    let trailers = last.into_trailers().expect("trailers after the data");
    assert_eq!(trailers["x-frames"], "3");
    let heads = seen.heads.lock().unwrap().clone();
    assert_eq!(heads[0].0, Version::HTTP_2);
    assert_eq!(
        heads[0].1, "http://app/echo",
        "absolute target: :scheme and :authority"
    );
    assert_eq!(heads[0].2["te"], "trailers");
    assert!(
        heads[0].2.get("host").is_none(),
        "Host went into :authority"
    );
}

/// Without `TE: trailers` an HTTP/1.1 client gets the body and no trailer section (RFC 9110
/// §6.5.1); with it, the chunked trailer section carries them. Raw bytes: the framing matters.
#[tokio::test]
async fn http11_clients_get_trailers_only_when_they_accept_them() {
    let (backend, _seen) = h2_backend(1, None).await;
    let sidecar = start(&h2c_toml(backend, ""));
    let addr = sidecar.addr("public");
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for (te, expect_trailer) in [("", false), ("TE: trailers\r\n", true)] {
        let req = format!(
            "POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n{te}\r\n{body}"
        );
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut all = Vec::new();
        within("whole response", sock.read_to_end(&mut all))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&all).to_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("transfer-encoding: chunked"), "{text}");
        assert!(text.contains("\r\n5\r\nhello\r\n"), "{text}");
        assert_eq!(
            text.contains("\r\n0\r\nx-frames: 1\r\n\r\n"),
            expect_trailer,
            "te {te:?}: {text}"
        );
    }
}

/// Fifty requests in flight at once share one backend connection (the backend answers only once
/// all fifty have arrived), and the connection is counted once in the metrics.
#[tokio::test]
async fn concurrent_requests_share_one_connection() {
    const N: usize = 50;
    let (backend, seen) = h2_backend(N, None).await;
    let sidecar = start(&h2c_toml(backend, ""));
    let addr = sidecar.addr("public");
    let mut calls = Vec::new();
    for _ in 0..N {
        calls.push(tokio::spawn(async move {
            let mut client = h1_client(addr).await;
            let req = Request::get("/together")
                .header("host", "app")
                .body(empty())
                .unwrap();
            let resp = client.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for call in calls {
        let (status, body) = within("a concurrent request", call).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"together"[..]));
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    let m = metrics(sidecar.admin_addr()).await;
    assert_eq!(m.get("tether_backend_h2_connections_total"), Some(&1.0));
}

/// A backend that sends GOAWAY after each answer (h2's graceful shutdown): the next request goes
/// out on a new connection and succeeds.
#[tokio::test]
async fn goaway_moves_new_requests_to_a_new_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(sock).await.unwrap();
                if let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let mut send = respond.send_response(Response::new(()), false).unwrap();
                    send.send_data(Bytes::from(format!("connection {n}")), true)
                        .unwrap();
                    conn.graceful_shutdown();
                }
                while conn.accept().await.is_some() {}
            });
        }
    });
    let sidecar = start(&h2c_toml(backend, ""));
    let addr = sidecar.addr("public");
    for n in 1..=3 {
        let (status, body) = within("GET", get(addr, "/", "")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, format!("connection {n}").as_str())
        );
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

/// A stream the backend refuses (`REFUSED_STREAM`, RFC 9113 §8.7: not processed) is counted,
/// and a bodyless GET goes to the other member; the refusing member gets the failure.
#[tokio::test]
async fn refused_streams_are_retried_on_another_member() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(sock).await.unwrap();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    let (serving, seen) = h2_backend(1, None).await;
    let toml = h2c_toml(refusing, "retries = 1").replace(
        &format!("members = [\"{refusing}\"]"),
        &format!("members = [\"{refusing}\", \"{serving}\"]\nload_balancing = \"round_robin\""),
    );
    let sidecar = start(&toml);
    let addr = sidecar.addr("public");
    for _ in 0..2 {
        let (status, body) = within("GET", get(addr, "/", "")).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    let m = metrics(sidecar.admin_addr()).await;
    assert_eq!(m.get("tether_backend_h2_streams_refused_total"), Some(&1.0));
    assert_eq!(
        m.get("tether_backend_retries_total{reason=\"reset\"}"),
        Some(&1.0)
    );
    assert_eq!(seen.heads.lock().unwrap().len(), 2);
}

/// In a pool of one (a sidecar's usual app), a stream the backend turns away unprocessed goes
/// again to the same member on another stream; a POST (not idempotent) is not sent again.
#[tokio::test]
async fn a_refused_stream_goes_again_to_a_lone_member() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let count = streams.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(sock).await.unwrap();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    // Every odd stream is refused, every even one served.
                    if count.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else {
                        let mut send = respond.send_response(Response::new(()), false).unwrap();
                        send.send_data(Bytes::from_static(b"served"), true).unwrap();
                    }
                }
            });
        }
    });
    let sidecar = start(&h2c_toml(backend, ""));
    let addr = sidecar.addr("public");
    let (status, body) = within("GET", get(addr, "/", "")).await;
    assert_eq!((status, body.as_str()), (200, "served"));
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    let mut client = h1_client(addr).await;
    let req = Request::post("/")
        .header("host", "app")
        .body(empty())
        .unwrap();
    let resp = within("POST", client.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(streams.load(Ordering::SeqCst), 3);
    let m = metrics(sidecar.admin_addr()).await;
    assert_eq!(m.get("tether_backend_h2_streams_refused_total"), Some(&2.0));
    assert_eq!(
        m.get("tether_backend_retries_total{reason=\"reset\"}"),
        Some(&1.0)
    );
}

/// `protocol = "h2"`: TLS with ALPN `h2` to a backend with a certificate made here; a TLS
/// backend that only speaks HTTP/1.1 is refused with 502, never spoken to in HTTP/1.1.
#[tokio::test]
async fn h2_over_tls_and_no_silent_downgrade() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["backend.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tether-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("backend.pem");
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let server_config = |alpn: &[&[u8]]| {
        let mut c = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    };
    let settings = format!(
        "ca_file = \"{}\"\nserver_name = \"backend.test\"\nretries = 0",
        ca_file.display()
    );

    let (backend, seen) = h2_backend(1, Some(server_config(&[b"h2"]))).await;
    let sidecar = start(&h2c_toml(backend, &settings).replace("\"h2c\"", "\"h2\""));
    let (status, body) = within("GET over h2", get(sidecar.addr("public"), "/x", "")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let heads = seen.heads.lock().unwrap().clone();
    assert_eq!(
        (heads[0].0, heads[0].1.as_str()),
        (Version::HTTP_2, "https://app/x")
    );

    // A TLS server that knows nothing of ALPN (so selects none: HTTP/1.1 by default). One that
    // knows ALPN but not h2 ends the handshake itself (no_application_protocol alert).
    let h1_only = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h1_addr = h1_only.local_addr().unwrap();
    let config = server_config(&[]);
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = h1_only.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(sock).await {
                    let mut buf = [0u8; 1024];
                    while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    let sidecar = start(&h2c_toml(h1_addr, &settings).replace("\"h2c\"", "\"h2\""));
    let (status, body) = within(
        "GET to an h1-only backend",
        get(sidecar.addr("public"), "/", ""),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("did not select ALPN \"h2\""), "{body}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A backend's response header list is accepted up to 64 KiB (above hyper's 16 KiB default)
/// and refused above it with 502, the backend's failure.
#[tokio::test]
async fn response_header_lists_are_bounded() {
    let (backend, _seen) = h2_backend(1, None).await;
    let sidecar = start(&h2c_toml(backend, "retries = 0"));
    let addr = sidecar.addr("public");
    let (status, _) = within("32 KiB header", get(addr, "/header/32768", "")).await;
    assert_eq!(status, 200);
    let (status, body) = within("100 KiB header", get(addr, "/header/102400", "")).await;
    assert_eq!(status, 502, "{body}");
    let status = backends(sidecar.admin_addr()).await;
    assert_eq!(
        member(&status, "app", backend)["passive"]["consecutive_failures"],
        1,
        "{status:#}"
    );
}

/// `kind = "http"` probes over h2c: the member is probed with HTTP/2 and comes into rotation.
#[tokio::test]
async fn h2c_probes_speak_http2() {
    let (backend, seen) = h2_backend(1, None).await;
    let toml = h2c_toml(backend, "probe = \"health\"")
        + "\n[probes.health]\nprotocol = \"h2c\"\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"1s\"\n";
    let sidecar = start(&toml);
    wait_for(sidecar.admin_addr(), "member healthy", |s| {
        state(s, "app", backend) == "healthy"
    })
    .await;
    let heads = seen.heads.lock().unwrap().clone();
    assert_eq!(heads[0].0, Version::HTTP_2);
    assert_eq!(heads[0].1, format!("http://{backend}/health"));
}

/// `GET path` over a fresh HTTP/1.1 connection to Tether: status and decoded body.
async fn get(addr: SocketAddr, path: &str, _extra: &str) -> (u16, String) {
    let mut client = h1_client(addr).await;
    let req = Request::get(path)
        .header("host", "app")
        .body(empty())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The Python grpcio backend (`python/grpc_backend.py`): its address, and its stdin for
/// health commands. Killed when dropped.
struct GrpcBackend {
    addr: SocketAddr,
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl GrpcBackend {
    async fn start(python: &std::path::Path) -> GrpcBackend {
        let mut child = tokio::process::Command::new(python)
            .arg(python_script("grpc_backend.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = within("grpc backend starts", lines.next_line())
            .await
            .unwrap()
            .unwrap();
        let port: u16 = first.strip_prefix("PORT ").unwrap().parse().unwrap();
        GrpcBackend {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            lines,
        }
    }

    async fn command(&mut self, command: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        let answer = within("grpc backend command", self.lines.next_line())
            .await
            .unwrap();
        assert_eq!(answer.as_deref(), Some("OK"));
    }
}

/// One gRPC message: uncompressed, length-prefixed.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// A gRPC call over HTTP/1.1 to Tether (which speaks HTTP/2 to grpcio): the response head, the
/// body bytes and the trailers (empty when the answer was trailers-only).
async fn grpc_call(
    addr: SocketAddr,
    method: &str,
    body: Bytes,
    extra: &[(&str, &str)],
) -> (http::response::Parts, Bytes, HeaderMap) {
    let mut client = h1_client(addr).await;
    let mut req = Request::post(format!("/test.Echo/{method}"))
        .header("host", "app")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = within(
        "gRPC response head",
        client.send_request(req.body(Full::new(body).boxed()).unwrap()),
    )
    .await
    .unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    let mut trailers = HeaderMap::new();
    while let Some(frame) = within("gRPC body", body.frame()).await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(mut d) => {
                while d.has_remaining() {
                    let chunk = d.chunk().to_vec();
                    d.advance(chunk.len());
                    data.extend_from_slice(&chunk);
                }
            }
            Err(frame) => trailers = frame.into_trailers().unwrap(),
        }
    }
    (parts, Bytes::from(data), trailers)
}

/// Against grpcio: a unary call comes back with `grpc-status: 0` in the trailers, a streaming
/// call echoes every message, a failing call's `grpc-status`/`grpc-message` reach the client,
/// and a call whose `grpc-timeout` passes first gets `DEADLINE_EXCEEDED` (trailers-only, `200`)
/// without counting against the member.
#[tokio::test]
async fn grpc_calls_to_a_grpcio_backend() {
    let Some(python) = python_clients() else {
        return;
    };
    let grpc = GrpcBackend::start(&python).await;
    let sidecar = start(&h2c_toml(grpc.addr, ""));
    let addr = sidecar.addr("public");

    let (head, body, trailers) = grpc_call(addr, "Unary", grpc_frame(b"hello"), &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(body, grpc_frame(b"hello"));
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");

    let mut stream = Vec::new();
    for m in [&b"one"[..], b"two", b"three"] {
        stream.extend_from_slice(&grpc_frame(m));
    }
    let (_, body, trailers) = grpc_call(addr, "Bidi", Bytes::from(stream.clone()), &[]).await;
    assert_eq!(body, Bytes::from(stream));
    assert_eq!(trailers["grpc-status"], "0");

    let (head, _, trailers) = grpc_call(addr, "Fail", grpc_frame(b"x"), &[]).await;
    let status = trailers
        .get("grpc-status")
        .or(head.headers.get("grpc-status"))
        .unwrap();
    let message = trailers
        .get("grpc-message")
        .or(head.headers.get("grpc-message"))
        .unwrap();
    assert_eq!(
        (status.to_str().unwrap(), message.to_str().unwrap()),
        ("3", "bad input: x")
    );

    let (head, body, _) =
        grpc_call(addr, "Slow", grpc_frame(b"z"), &[("grpc-timeout", "300m")]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["grpc-status"], "4");
    assert!(head.headers["grpc-message"]
        .to_str()
        .unwrap()
        .starts_with("deadline exceeded"));
    assert!(body.is_empty());
    let status = backends(sidecar.admin_addr()).await;
    assert_eq!(
        member(&status, "app", grpc.addr)["passive"]["consecutive_failures"],
        0,
        "the client's deadline is not the backend's failure: {status:#}"
    );
}

/// `kind = "grpc"` probes call `grpc.health.v1.Health/Check` on grpcio's health service: the
/// member is healthy while it says SERVING and leaves rotation when it says NOT_SERVING.
#[tokio::test]
async fn grpc_health_probes_follow_the_serving_status() {
    let Some(python) = python_clients() else {
        return;
    };
    let mut grpc = GrpcBackend::start(&python).await;
    let toml = h2c_toml(grpc.addr, "probe = \"health\"")
        + "\n[probes.health]\nkind = \"grpc\"\nprotocol = \"h2c\"\ninterval = \"1s\"\ntimeout = \"1s\"\nunhealthy_threshold = 1\n";
    let sidecar = start(&toml);
    let admin = sidecar.admin_addr();
    wait_for(admin, "member healthy", |s| {
        state(s, "app", grpc.addr) == "healthy"
    })
    .await;
    grpc.command("NOT_SERVING").await;
    let status = wait_for(admin, "member unhealthy", |s| {
        state(s, "app", grpc.addr) == "unhealthy"
    })
    .await;
    let detail = member(&status, "app", grpc.addr).to_string();
    assert!(detail.contains("not SERVING"), "{detail}");
    grpc.command("SERVING").await;
    wait_for(admin, "member healthy again", |s| {
        state(s, "app", grpc.addr) == "healthy"
    })
    .await;
}

/// A real gRPC client (grpcio, h2c with prior knowledge on Tether's plain listener) → Tether →
/// the grpcio server: a unary call, an interleaved bidirectional stream, a non-zero
/// `grpc-status` with its message, and a deadline that passes (DEADLINE_EXCEEDED, without
/// counting against the member).
#[tokio::test]
async fn grpcio_client_through_tether_to_grpcio_server() {
    let Some(python) = python_clients() else {
        return;
    };
    let grpc = GrpcBackend::start(&python).await;
    let sidecar = start(&h2c_toml(grpc.addr, ""));
    let addr = sidecar.addr("public");
    let out = within(
        "grpcio client",
        tokio::process::Command::new(&python)
            .arg(python_script("grpc_client.py"))
            .arg(addr.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "grpc_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["unary"], "hello");
    assert_eq!(seen["bidi"], serde_json::json!(["one", "two", "three"]));
    assert_eq!(
        seen["fail"],
        serde_json::json!(["INVALID_ARGUMENT", "bad input: x"])
    );
    assert_eq!(seen["deadline"], "DEADLINE_EXCEEDED");
    let status = backends(sidecar.admin_addr()).await;
    assert_eq!(
        member(&status, "app", grpc.addr)["passive"]["consecutive_failures"],
        0,
        "{status:#}"
    );
}
