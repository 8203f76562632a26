//! One host per request (RFC 9112 §3.2, §3.2.2), with raw requests: an absolute-form target's
//! authority routes the request and replaces `Host` for the backend; an HTTP/1.1 request with no
//! `Host`, two `Host` lines or an invalid one is refused with 400 before any backend sees it.

use std::net::SocketAddr;

use tether_integration_tests::{backends, raw, start, within};

/// Rule `a` serves only `a.example`; rule `any` (no `hosts`) serves paths under `/any/`.
fn two_rules(backend: SocketAddr) -> String {
    format!(
        r#"workers = 1
shutdown_grace = "5s"
admin = {{ bind = "127.0.0.1:0" }}

[listeners.public]
bind = "127.0.0.1:0"

[backend_pools.app]
members = ["{backend}"]

[backend_settings.app]
connect_timeout = "2s"

[routing_rules.a]
listener = "public"
hosts = ["a.example"]
backend_pool = "app"
backend_settings = "app"

[routing_rules.any]
listener = "public"
paths = ["/any/*"]
backend_pool = "app"
backend_settings = "app"
"#
    )
}

/// The issue's example: `GET http://a.example/x` with `Host: b.example` is routed by the
/// target's authority and the backend sees one `Host`, the one the route allowed; the reverse
/// pair reaches no virtual host that no rule allows.
#[tokio::test]
async fn absolute_form_routes_and_forwards_by_the_target_authority() {
    let backend = backends::http_backend().await;
    let sidecar = start(&two_rules(backend.addr));
    let addr = sidecar.addr("public");

    let resp = within(
        "absolute-form",
        raw::send(
            addr,
            b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let heads = backend.record.heads();
    assert_eq!(heads.len(), 1);
    let hosts: Vec<_> = heads[0].headers.get_all("host").iter().collect();
    assert_eq!(hosts, ["a.example"], "the backend saw {hosts:?}");
    assert_eq!(heads[0].headers["x-forwarded-host"], "a.example");
    assert_eq!(heads[0].uri, "/x", "origin-form towards the backend");

    // b.example has no rule: a Host naming a.example does not open it.
    let resp = within(
        "absolute-form, other host",
        raw::send(
            addr,
            b"GET http://b.example/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert_eq!(
        backend.record.heads().len(),
        1,
        "nothing more reached the backend"
    );

    // A target with userinfo or another scheme names no host we serve.
    for target in ["http://u@a.example/x", "ftp://a.example/x"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
        let resp = within("bad target", raw::send(addr, req.as_bytes())).await;
        assert_eq!(resp.status, 400, "{target}: {}", resp.text());
    }
    assert_eq!(backend.record.heads().len(), 1);
    within("stop", sidecar.stop()).await.unwrap();
}

/// RFC 9112 §3.2: HTTP/1.1 without `Host`, two `Host` lines (equal or not), or an invalid value
/// → 400, and the backend sees nothing; HTTP/1.0 may go without `Host`.
#[tokio::test]
async fn missing_duplicate_or_invalid_host_is_400() {
    let backend = backends::http_backend().await;
    let sidecar = start(&two_rules(backend.addr));
    let addr = sidecar.addr("public");
    let cases: [(&str, &str); 6] = [
        ("no Host", "GET /any/x HTTP/1.1\r\nConnection: close\r\n\r\n"),
        (
            "two equal",
            "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "two different",
            "GET /any/x HTTP/1.1\r\nHost: b.example\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "two on HTTP/1.0",
            "GET /any/x HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        (
            "bad port",
            "GET /any/x HTTP/1.1\r\nHost: a.example:99999\r\nConnection: close\r\n\r\n",
        ),
        (
            "not a host",
            "GET /any/x HTTP/1.1\r\nHost: a.example/evil\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, req) in cases {
        let resp = within(what, raw::send(addr, req.as_bytes())).await;
        assert_eq!(resp.status, 400, "{what}: {}", resp.text());
        assert!(resp.text().contains("Host"), "{what}: {}", resp.text());
    }
    assert!(
        backend.record.heads().is_empty(),
        "a refused request reached the backend"
    );

    let resp = within(
        "HTTP/1.0 without Host",
        raw::send(addr, b"GET /any/x HTTP/1.0\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    within("stop", sidecar.stop()).await.unwrap();
}

/// The same rule holds for a WebSocket handshake: two `Host` lines → 400 before any backend.
#[tokio::test]
async fn websocket_handshake_with_two_hosts_is_400() {
    let backend = backends::ws_echo().await;
    let sidecar = start(&two_rules(backend.addr));
    let req = raw::handshake("/any/ws", "Host: a.example\r\n");
    let mut stream = tokio::net::TcpStream::connect(sidecar.addr("public"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &req)
        .await
        .unwrap();
    let resp = within("refusal", raw::read_head(&mut stream)).await;
    assert_eq!(resp.status, 400);
    assert_eq!(backend.record.connections(), 0, "the backend was reached");

    // Absolute-form handshake: routed by the target, one Host for the backend.
    let req = b"GET http://a.example/ws HTTP/1.1\r\nHost: b.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut stream = tokio::net::TcpStream::connect(sidecar.addr("public"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, req)
        .await
        .unwrap();
    let resp = within("101", raw::read_head(&mut stream)).await;
    assert_eq!(resp.status, 101);
    let heads = backend.record.heads();
    let hosts: Vec<_> = heads[0].headers.get_all("host").iter().collect();
    assert_eq!(hosts, ["a.example"], "the backend saw {hosts:?}");
    drop(stream);
    within("stop", sidecar.stop()).await.unwrap();
}
