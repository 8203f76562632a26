//! Telemetry end to end: a real OTLP/gRPC receiver on port 0 gets the handshake and session
//! spans; trace context reaches the backend; `/metrics` is valid Prometheus text whose counters
//! move; a dead collector costs traffic nothing and its losses are counted.

use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use tether_integration_tests::otlp::Receiver;
use tether_integration_tests::{backends, closed_port, config, config_toml, raw, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

fn traced(backend: std::net::SocketAddr, endpoint: &str, websocket: &str) -> tether::Sidecar {
    let toml = format!(
        "{}\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"tether-under-test\"\n",
        config_toml(backend, "", websocket)
    );
    tether::Sidecar::start_traced(config(&toml), &[]).expect("sidecar starts")
}

/// Reads the admin endpoint's `/metrics` as `series → value`, checking every line is valid
/// Prometheus text exposition.
async fn metrics(admin: std::net::SocketAddr) -> HashMap<String, f64> {
    let resp = within(
        "GET /metrics",
        raw::send(
            admin,
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    let mut out = HashMap::new();
    for line in resp.text().lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let kind = comment.split_whitespace().next().unwrap_or("");
            assert!(
                kind == "HELP" || kind == "TYPE",
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_string(), value);
    }
    out
}

#[tokio::test]
async fn handshake_and_session_spans_reach_the_collector_with_close_codes() {
    let receiver = Receiver::start().await;
    let backend = backends::ws_echo().await;
    let sidecar = traced(backend.addr, &receiver.endpoint(), "");
    let mut req = format!("ws://{}/ws", sidecar.addr("public"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat".parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    let (mut ws, _) = within("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let _ = within("echo", ws.next()).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}

    let session = within(
        "session span",
        receiver.wait_for("websocket.session", |_| true),
    )
    .await;
    let handshake = within(
        "handshake span",
        receiver.wait_for("GET /*", |s| s.kind == 2),
    )
    .await;
    assert_eq!(handshake.service, "tether-under-test");
    assert_eq!(handshake.kind, 2, "handshake is a SERVER span");
    let h = &handshake.attributes;
    assert_eq!(h["tether.outcome"], "upgraded");
    assert_eq!(h["http.response.status_code"], "101");
    assert_eq!(h["url.path"], "/ws");
    assert_eq!(h["tether.route"], "app");
    assert_eq!(
        h["http.route"], "/*",
        "a rule with no paths matches every path"
    );
    assert_eq!(h["tether.backend"], backend.addr.to_string());
    assert_eq!(h["websocket.origin"], "https://app.example");
    assert_eq!(h["websocket.subprotocol.requested"], "chat");
    assert_eq!(h["websocket.subprotocol.negotiated"], "chat");

    assert_eq!(session.trace_id, handshake.trace_id);
    assert_eq!(
        session.parent_span_id, handshake.span_id,
        "session is the handshake's child"
    );
    let s = &session.attributes;
    assert_eq!(s["websocket.close.cause"], "normal");
    assert_eq!(s["websocket.close.initiator"], "client");
    assert_eq!(s["websocket.close.client.code"], "4001");
    assert_eq!(s["websocket.close.client.reason"], "bye");
    assert_eq!(s["websocket.close.backend.code"], "4001");
    assert_eq!(s["websocket.client.messages"], "1");
    assert_eq!(s["websocket.backend.messages"], "1");
    assert!(s.contains_key("websocket.duration_ms"));
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_handshake_rejected_for_its_origin_has_a_span_saying_so() {
    let receiver = Receiver::start().await;
    let backend = backends::ws_echo().await;
    let sidecar = traced(
        backend.addr,
        &receiver.endpoint(),
        r#"allowed_origins = ["https://good.example"]"#,
    );
    let mut stream = TcpStream::connect(sidecar.addr("public")).await.unwrap();
    stream
        .write_all(&raw::handshake("/ws", "Origin: https://evil.example\r\n"))
        .await
        .unwrap();
    assert_eq!(within("403", raw::read_head(&mut stream)).await.status, 403);
    let span = within(
        "handshake span",
        receiver.wait_for("GET /*", |s| s.kind == 2),
    )
    .await;
    assert_eq!(span.attributes["tether.outcome"], "rejected_origin");
    assert_eq!(span.attributes["http.response.status_code"], "403");
    assert!(receiver
        .spans()
        .iter()
        .all(|s| s.name != "websocket.session"));
    within("stop", sidecar.stop()).await.unwrap();
}

/// The client's `traceparent` becomes the parent, and the backend receives the same trace id
/// (with Tether's span as its parent), for upgrades and ordinary requests alike.
#[tokio::test]
async fn traceparent_reaches_the_backend_with_the_same_trace_id() {
    let receiver = Receiver::start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");

    let backend = backends::ws_echo().await;
    let sidecar = traced(backend.addr, &receiver.endpoint(), "");
    let mut req = format!("ws://{}/ws", sidecar.addr("public"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let (mut ws, _) = within("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    let seen = backend.record.heads()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(seen.starts_with(&format!("00-{trace_id}-")), "{seen}");
    assert!(
        !seen.contains("00f067aa0ba902b7"),
        "the backend's parent is Tether's span"
    );
    ws.close(None).await.unwrap();
    let handshake = within(
        "handshake span",
        receiver.wait_for("GET /*", |s| s.kind == 2),
    )
    .await;
    assert_eq!(handshake.trace_id, trace_id);
    assert_eq!(handshake.parent_span_id, "00f067aa0ba902b7");
    within("stop", sidecar.stop()).await.unwrap();

    let http = backends::http_backend().await;
    let sidecar = traced(http.addr, &receiver.endpoint(), "");
    let request = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\ntraceparent: {traceparent}\r\nConnection: close\r\n\r\n"
    );
    let resp = within("GET", raw::send(sidecar.addr("public"), request.as_bytes())).await;
    assert_eq!(resp.status, 200);
    let seen = http.record.heads()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(seen.starts_with(&format!("00-{trace_id}-")), "{seen}");
    let client = within("client span", receiver.wait_for("GET", |s| s.kind == 3)).await;
    assert_eq!(client.trace_id, trace_id);
    assert!(
        seen.contains(&client.span_id),
        "the backend's parent is the CLIENT span"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_counters_move() {
    let backend = backends::ws_echo().await;
    let sidecar = tether_integration_tests::start(&config_toml(backend.addr, "", ""));
    let admin = sidecar.admin_addr();
    let before = metrics(admin).await;
    let upgraded = r#"tether_websocket_handshakes_total{outcome="upgraded"}"#;
    assert_eq!(before[upgraded], 0.0);

    let (mut ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.addr("public"))),
    )
    .await
    .unwrap();
    ws.send(Message::text("count me")).await.unwrap();
    let _ = within("echo", ws.next()).await;
    let live = metrics(admin).await;
    assert_eq!(live[upgraded], 1.0);
    assert_eq!(
        live[r#"tether_websocket_sessions_active{route="app"}"#],
        1.0
    );
    assert_eq!(
        live[&format!(
            r#"tether_backend_sessions{{pool="app",member="{}"}}"#,
            backend.addr
        )],
        1.0
    );
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    // The session's end is counted once its actor reports it; each poll is a real request.
    let closed = r#"tether_websocket_sessions_closed_total{cause="normal",code="1000"}"#;
    let after = within("session end counted", async {
        loop {
            let m = metrics(admin).await;
            if m.get(closed).copied().unwrap_or(0.0) >= 1.0 {
                break m;
            }
        }
    })
    .await;
    assert!(after[r#"tether_websocket_bytes_total{from="client"}"#] > 0.0);
    assert_eq!(
        after[r#"tether_websocket_messages_total{from="client"}"#],
        1.0
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_dead_collector_costs_traffic_nothing_and_its_losses_are_counted() {
    let backend = backends::ws_echo().await;
    let dead = format!("http://{}", closed_port());
    let sidecar = traced(backend.addr, &dead, "");
    for round in 0..5 {
        let (mut ws, _) = within(
            "connect",
            tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.addr("public"))),
        )
        .await
        .unwrap();
        let text = format!("round {round}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(
            within("echo", ws.next()).await.unwrap().unwrap(),
            Message::text(text)
        );
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = within("close", ws.next()).await {}
    }
    let failed = r#"tether_otel_spans_dropped_total{reason="export_failed"}"#;
    let counted = within("export failure counted", async {
        loop {
            let m = metrics(sidecar.admin_addr()).await;
            if m.get(failed).copied().unwrap_or(0.0) > 0.0 {
                break m;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(counted[r#"tether_otel_spans_exported_total"#], 0.0);
    within("stop", sidecar.stop()).await.unwrap();
}

/// The same counters go out over OTLP as metrics (exported every 200 ms here).
#[tokio::test]
async fn metrics_are_exported_over_otlp_too() {
    let receiver = Receiver::start().await;
    let backend = backends::ws_echo().await;
    let toml = format!(
        "{}\n[telemetry]\notlp_endpoint = \"{}\"\n",
        config_toml(backend.addr, "", ""),
        receiver.endpoint()
    );
    let env = vec![("OTEL_METRIC_EXPORT_INTERVAL".to_string(), "200".to_string())];
    let sidecar = tether::Sidecar::start_traced(config(&toml), &env).unwrap();
    let (mut ws, _) = within(
        "connect",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", sidecar.addr("public"))),
    )
    .await
    .unwrap();
    let point = within(
        "handshake counter exported",
        receiver.wait_for_point("tether.websocket.handshakes", |p| {
            p.attributes.get("outcome").map(String::as_str) == Some("upgraded") && p.value >= 1.0
        }),
    )
    .await;
    assert_eq!(point.value, 1.0);
    ws.close(None).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

/// A sidecar tracing to `endpoint` whose rule matches `/api/*` (and `/ws`), with `telemetry`
/// lines added to its `[telemetry]` table.
fn traced_api(backend: std::net::SocketAddr, endpoint: &str, telemetry: &str) -> tether::Sidecar {
    let toml = format!(
        "{}\n[telemetry]\notlp_endpoint = \"{endpoint}\"\n{telemetry}\n",
        config_toml(backend, "", "").replace(
            "[routing_rules.app]\n",
            "[routing_rules.app]\npaths = [\"/api/*\", \"/ws\"]\n"
        )
    );
    tether::Sidecar::start_traced(config(&toml), &[]).expect("sidecar starts")
}

/// Span attributes the OpenTelemetry HTTP conventions leave out or that are noise: none may
/// appear, and no attribute is an empty string.
fn assert_no_noise(span: &tether_integration_tests::otlp::ReceivedSpan) {
    for (key, value) in &span.attributes {
        assert!(
            !(key.starts_with("code.")
                || key.starts_with("thread.")
                || key == "busy_ns"
                || key == "idle_ns"
                || key == "target"),
            "{}: noise attribute {key}={value}",
            span.name
        );
        assert!(!value.is_empty(), "{}: {key} is empty", span.name);
    }
}

/// OpenTelemetry HTTP semantic conventions on the SERVER and CLIENT spans of a request; the
/// resource names the version and the instance; no empty `tracestate` reaches the backend; the
/// request id is made, passed on and returned.
#[tokio::test]
async fn http_spans_follow_the_opentelemetry_semantic_conventions() {
    let receiver = Receiver::start().await;
    let http = backends::http_backend().await;
    let sidecar = traced_api(http.addr, &receiver.endpoint(), "");
    let request = "GET /api/items?token=secret HTTP/1.1\r\nHost: shop.example:8443\r\n\
         User-Agent: semconv-test/1.0\r\n\
         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
         Connection: close\r\n\r\n";
    let resp = within("GET", raw::send(sidecar.addr("public"), request.as_bytes())).await;
    assert_eq!(resp.status, 200);

    let server = within(
        "server span",
        receiver.wait_for("GET /api/*", |s| s.kind == 2),
    )
    .await;
    assert_no_noise(&server);
    let a = &server.attributes;
    assert_eq!(a["http.route"], "/api/*");
    assert_eq!(a["tether.route"], "app");
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["url.scheme"], "http");
    assert_eq!(a["url.path"], "/api/items");
    assert!(!a.contains_key("url.query"), "queries are off by default");
    assert_eq!(a["client.address"], "127.0.0.1");
    assert!(a["client.port"].parse::<u16>().unwrap() > 0);
    assert_eq!(a["network.peer.address"], "127.0.0.1");
    assert_eq!(a["network.peer.port"], a["client.port"]);
    assert_eq!(a["server.address"], "shop.example");
    assert_eq!(a["server.port"], "8443");
    assert_eq!(a["network.protocol.version"], "1.1");
    assert_eq!(a["user_agent.original"], "semconv-test/1.0");
    assert!(!a.contains_key("error.type"));
    assert_eq!(
        server.resource["service.version"],
        env!("CARGO_PKG_VERSION")
    );
    let instance = &server.resource["service.instance.id"];
    assert_eq!(instance.len(), 36, "{instance}");

    let client = within("client span", receiver.wait_for("GET", |s| s.kind == 3)).await;
    assert_no_noise(&client);
    let c = &client.attributes;
    assert_eq!(c["url.full"], format!("http://{}/api/items", http.addr));
    assert_eq!(c["server.address"], "127.0.0.1");
    assert_eq!(c["server.port"], http.addr.port().to_string());
    assert_eq!(c["network.peer.address"], "127.0.0.1");
    assert_eq!(c["network.protocol.version"], "1.1");
    assert_eq!(c["http.response.status_code"], "200");
    assert_eq!(client.parent_span_id, server.span_id);

    let seen = &http.record.heads()[0];
    assert!(
        !seen.headers.contains_key("tracestate"),
        "no tracestate was given, none is sent: {:?}",
        seen.headers.get("tracestate")
    );
    let id = seen.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(
        resp.header("x-request-id"),
        Some(id),
        "returned to the client"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

/// With `record_query = true` the query is on the spans; a backend that cannot be reached makes
/// a 502 whose SERVER span says `error.type = "502"` and whose CLIENT span names the failure.
#[tokio::test]
async fn a_failed_request_has_an_error_type_and_the_query_is_recorded_when_asked() {
    let receiver = Receiver::start().await;
    let sidecar = traced_api(closed_port(), &receiver.endpoint(), "record_query = true");
    let request = "POST /api/orders?page=2 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\
         X-Request-Id: from-the-client\r\nConnection: close\r\n\r\n";
    let resp = within(
        "POST",
        raw::send(sidecar.addr("public"), request.as_bytes()),
    )
    .await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("x-request-id"), Some("from-the-client"));
    let server = within(
        "server span",
        receiver.wait_for("POST /api/*", |s| s.kind == 2),
    )
    .await;
    assert_no_noise(&server);
    assert_eq!(server.attributes["error.type"], "502");
    assert_eq!(server.attributes["url.query"], "page=2");
    assert_eq!(server.attributes["tether.error.side"], "backend");
    let client = within("client span", receiver.wait_for("POST", |s| s.kind == 3)).await;
    assert_no_noise(&client);
    assert_eq!(client.attributes["error.type"], "connect_failed");
    assert!(
        client.attributes["url.full"].ends_with("/api/orders?page=2"),
        "{:?}",
        client.attributes["url.full"]
    );
    within("stop", sidecar.stop()).await.unwrap();
}
