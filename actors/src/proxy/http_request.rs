//! Forwarding an ordinary request and relaying its answer.

use super::attempts::*;
use super::*;

pub(super) async fn forward_http(
    ctx: &Rc<WorkerContext>,
    conn: &Connection,
    route: &Route,
    req: Request<ClientBody>,
    span: &Span,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut backend, mut lease) = pick_backend(route, conn, req.headers())?;
    facts.backend = Some(backend);
    let (mut parts, body) = req.into_parts();
    let client_version = parts.version;
    let trailers = headers::accepts_trailers(&parts.headers);
    let grpc = grpc::is_grpc(&parts.headers);
    prepare_head(&mut parts, conn, route);
    let http2 = route.settings.protocol.is_http2();
    if http2 {
        headers::to_http2(
            &mut parts,
            route.settings.protocol.uses_tls(),
            backend,
            trailers,
        );
    }
    // A gRPC call's own deadline bounds the wait for the head when it is the shorter one
    // (`grpc-timeout` goes to the backend unchanged, so the backend stops at the same time).
    let deadline = grpc
        .then(|| grpc::timeout(&parts.headers))
        .flatten()
        .filter(|d| *d < route.settings.request_timeout);
    let request_timeout = deadline.unwrap_or(route.settings.request_timeout);
    let (body, upload): (UpstreamBody, _) = match body {
        ClientBody::Incoming(body) if !body.is_end_stream() => {
            let (body, probe) =
                RequestBody::client(body, conn.listener.config.request_body_timeout);
            (body, Some(probe))
        }
        _ => (RequestBody::empty(), None),
    };
    facts.upload = upload.clone();
    let mut attempts = Attempts::new(ctx, route, conn);
    // Only a bodyless idempotent request may be sent again after it was written, so only its
    // head is kept, and only when there is another member to send it to — or, for an HTTP/2
    // backend, another stream on the same member (a stream it turned away, RFC 9113 §8.7).
    let mut replay = (upload.is_none()
        && attempts.budget > 0
        && idempotent(&parts.method)
        && (http2 || route.pool.members().len() > 1))
        .then(|| copy_head(&parts));
    let mut req = Request::from_parts(parts, body);
    let (resp, pooled) = loop {
        let tls = ctx
            .upstream
            .tls_for(&route.settings, backend, false)
            .inspect_err(|e| report_failure(&lease, e))?;
        let client_span =
            trace::http_client(span, &req, backend, tls.is_some(), facts.log.record_query);
        trace::inject(&client_span, req.headers_mut());
        let sent_at = Instant::now();
        // Boxed for the same reason as the whole request's future (`handle`).
        let sent = Box::pin(ctx.upstream.send(
            backend,
            tls.as_ref(),
            http2,
            req,
            &route.settings.source_addresses,
            route.settings.connect_timeout,
            request_timeout,
        ))
        .instrument(client_span.clone())
        .await;
        let SendFailure {
            error,
            unsent,
            reset_before_response,
        } = match sent {
            Ok(answer) => {
                trace::record_status(&client_span, answer.0.status().as_u16());
                facts.ttfb = Some(sent_at.elapsed());
                facts.connect = answer.1.connected_in();
                break answer;
            }
            Err(failure) => failure,
        };
        let error = match (error, deadline) {
            (ProxyError::ResponseTimeout { backend, after }, Some(_)) => {
                ProxyError::DeadlineExceeded { backend, after }
            }
            (error, _) => blame(error, upload.as_ref()),
        };
        report_failure(&lease, &error);
        trace::record_error(&client_span, error.error_type());
        // Unsent after the backend's failure, or before anything could reach it (no local port
        // toward this member: another member's IP:port has ports of its own).
        let again = match unsent {
            Some(unsent)
                if (error.counts_against_member() || error.before_sending())
                    && attempts.allows(facts, RetryReason::Connect) =>
            {
                Some((unsent, RetryReason::Connect))
            }
            None if reset_before_response
                && error.counts_against_member()
                && attempts.allows(facts, RetryReason::Reset) =>
            {
                replay.take().map(|head| {
                    let (parts, ()) = head.into_parts();
                    (
                        Request::from_parts(parts, RequestBody::empty()),
                        RetryReason::Reset,
                    )
                })
            }
            _ => None,
        };
        let Some((again, reason)) = again else {
            return Err(error);
        };
        match attempts.next(again.headers(), &lease, reason, facts) {
            Some(next) => (backend, lease) = next,
            // An HTTP/2 backend turned the stream away unprocessed (the only "reset" an HTTP/2
            // send reports): with no other member, the same one gets it again, on a stream of
            // a connection still open or a new one.
            None if http2 && reason == RetryReason::Reset => {
                attempts.again_on_same(&lease, reason, facts);
            }
            None => return Err(error),
        }
        req = again;
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let err = ProxyError::UnrequestedUpgrade { backend };
        report_failure(&lease, &err);
        return Err(err);
    }
    report_answer(&lease, backend, resp.status());
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = client_version;
    // hyper's HTTP/1.1 encoder sends only the trailer fields `Trailer` announces (and only to
    // a client that sent `TE: trailers`); gRPC servers announce none.
    if trailers
        && client_version == Version::HTTP_11
        && grpc::is_grpc(&parts.headers)
        && !parts.headers.contains_key(header::TRAILER)
    {
        parts.headers.insert(header::TRAILER, grpc::TRAILER_NAMES);
    }
    // The lease rides with the connection until the body is done: a streaming response is
    // in flight for least_connections as long as it streams.
    Ok(Response::from_parts(
        parts,
        ProxyBody::upstream(body, Some(pooled.holding(lease))),
    ))
}
