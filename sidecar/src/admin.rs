//! The admin endpoint on `admin.bind`: operational views of the running sidecar over plain
//! HTTP/1.1, kept apart from the listeners (its own socket, loopback by default).
//!
//! | request | answer |
//! |---|---|
//! | `GET /backends` | every pool and member with its state, as JSON ([`BackendsStatus`]) |
//!
//! Each answer is computed by asking the actor that owns the state (`send`, awaited): the admin
//! path may wait on a mailbox, the request path never does. Routes are matched in [`route`];
//! health, readiness and metrics endpoints belong there too.

use std::convert::Infallible;
use std::net::SocketAddr;

use actix::Recipient;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use tether_actors::messages::{BackendsReport, SessionsReport};
use tether_actors::metrics::Metrics;

use crate::telemetry::ExportStats;
use tether_actors::route_table::BackendsStatus;
use tokio::task::{JoinHandle, JoinSet};

/// What the admin endpoint asks for its answers.
#[derive(Clone)]
pub struct AdminState {
    /// The route table, for `GET /backends`.
    pub backends: Recipient<BackendsReport>,
    /// The route table, for live sessions.
    pub sessions: Recipient<SessionsReport>,
    /// The data path's counters, for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Span export counters, when tracing is on.
    pub export: Option<Arc<ExportStats>>,
}

/// The running admin endpoint; stops serving (open connections included) when dropped.
pub struct AdminServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Serves `listener` (already bound, non-blocking) until dropped. Must be called inside a
    /// tokio runtime.
    pub fn start(
        listener: std::net::TcpListener,
        state: AdminState,
    ) -> std::io::Result<AdminServer> {
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!(%addr, "admin endpoint listening");
        let task = tokio::spawn(async move {
            // Connections live in the set, so dropping the server (aborting this task) closes
            // them too.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let state = state.clone();
                            connections.spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    let state = state.clone();
                                    async move { Ok::<_, Infallible>(route(&state, req).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "admin endpoint: accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(AdminServer { addr, task })
    }

    /// The address it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers one admin request.
pub async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/backends") => {
            match state.backends.send(BackendsReport).await {
                Ok(status) => json(&status),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the route table is not running\n",
                ),
            }
        }
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut body = String::with_capacity(8192);
            state.metrics.render(&mut body);
            render_control_plane(state, &mut body).await;
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (_, "/backends") => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try GET /backends or GET /metrics\n",
        ),
    }
}

fn json(status: &BackendsStatus) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(status) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot serialize the status: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Appends what only the control plane knows: live sessions per route, member health and
/// sessions, span export counts.
async fn render_control_plane(state: &AdminState, out: &mut String) {
    use std::fmt::Write as _;
    if let Ok(sessions) = state.sessions.send(SessionsReport).await {
        let mut per_route: std::collections::BTreeMap<&str, usize> = Default::default();
        for s in &sessions {
            *per_route.entry(s.route.as_str()).or_default() += 1;
        }
        out.push_str("# HELP tether_websocket_sessions_active Live WebSocket sessions by route.\n");
        out.push_str("# TYPE tether_websocket_sessions_active gauge\n");
        for (route, n) in per_route {
            let _ = writeln!(
                out,
                "tether_websocket_sessions_active{{route=\"{route}\"}} {n}"
            );
        }
    }
    if let Ok(status) = state.backends.send(BackendsReport).await {
        out.push_str("# HELP tether_backend_up 1 when the member is in rotation.\n");
        out.push_str("# TYPE tether_backend_up gauge\n");
        for pool in &status.pools {
            for m in &pool.members {
                let _ = writeln!(
                    out,
                    "tether_backend_up{{pool=\"{}\",member=\"{}\",state=\"{}\"}} {}",
                    pool.name,
                    m.address,
                    m.state,
                    u8::from(m.in_rotation)
                );
            }
        }
        out.push_str("# HELP tether_backend_sessions Live sessions per member.\n");
        out.push_str("# TYPE tether_backend_sessions gauge\n");
        for pool in &status.pools {
            for m in &pool.members {
                let _ = writeln!(
                    out,
                    "tether_backend_sessions{{pool=\"{}\",member=\"{}\"}} {}",
                    pool.name, m.address, m.live_sessions
                );
            }
        }
    }
    if let Some(export) = &state.export {
        use std::sync::atomic::Ordering::Relaxed;
        out.push_str(
            "# HELP tether_otel_spans_dropped_total Spans that never reached the collector.\n",
        );
        out.push_str("# TYPE tether_otel_spans_dropped_total counter\n");
        let _ = writeln!(
            out,
            "tether_otel_spans_dropped_total{{reason=\"queue_full\"}} {}",
            export.dropped.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "tether_otel_spans_dropped_total{{reason=\"export_failed\"}} {}",
            export.failed.load(Relaxed)
        );
        out.push_str("# HELP tether_otel_spans_exported_total Spans the collector accepted.\n");
        out.push_str("# TYPE tether_otel_spans_exported_total counter\n");
        let _ = writeln!(
            out,
            "tether_otel_spans_exported_total {}",
            export.exported.load(Relaxed)
        );
    }
}
