//! The response going to the client.
//!
//! * [`ProxyBody`]: either the backend's body streamed through (its pooled connection goes back
//!   when the body ends), or a complete body held in memory (a short text Tether wrote, or a
//!   backend's refusal of a WebSocket handshake). An enum inside rather than a boxed trait
//!   object, so relaying a body costs no allocation; it counts the bytes it sends (one add per
//!   frame) and writes the request's access-log line when it is dropped.
//! * [`ProxyError::into_response`]: the answer for a failure. It is written here rather than in
//!   [`crate::error`] so that the classification of failures does not depend on the backend
//!   connection pool a streamed body returns its connection to.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use hyper::body::{Body, Frame, SizeHint};

use crate::access_log::AccessLine;
use crate::error::ProxyError;
use crate::grpc;
use crate::handshake::HandshakeError;
use crate::upstream::{BackendBody, PooledConnection};

/// A response body going to the client: either the backend's body streamed through, or a
/// complete body held in memory. It also carries the request's access-log line, if any, and
/// writes it when dropped, with the body bytes it sent (see [`crate::access_log`]).
#[derive(Debug)]
pub struct ProxyBody {
    kind: BodyKind,
    /// Data bytes handed to hyper so far (the access log's `bytes_out`).
    sent: u64,
    /// The access-log line, written on drop.
    line: Option<Box<AccessLine>>,
    /// HTTP/2: keeps the request's stream counted as open on its connection until the body is
    /// done (no idle GOAWAY under a long streamed response).
    stream: Option<crate::http2::StreamGuard>,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // the large variant is the common one; a box would cost an allocation per request
enum BodyKind {
    /// The backend's body, streamed frame by frame. The backend connection goes back to the
    /// worker's pool once the body has been read to its end.
    Upstream {
        /// The backend's body.
        body: BackendBody,
        /// The connection to return when the body is done.
        release: Option<PooledConnection>,
    },
    /// A complete body held in memory, sent in one frame: a reason Tether wrote, or a backend's
    /// refusal of a WebSocket handshake read in full. `None` once sent (or when empty).
    Text(Option<Bytes>),
}

impl ProxyBody {
    fn of(kind: BodyKind) -> ProxyBody {
        ProxyBody {
            kind,
            sent: 0,
            line: None,
            stream: None,
        }
    }

    /// A complete short body.
    pub fn text(bytes: Bytes) -> ProxyBody {
        ProxyBody::of(BodyKind::Text(Some(bytes)))
    }

    /// A complete body read in full (empty bytes make an empty body).
    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::of(BodyKind::Text((!bytes.is_empty()).then_some(bytes)))
    }

    /// An empty body.
    pub fn empty() -> ProxyBody {
        ProxyBody::of(BodyKind::Text(None))
    }

    /// Wraps a backend body; `release` goes back to its pool when the body ends.
    pub fn upstream(body: BackendBody, release: Option<PooledConnection>) -> ProxyBody {
        let mut b = ProxyBody::of(BodyKind::Upstream { body, release });
        b.release_if_done();
        b
    }

    /// Counts the body's stream as open on its HTTP/2 connection until the body is dropped.
    pub fn holding_stream(mut self, stream: Option<crate::http2::StreamGuard>) -> ProxyBody {
        self.stream = stream;
        self
    }

    /// Writes `line` to the access log when this body is dropped: once hyper has sent its last
    /// byte, or when the client went away first.
    pub fn log_when_done(mut self, line: Box<AccessLine>) -> ProxyBody {
        self.line = Some(line);
        self
    }

    fn release_if_done(&mut self) {
        if let BodyKind::Upstream { body, release } = &mut self.kind {
            if body.is_end_stream() {
                if let Some(conn) = release.take() {
                    conn.release(body);
                }
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            line.write(self.sent);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            BodyKind::Upstream { body, release } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    // hyper stops polling once `is_end_stream` is true, so the last data frame
                    // of a length-delimited body is where the connection is given back.
                    Poll::Ready(None) | Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        if let Some(conn) = release.take() {
                            conn.release(body);
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(conn) = release.take() {
                            conn.release(body);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // A broken body means a broken connection: never reuse it. A backend
                        // fault counts against the member.
                        tracing::debug!(error = %e, "response body failed; client connection closed");
                        if let Some(conn) = release.take() {
                            conn.body_failed(e);
                        }
                    }
                    _ => {}
                }
                polled
            }
            BodyKind::Text(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Upstream { body, .. } => body.is_end_stream(),
            BodyKind::Text(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Upstream { body, .. } => body.size_hint(),
            BodyKind::Text(Some(b)) => SizeHint::with_exact(b.len() as u64),
            BodyKind::Text(None) => SizeHint::with_exact(0),
        }
    }
}

/// The range of `Retry-After` (seconds, RFC 9110 §10.2.3) on a `503` for our own temporary
/// limits (`max_new_sessions_per_second`, draining): jittered within it, so the clients
/// turned away in one second come back over several.
pub const RETRY_AFTER_SECS: (u64, u64) = (1, 5);

impl ProxyError {
    /// The response for this failure: its status, `text/plain`, and a one-line reason. A
    /// version mismatch also carries `Sec-WebSocket-Version: 13` (RFC 6455 §4.4).
    pub fn into_response(self) -> Response<ProxyBody> {
        if let ProxyError::DeadlineExceeded { .. } = self {
            let mut resp = Response::new(ProxyBody::empty());
            grpc::trailers_only(
                resp.headers_mut(),
                grpc::DEADLINE_EXCEEDED,
                &self.to_string(),
            );
            return resp;
        }
        let status = self.status();
        let mut reason = self.to_string();
        reason.push('\n');
        let mut resp = Response::new(ProxyBody::text(Bytes::from(reason)));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.retry_later() {
            let (min, max) = RETRY_AFTER_SECS;
            let secs = crate::jitter::retry_after_secs(min, max, crate::jitter::unit());
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(
            self,
            ProxyError::BadHandshake(HandshakeError::UnsupportedVersion)
        ) {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own temporary limits answer 503 with a jittered `Retry-After` within
    /// [`RETRY_AFTER_SECS`]; other refusals carry none.
    #[test]
    fn temporary_limits_answer_503_with_a_jittered_retry_after() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            for err in [
                ProxyError::Draining,
                ProxyError::UpgradeRateLimited { route: "r".into() },
                ProxyError::NoLocalPort {
                    backend: ([127, 0, 0, 1], 5000).into(),
                    sources: 3,
                },
            ] {
                let resp = err.into_response();
                assert_eq!(resp.status(), http::StatusCode::SERVICE_UNAVAILABLE);
                let secs: u64 = resp.headers()[header::RETRY_AFTER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((RETRY_AFTER_SECS.0..=RETRY_AFTER_SECS.1).contains(&secs));
                seen.insert(secs);
            }
        }
        assert!(seen.len() >= 4, "jittered: {seen:?}");
        let other = ProxyError::SessionLimit { route: "r".into() }.into_response();
        assert!(other.headers().get(header::RETRY_AFTER).is_none());
    }
}
