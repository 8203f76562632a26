//! Ordinary HTTP/1.1 proxying on the same listener as WebSockets.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tether_integration_tests::{backends, closed_port, config_toml, raw, start, within};
use tokio::net::TcpStream;

#[tokio::test]
async fn get_is_proxied_with_hop_by_hop_headers_removed_both_ways() {
    let backend = backends::http_backend().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let resp = within(
        "GET",
        raw::send(
            sidecar.addr("public"),
            b"GET /hello?x=1 HTTP/1.1\r\nHost: app.local\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-End-To-End: kept\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello from backend");
    assert_eq!(resp.header("x-backend"), Some("yes"));
    assert_eq!(
        resp.header("x-resp-hop"),
        None,
        "named by the backend's Connection"
    );
    assert_eq!(resp.header("keep-alive"), None);

    let seen = &backend.record.heads()[0];
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/hello?x=1");
    for hop in ["x-hop", "keep-alive", "te", "proxy-connection", "upgrade"] {
        assert!(!seen.headers.contains_key(hop), "{hop} reached the backend");
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    assert_eq!(seen.headers["host"], "app.local");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "app.local");
    within("stop", sidecar.stop()).await.unwrap();
}

/// The request body streams to the backend and the response body streams back: each chunk must
/// come back before the next one is sent, which deadlocks (and fails under `within`) if either
/// direction is buffered whole.
#[tokio::test]
async fn streamed_post_round_trips_chunk_by_chunk() {
    let backend = backends::http_backend().await;
    let sidecar = start(&config_toml(backend.addr, "", ""));
    let stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let req = http::Request::post("/echo")
        .header("host", "app.local")
        .body(body)
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"chunk-0;"))))
        .await
        .unwrap();
    let resp = within("response head", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = Vec::new();
    for i in 1..=5 {
        // Wait for the previous chunk's echo before sending the next one.
        loop {
            let frame = within("echoed chunk", body.frame()).await.unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
                break;
            }
        }
        let chunk = format!("chunk-{i};");
        tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.unwrap();
    }
    drop(tx);
    while let Some(frame) = within("rest", body.frame()).await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert_eq!(
        String::from_utf8(received).unwrap(),
        "chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;chunk-5;"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let backend = backends::http_backend().await;
    let mut toml = config_toml(backend.addr, "", "");
    toml = toml.replace("workers = 2", "workers = 1");
    let sidecar = start(&toml);
    let stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..10 {
        let req = http::Request::get("/")
            .header("host", "a")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = within("GET", sender.send_request(req)).await.unwrap();
        let body = within("body", resp.into_body().collect()).await.unwrap();
        assert_eq!(body.to_bytes(), "hello from backend");
    }
    assert_eq!(backend.record.heads().len(), 10);
    assert_eq!(
        backend.record.connections(),
        1,
        "one pooled backend connection"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn backend_down_is_502_with_a_reason() {
    let sidecar = start(&config_toml(closed_port(), "", ""));
    let resp = within(
        "GET",
        raw::send(
            sidecar.addr("public"),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 502);
    assert!(
        resp.text().contains("could not connect to backend"),
        "{}",
        resp.text()
    );
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn silent_backend_is_504_after_request_timeout() {
    let backend = backends::silent_backend().await;
    let sidecar = start(&config_toml(
        backend.addr,
        r#"request_timeout = "300ms""#,
        r#"keepalive_interval = "0s""#,
    ));
    let resp = within(
        "GET",
        raw::send(
            sidecar.addr("public"),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 504);
    assert!(
        resp.text().contains("did not answer within"),
        "{}",
        resp.text()
    );
    assert_eq!(backend.record.connections(), 1);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn unrouted_path_is_404() {
    let backend = backends::http_backend().await;
    let toml = config_toml(backend.addr, "", "").replace(
        "backend_settings = \"app\"\n",
        "backend_settings = \"app\"\npaths = [\"/api/*\"]\n",
    );
    let sidecar = start(&toml);
    let resp = within(
        "GET",
        raw::send(
            sidecar.addr("public"),
            b"GET /other HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("no route"));
    let ok = within(
        "GET",
        raw::send(
            sidecar.addr("public"),
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(backend.record.heads().len(), 1);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let backend = backends::http_backend().await;
    let toml = config_toml(backend.addr, "", "").replace(
        "bind = \"127.0.0.1:0\"\n",
        "bind = \"127.0.0.1:0\"\nmax_headers = 20\nmax_request_head_bytes = \"8KiB\"\n",
    );
    let sidecar = start(&toml);
    let addr = sidecar.addr("public");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let resp = within("big head", raw::send(addr, big.as_bytes())).await;
    assert_eq!(resp.status, 431);
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    let resp = within("many headers", raw::send(addr, req.as_bytes())).await;
    assert_eq!(resp.status, 431);
    assert_eq!(backend.record.connections(), 0);
    within("stop", sidecar.stop()).await.unwrap();
}

/// Layers end to end: the file points the pool at a dead port, a `TETHER_*` variable points it
/// at the live backend, and traffic follows the variable.
#[tokio::test]
async fn environment_variable_overrides_a_file_value() {
    let backend = backends::http_backend().await;
    let dir = std::env::temp_dir().join(format!("tether-env-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tether.toml");
    std::fs::write(&file, config_toml(closed_port(), "", "")).unwrap();
    let loaded = tether_config::load(&tether_config::Sources {
        files: vec![file],
        env: vec![(
            "TETHER_BACKEND_POOLS__APP__MEMBERS".to_string(),
            backend.addr.to_string(),
        )],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    let sidecar = tether::Sidecar::start(loaded.config).unwrap();
    let resp = within(
        "GET",
        raw::send(
            sidecar.addr("public"),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    within("stop", sidecar.stop()).await.unwrap();
}
