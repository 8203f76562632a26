//! Fuzzes the hand-written reading of a backend's answer to a WebSocket handshake
//! (`upgrade::exchange`): head parsing with httparse, interim answers, body framing and the
//! chunked decoder, fed in reads of any size. Nothing may panic, and:
//!
//! * a `101` keeps exactly the bytes after its head as the prefix;
//! * a refusal's body is at most `MAX_BODY`, and its `Content-Length` (when set, 204 and 304
//!   aside) is its length.
#![no_main]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use tether_actors::upgrade::{self, UpgradeAnswer, MAX_BODY};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The backend side: the answer in reads of at most `step` bytes, then end of stream; whatever
/// is written is accepted.
struct Scripted<'a> {
    answer: &'a [u8],
    step: usize,
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.answer.len().min(self.step).min(buf.remaining());
        buf.put_slice(&self.answer[..n]);
        self.answer = &self.answer[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
}

const BACKEND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

fuzz_target!(|data: &[u8]| {
    let Some((&seed, answer)) = data.split_first() else {
        return;
    };
    // Reads of 1..=64 bytes, or everything at once.
    let step = if seed == 0 {
        usize::MAX
    } else {
        usize::from(seed % 64) + 1
    };
    let io = Scripted { answer, step };
    let result = RUNTIME.with(|rt| {
        rt.block_on(upgrade::exchange(
            io,
            b"GET / HTTP/1.1\r\n\r\n",
            BACKEND,
            Duration::from_secs(3600),
        ))
    });
    match result {
        Ok(UpgradeAnswer::Switched { head, io, prefix }) => {
            assert_eq!(head.status(), StatusCode::SWITCHING_PROTOCOLS);
            assert!(answer[..answer.len() - io.answer.len()].ends_with(&prefix));
        }
        Ok(UpgradeAnswer::Refused(resp)) => {
            assert_ne!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            assert!(resp.body().len() <= MAX_BODY);
            // 204 and 304 keep the backend's headers (a 304's length describes what it omits).
            let bodiless = matches!(
                resp.status(),
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            );
            if let Some(len) = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .filter(|_| !bodiless)
            {
                assert_eq!(
                    len.to_str().ok(),
                    Some(resp.body().len().to_string().as_str())
                );
            }
        }
        Err(_) => {}
    }
});
