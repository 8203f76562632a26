//! Which member a request goes to, and whether a failed attempt may go to another one.

use super::*;

/// Picks the member for this request with the pool's balancing policy (over the members in
/// rotation in the current snapshot: no lock, no message) and applies the settings' port
/// override. The lease counts the request on the member (for `least_connections`) until it is
/// dropped, or becomes a session count after a `101`.
pub(super) fn pick_backend(
    route: &Route,
    conn: &Connection,
    headers: &http::HeaderMap,
) -> Result<(SocketAddr, MemberLease), ProxyError> {
    pick_other(route, conn, headers, &[]).ok_or_else(|| ProxyError::NoHealthyBackend {
        pool: route.pool.name.clone(),
    })
}

/// [`pick_backend`] for a retry: a member in rotation not yet `tried`, if any.
pub(super) fn pick_other(
    route: &Route,
    conn: &Connection,
    headers: &http::HeaderMap,
    tried: &[SocketAddr],
) -> Option<(SocketAddr, MemberLease)> {
    let lease = route.pool.pick_other(conn.peer.ip(), headers, tried)?;
    let mut backend = lease.addr();
    if let Some(port) = route.settings.port {
        backend.set_port(port);
    }
    Some((backend, lease))
}

/// Passive health, on failure: only what the backend did counts against the member
/// ([`ProxyError::counts_against_member`]). One relaxed atomic add; only the failure that
/// reaches the pool's threshold sends a message. A failed connect is also counted on the member
/// (`tether_backend_connect_failures_total`).
pub(super) fn report_failure(lease: &MemberLease, err: &ProxyError) {
    if let Some(reason) = ConnectFailure::of(err) {
        lease.member().connect_failed(reason);
    }
    if err.counts_against_member() {
        lease.member().passive_failure(err);
    }
}

/// The retry budget of one request: which members were tried, and whether the one retry after
/// a reset has been spent.
///
/// Lifecycle: every failed attempt is reported against its member first; then
/// [`Attempts::next`] decides (and, for an HTTP/2 stream turned away with no other member,
/// [`Attempts::again_on_same`]). A retry is allowed while fewer than the settings' `retries` were
/// made, there is an untried member in rotation, and either nothing reached the failed member
/// (its connect or TLS handshake failed: any request, and WebSocket upgrades) or the request is
/// idempotent (RFC 9110 §9.2.2) with no body and its connection closed before any response byte
/// (once per request). Never after body bytes or response bytes were exchanged.
pub(super) struct Attempts<'a> {
    ctx: &'a WorkerContext,
    route: &'a Route,
    conn: &'a Connection,
    pub(super) budget: u32,
    /// Members already tried (allocated only when a retry happens).
    tried: Vec<SocketAddr>,
    reset_retry_spent: bool,
}

impl<'a> Attempts<'a> {
    pub(super) fn new(
        ctx: &'a WorkerContext,
        route: &'a Route,
        conn: &'a Connection,
    ) -> Attempts<'a> {
        Attempts {
            ctx,
            route,
            conn,
            budget: route.settings.retries,
            tried: Vec::new(),
            reset_retry_spent: false,
        }
    }

    /// Whether a failure for `reason` may be retried at all (budget and, for a reset, the
    /// one-per-request rule), before looking for a member.
    pub(super) fn allows(&self, facts: &RequestFacts, reason: RetryReason) -> bool {
        facts.retries < self.budget && !(reason == RetryReason::Reset && self.reset_retry_spent)
    }

    /// The next member after `failed` failed for `reason`, counted in metrics and `facts`;
    /// `None` when no untried member is in rotation.
    pub(super) fn next(
        &mut self,
        headers: &http::HeaderMap,
        failed: &MemberLease,
        reason: RetryReason,
        facts: &mut RequestFacts,
    ) -> Option<(SocketAddr, MemberLease)> {
        self.tried.push(failed.addr());
        let (backend, lease) = pick_other(self.route, self.conn, headers, &self.tried)?;
        if reason == RetryReason::Reset {
            self.reset_retry_spent = true;
        }
        facts.retries += 1;
        facts.backend = Some(backend);
        self.ctx.metrics.retry(reason);
        tracing::debug!(failed = %failed.addr(), next = %backend, reason = reason.as_str(), "retrying on another member");
        Some((backend, lease))
    }
}

impl Attempts<'_> {
    /// Records a retry on the member that just failed (`failed`), for an HTTP/2 backend with no
    /// other member in rotation that turned the stream away unprocessed: counted like
    /// [`Attempts::next`], and spends the one reset retry.
    pub(super) fn again_on_same(
        &mut self,
        failed: &MemberLease,
        reason: RetryReason,
        facts: &mut RequestFacts,
    ) {
        if reason == RetryReason::Reset {
            self.reset_retry_spent = true;
        }
        facts.retries += 1;
        self.ctx.metrics.retry(reason);
        tracing::debug!(member = %failed.addr(), reason = reason.as_str(), "retrying on the same member");
    }
}

/// RFC 9110 §9.2.2: the methods whose repetition has the same effect as one request.
pub(super) fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// A copy of a prepared request head, kept to send a bodyless idempotent request again.
pub(super) fn copy_head(parts: &http::request::Parts) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    copy
}

/// The client's fault behind a backend's `request_timeout`: the backend was still waiting for
/// the request body, and so were we.
pub(super) fn blame(error: ProxyError, upload: Option<&UploadProbe>) -> ProxyError {
    match error {
        ProxyError::ResponseTimeout { after, .. }
            if upload.is_some_and(UploadProbe::waiting_on_client) =>
        {
            ClientBodyError::TooSlow(after).into()
        }
        other => other,
    }
}

/// Passive health, on an answer: a gateway failure the backend reports itself (502, 503, 504)
/// counts against the member; any other answer proves it is serving and starts the count over.
pub(super) fn report_answer(lease: &MemberLease, backend: SocketAddr, status: StatusCode) {
    match status {
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            lease
                .member()
                .passive_failure(&format_args!("backend {backend} answered {status}"))
        }
        _ => lease.member().passive_success(),
    }
}
