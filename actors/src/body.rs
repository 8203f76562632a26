//! The request body going to a backend: [`RequestBody`], the client's body with
//! `request_body_timeout` enforced, whose failures are tagged as the client's
//! ([`ClientBodyError`]) before the backend client sees them. (The response body is
//! [`crate::response::ProxyBody`].)

use std::cell::Cell;
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a client's request body could not be relayed. Always the client's doing: none of these
/// counts against a backend's passive health ([`crate::error::ProxyError::counts_against_member`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientBodyError {
    /// The body's framing breaks RFC 9112: a chunk size that overflows or is not hex, a chunk
    /// line ended by a bare LF (§7.1), a missing CRLF after chunk data. Answered `400` and the
    /// connection closed (after a framing error the next request cannot be found, §6.3).
    #[error("malformed request body: {0}")]
    Malformed(String),
    /// The client closed or reset its connection before the body was complete. Nobody is left
    /// to answer: the connection is closed without a response.
    #[error("client closed the connection before its request body was complete: {0}")]
    Gone(String),
    /// No body bytes arrived for `request_body_timeout`. Answered `408` with `Connection: close`
    /// (RFC 9110 §15.5.9).
    #[error("no request body data within {0:?}")]
    Idle(Duration),
    /// The backend waited for the rest of the body when its `request_timeout` ran out: the
    /// client, not the backend, was the slow side. Answered `408` and the connection closed.
    #[error("request body not complete within the backend's request_timeout ({0:?})")]
    TooSlow(Duration),
}

impl ClientBodyError {
    /// Sorts an error of the client's body as hyper reports it: hyper's decoder reports broken
    /// framing as `InvalidInput`/`InvalidData`; anything else (EOF, reset, the connection
    /// failing) means the client's connection ended: [`ClientBodyError::Gone`].
    fn from_incoming(err: &hyper::Error) -> ClientBodyError {
        use std::error::Error as _;
        let io = err
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        let reason = match io {
            Some(io) => io.to_string(),
            None => err.to_string(),
        };
        match io.map(std::io::Error::kind) {
            Some(std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData) => {
                ClientBodyError::Malformed(reason)
            }
            _ => ClientBodyError::Gone(reason),
        }
    }

    /// The client-side error behind a failed backend request, if that is what it was: hyper's
    /// client reports an error of the body it was sending as the request's error, with ours as
    /// its source.
    pub fn behind(err: &hyper::Error) -> Option<&ClientBodyError> {
        use std::error::Error as _;
        let mut source = err.source();
        while let Some(s) = source {
            if let Some(ours) = s.downcast_ref::<ClientBodyError>() {
                return Some(ours);
            }
            source = s.source();
        }
        None
    }
}

/// Whether a request's upload is waiting on the client right now, and how many body bytes it
/// has relayed. Shared (one `Rc` per request that has a body) between the [`RequestBody`] and
/// the request path, which asks it when the backend's `request_timeout` runs out (a backend
/// still waiting for the body is not at fault) and for the access log's `bytes_in`.
#[derive(Debug, Clone, Default)]
pub struct UploadProbe(Rc<ProbeState>);

#[derive(Debug, Default)]
struct ProbeState {
    waiting: Cell<bool>,
    bytes: Cell<u64>,
}

impl UploadProbe {
    /// True while the body's last poll found no data from the client (and it has not ended).
    pub fn waiting_on_client(&self) -> bool {
        self.0.waiting.get()
    }

    /// Body bytes received from the client and handed on so far (data frames only).
    pub fn bytes(&self) -> u64 {
        self.0.bytes.get()
    }
}

/// The body of a request to a backend: the client's body relayed frame by frame, or none.
///
/// Lifecycle of a client body (RFC 9112 §6 framing is hyper's; the timing is ours):
///
/// 1. *Not started*: the backend client has not asked for a frame yet (it is connecting or
///    writing the head). No clock runs; the client's bytes wait in the socket.
/// 2. *Reading*: each poll that finds no data waits on the client, bounded by
///    `request_body_timeout` since the previous frame (or since the first poll). The timer is
///    one `Sleep` armed once and moved forward lazily when it fires after progress: a frame
///    costs a clock read, no allocation and no timer-wheel update.
/// 3. *Done* (end of body: the timer is dropped) or *failed*: the error is a
///    [`ClientBodyError`], so when the backend client reports it as the request's error the
///    request path knows it was the client's doing ([`ClientBodyError::behind`]).
#[derive(Debug)]
pub struct RequestBody {
    incoming: Option<Incoming>,
    timeout: Duration,
    last_frame: Option<Instant>,
    probe: Option<UploadProbe>,
    /// Boxed (allocated once, when the body first waits on the client) so that the body is
    /// `Unpin`, as hyper's HTTP/2 client wants.
    idle: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    /// No body (nothing to send, so the request can be sent again elsewhere).
    pub fn empty() -> RequestBody {
        RequestBody {
            incoming: None,
            timeout: Duration::ZERO,
            last_frame: None,
            probe: None,
            idle: None,
        }
    }

    /// The client's body, with at most `timeout` between two reads of it, and the probe that
    /// tells whether it is waiting on the client.
    pub fn client(incoming: Incoming, timeout: Duration) -> (RequestBody, UploadProbe) {
        let probe = UploadProbe::default();
        let body = RequestBody {
            incoming: Some(incoming),
            timeout,
            last_frame: None,
            probe: Some(probe.clone()),
            idle: None,
        };
        (body, probe)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let Some(incoming) = this.incoming.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *incoming).poll_frame(cx);
        let waiting = polled.is_pending();
        if let Some(probe) = this.probe.as_ref() {
            probe.0.waiting.set(waiting);
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(probe), Some(data)) = (this.probe.as_ref(), frame.data_ref()) {
                    probe.0.bytes.set(probe.0.bytes.get() + data.len() as u64);
                }
                if incoming.is_end_stream() {
                    this.idle = None;
                } else {
                    this.last_frame = Some(Instant::now());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.idle = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.idle = None;
                Poll::Ready(Some(Err(ClientBodyError::from_incoming(&e))))
            }
            Poll::Pending => {
                let last = *this.last_frame.get_or_insert_with(Instant::now);
                let timeout = this.timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(last + timeout)));
                loop {
                    if idle.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Fired: a frame may have come since it was armed; if so, move it on.
                    let due = last + timeout;
                    if due <= Instant::now() {
                        return Poll::Ready(Some(Err(ClientBodyError::Idle(timeout))));
                    }
                    idle.as_mut().reset(due);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.incoming {
            Some(body) => body.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}
