//! TLS with rustls (ring provider only): HTTPS listeners whose certificates are chosen by SNI
//! and reloaded in place, and the client side for HTTPS backends and probes.
//!
//! # Listeners
//! Each HTTPS listener has one [`ListenerTls`]: a rustls `ServerConfig` (TLS 1.2 and 1.3 only,
//! ALPN `http/1.1`, optional client authentication against `client_ca`) whose certificate
//! resolver, [`SniResolver`], reads an `ArcSwap`ped [`CertSet`]. The handshake runs on the
//! worker that was handed the connection, bounded by [`TLS_HANDSHAKE_TIMEOUT`].
//!
//! # Reload lifecycle
//! `loaded → (file changed | SIGHUP) → reloading → loaded (new set) | kept (old set, logged)`.
//! [`watch`] polls the files' modification times every [`RELOAD_POLL_INTERVAL`] and also
//! reloads on SIGHUP. A reload builds the whole set first and swaps it in one store, so a
//! handshake sees either the old set or the new one; connections and sessions already
//! established keep the keys they negotiated. A set that fails to load (unreadable file,
//! garbage PEM, key not matching its certificate) is not installed: the old one stays and the
//! reason is logged.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tether_config::{CertificateConfig, ListenerConfig};
use tokio_rustls::TlsAcceptor;

use crate::shutdown::ShutdownSignal;

/// A client must complete its TLS handshake within this, or the connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often certificate and key files are checked for changes.
pub const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The ALPN protocol id of HTTP/1.1 (offered by listeners and backend connections).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// The ALPN protocol id of HTTP/2 over TLS (RFC 9113 §3.2).
pub const ALPN_H2: &[u8] = b"h2";

/// A TLS file could not be used: which file, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsError {
    /// The file (certificate, key or CA bundle).
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl TlsError {
    fn new(path: &Path, reason: impl Into<String>) -> TlsError {
        TlsError {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The one crypto provider Tether uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(path, format!("cannot read: {e}")))
}

/// Reads a PEM certificate chain (at least one certificate).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(path, "no CERTIFICATE found in the PEM file"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TlsError::new(
            path,
            format!("no usable private key (PKCS#8, RSA or SEC1 PEM expected): {e}"),
        )
    })
}

/// Loads a certificate chain and its key, and checks that the key matches the certificate.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::new(
            key_file,
            format!(
                "the private key does not match the certificate in {}",
                cert_file.display()
            ),
        ),
        other => TlsError::new(key_file, format!("unusable private key: {other}")),
    })
}

/// Reads a PEM bundle of trusted CA certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::new(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// One listener's certificates, each with the SNI names it serves; the first is the default.
#[derive(Debug)]
pub struct CertSet {
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl CertSet {
    /// Loads every certificate of a listener, in order. Fails on the first unusable one.
    pub fn load(certificates: &[CertificateConfig]) -> Result<CertSet, TlsError> {
        let mut entries = Vec::with_capacity(certificates.len());
        for c in certificates {
            let key = load_certified_key(&c.cert_file, &c.key_file)?;
            let names = c
                .server_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect();
            entries.push((names, Arc::new(key)));
        }
        if entries.is_empty() {
            return Err(TlsError::new(Path::new("certificates"), "no certificate"));
        }
        Ok(CertSet { entries })
    }

    /// The certificate for `sni`: an exact name first, then a `*.` wildcard covering it (one
    /// label), else the first certificate.
    pub fn select(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.');
            let exact = |n: &String| n.eq_ignore_ascii_case(sni);
            if let Some((_, key)) = self
                .entries
                .iter()
                .find(|(names, _)| names.iter().any(exact))
            {
                return key;
            }
            if let Some((label, parent)) = sni.split_once('.') {
                let wildcard = |n: &String| {
                    !label.is_empty()
                        && n.strip_prefix("*.")
                            .is_some_and(|suffix| suffix.eq_ignore_ascii_case(parent))
                };
                if let Some((_, key)) = self
                    .entries
                    .iter()
                    .find(|(names, _)| names.iter().any(wildcard))
                {
                    return key;
                }
            }
        }
        &self.entries[0].1
    }
}

/// Picks a listener's certificate by SNI from the current [`CertSet`] (one atomic load).
#[derive(Debug)]
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().select(hello.server_name()).clone())
    }
}

/// The TLS side of one HTTPS listener.
#[derive(Debug)]
pub struct ListenerTls {
    /// The listener's name (for logs).
    pub name: Arc<str>,
    /// The listener's server configuration (its resolver reads the current certificates).
    pub config: Arc<ServerConfig>,
    resolver: Arc<SniResolver>,
    certificates: Vec<CertificateConfig>,
    /// Handshakes completed.
    pub handshakes: AtomicU64,
    /// Handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// Certificate sets installed by reloads.
    pub reloads: AtomicU64,
}

impl ListenerTls {
    /// Loads the listener's certificates (and `client_ca`) and builds its server configuration.
    pub fn new(listener: &ListenerConfig) -> Result<ListenerTls, TlsError> {
        let set = CertSet::load(&listener.certificates)?;
        let resolver = Arc::new(SniResolver {
            set: ArcSwap::from_pointee(set),
        });
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::new(Path::new("protocol versions"), e.to_string()))?;
        let builder = match &listener.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = Arc::new(load_roots(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsError::new(ca, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        // RFC 7301: h2 first when enabled, so a client offering both gets HTTP/2.
        config.alpn_protocols = if listener.http2 {
            vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
        } else {
            vec![ALPN_HTTP1.to_vec()]
        };
        Ok(ListenerTls {
            name: listener.name.as_str().into(),
            config: Arc::new(config),
            resolver,
            certificates: listener.certificates.clone(),
            handshakes: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        })
    }

    /// Accepts a client handshake with the listener's configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// Reloads every certificate; on any failure the current set stays in place.
    pub fn reload(&self) -> Result<(), TlsError> {
        let set = CertSet::load(&self.certificates)?;
        self.resolver.set.store(Arc::new(set));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The files this listener's certificates come from.
    fn files(&self) -> impl Iterator<Item = &Path> {
        self.certificates
            .iter()
            .flat_map(|c| [c.cert_file.as_path(), c.key_file.as_path()])
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.files()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(listener = %self.name, trigger = why, "certificates reloaded"),
            Err(error) => tracing::error!(
                listener = %self.name,
                trigger = why,
                %error,
                "certificate reload failed; keeping the current certificates"
            ),
        }
    }
}

/// Watches the certificate files of `listeners` and reloads a listener whose files changed
/// (polled every [`RELOAD_POLL_INTERVAL`]); SIGHUP reloads all of them. Ends at shutdown.
pub async fn watch(listeners: Vec<Arc<ListenerTls>>, mut shutdown: ShutdownSignal) {
    if listeners.is_empty() {
        return;
    }
    let mut stamps: Vec<_> = listeners.iter().map(|l| l.stamps()).collect();
    let mut hangup = hangup_signal();
    let mut tick = tokio::time::interval(RELOAD_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sighup = tokio::select! {
            _ = shutdown.fired() => return,
            _ = tick.tick() => false,
            _ = recv_hangup(&mut hangup) => true,
        };
        for (listener, seen) in listeners.iter().zip(stamps.iter_mut()) {
            let now = listener.stamps();
            if sighup {
                *seen = now;
                listener.reload_logged("SIGHUP");
            } else if now != *seen {
                *seen = now;
                listener.reload_logged("file changed");
            }
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|e| tracing::warn!(error = %e, "SIGHUP will not reload certificates"))
        .ok()
}
#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn recv_hangup(hangup: &mut Hangup) {
    match hangup {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) {
    std::future::pending().await
}

/// Counts a failed client handshake and logs it at debug: it never disturbs other connections.
pub fn handshake_failed(
    tls: &ListenerTls,
    peer: std::net::SocketAddr,
    error: &dyn std::fmt::Display,
) {
    tls.handshake_failures.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(listener = %tls.name, %peer, %error, "TLS handshake failed");
}

/// The client configuration for TLS to backends and probes: trusted roots, optional client
/// certificate, ALPN `http/1.1`.
pub fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca_file {
        Some(path) => load_roots(path)?,
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::new(Path::new("protocol versions"), e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = load_certs(cert)?;
            let key_der = load_key(key)?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| TlsError::new(key, format!("unusable client key: {e}")))?
        }
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The system's trusted roots (`/etc/ssl/certs` and friends); certificates it cannot use are
/// skipped and logged.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "system trust store");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(added, ignored, "system roots loaded; some were unusable");
    }
    roots
}

/// Why a connection to a backend failed at the TLS layer, in words for the log.
pub fn describe_io_error(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => format!("TLS: {tls}"),
        None => e.to_string(),
    }
}
