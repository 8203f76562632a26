//! A TLS front for the test backends: terminates TLS with a given server configuration and
//! pipes the plaintext to a plain backend, so every backend in [`crate::backends`] can be
//! reached as an https backend.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A running TLS front; aborted when dropped.
pub struct TlsFront {
    /// Where it listens.
    pub addr: SocketAddr,
    /// TLS handshakes that completed.
    pub handshakes: Arc<AtomicUsize>,
    /// TLS handshakes that failed (e.g. the client did not trust the certificate, or sent
    /// none when one is required).
    pub failures: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// Completed handshakes so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

/// Starts a TLS front on 127.0.0.1:0 for `target`.
pub async fn tls_front(target: SocketAddr, config: Arc<rustls::ServerConfig>) -> TlsFront {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
    let addr = listener.local_addr().expect("addr");
    let handshakes = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let (ok, failed) = (handshakes.clone(), failures.clone());
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, ok, failed) = (acceptor.clone(), ok.clone(), failed.clone());
            connections.spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                ok.fetch_add(1, Ordering::SeqCst);
                let Ok(mut plain) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
            while connections.try_join_next().is_some() {}
        }
    });
    TlsFront {
        addr,
        handshakes,
        failures,
        task,
    }
}
