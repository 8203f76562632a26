//! TLS end to end: HTTPS/WSS listeners (SNI, default certificate, TLS versions, reload), and
//! the frame-aware session pump over TLS. Certificates are generated here with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tether_integration_tests::{backends, start, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A private certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

/// A certificate issued by a [`Ca`], with its key.
struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A fresh directory for one test's files.
fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tether-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `leaf` as `NAME.crt` + `NAME.key` in `dir`; returns both paths.
fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (cert, key)
}

/// `[[listeners.public.certificates]]` entries for `(cert, key, names)`.
fn cert_tables(certs: &[(&Path, &Path, &[&str])]) -> String {
    certs
        .iter()
        .map(|(cert, key, names)| {
            let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            format!(
                "[[listeners.public.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\nserver_names = [{}]\n\n",
                cert.display(),
                key.display(),
                names.join(", ")
            )
        })
        .collect()
}

/// One https listener `public` (with `listener_extra` keys and `certs` tables) forwarding
/// everything to `backend` with `settings` keys; `ws` keys go to the rule's websocket table.
fn https_toml(
    backend: SocketAddr,
    listener_extra: &str,
    certs: &str,
    settings: &str,
    ws: &str,
) -> String {
    format!(
        r#"workers = 1
shutdown_grace = "5s"
admin = {{ bind = "127.0.0.1:0" }}

[listeners.public]
bind = "127.0.0.1:0"
protocol = "https"
{listener_extra}

{certs}
[backend_pools.app]
members = ["{backend}"]

[backend_settings.app]
connect_timeout = "2s"
{settings}

[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"

[routing_rules.app.websocket]
{ws}
"#
    )
}

fn client_config(roots: &[&CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

/// Connects over TLS with `sni` (or none when `sni` is an IP address).
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The certificate the server presented.
fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A client config that accepts any server certificate: for tests that look at *which*
/// certificate was served, whatever its name.
fn any_cert_config() -> Arc<ClientConfig> {
    #[derive(Debug)]
    struct AcceptAll(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAll(provider)))
            .with_no_client_auth(),
    )
}

/// Opens a WebSocket over TLS to `addr` with SNI `host`.
async fn wss(
    addr: SocketAddr,
    host: &str,
    config: Arc<ClientConfig>,
) -> tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>> {
    let tls = within("tls connect", tls_connect(addr, host, config))
        .await
        .expect("TLS handshake with the sidecar");
    let (ws, resp) = within(
        "upgrade",
        tokio_tungstenite::client_async(format!("wss://{host}/ws"), tls),
    )
    .await
    .expect("upgrade over TLS");
    assert_eq!(resp.status(), 101);
    ws
}

#[tokio::test]
async fn wss_echo_through_an_https_listener() {
    tether_integration_tests::init_logs();
    let ca = Ca::new("test ca");
    let leaf = ca.leaf(&["chat.test"]);
    let dir = temp_dir();
    let (cert, key) = write_leaf(&dir, "chat", &leaf);
    let backend = backends::ws_echo().await;
    let certs = cert_tables(&[(&cert, &key, &["chat.test"])]);
    let sidecar = start(&https_toml(backend.addr, "", &certs, "", ""));
    let addr = sidecar.addr("public");
    let mut ws = wss(addr, "chat.test", client_config(&[&ca.der])).await;

    let large: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    for msg in [
        Message::text("hello over tls"),
        Message::binary((0..=255u8).collect::<Vec<_>>()),
        Message::text(""),
        Message::binary(large),
    ] {
        within("send", ws.send(msg.clone())).await.unwrap();
        let echoed = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, msg);
    }
    // Close code and reason go through the frame-aware pump over TLS both ways.
    within(
        "close",
        ws.close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "bye".into(),
        })),
    )
    .await
    .unwrap();
    let mut echoed_close = None;
    while let Some(Ok(msg)) = within("drain", ws.next()).await {
        if let Message::Close(frame) = msg {
            echoed_close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
        }
    }
    assert_eq!(echoed_close, Some((4000, "bye".to_owned())));
    assert_eq!(
        backend.record.wait_closes(1).await,
        vec![(4000, "bye".to_owned())]
    );
    let head = &backend.record.heads()[0];
    assert_eq!(head.headers["x-forwarded-proto"], "https");
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn tether_closes_an_idle_wss_session_with_1001() {
    // A close frame of Tether's own, written through rustls at a frame boundary.
    let ca = Ca::new("test ca");
    let leaf = ca.leaf(&["chat.test"]);
    let dir = temp_dir();
    let (cert, key) = write_leaf(&dir, "chat", &leaf);
    let backend = backends::ws_echo().await;
    let certs = cert_tables(&[(&cert, &key, &[])]);
    let sidecar = start(&https_toml(
        backend.addr,
        "",
        &certs,
        "request_timeout = \"1s\"",
        "keepalive_interval = \"0s\"",
    ));
    let mut ws = wss(
        sidecar.addr("public"),
        "chat.test",
        client_config(&[&ca.der]),
    )
    .await;
    within("send", ws.send(Message::text("one"))).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("one")
    );
    let mut close = None;
    while let Some(Ok(msg)) = within("idle close", ws.next()).await {
        if let Message::Close(frame) = msg {
            close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
        }
    }
    assert_eq!(close, Some((1001, "idle timeout".to_owned())));
    assert_eq!(
        backend.record.wait_closes(1).await,
        vec![(1001, "idle timeout".to_owned())]
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn https_requests_are_proxied_with_forwarded_proto_https() {
    let ca = Ca::new("test ca");
    let leaf = ca.leaf(&["api.test"]);
    let dir = temp_dir();
    let (cert, key) = write_leaf(&dir, "api", &leaf);
    let backend = backends::http_backend().await;
    let certs = cert_tables(&[(&cert, &key, &["api.test"])]);
    let sidecar = start(&https_toml(backend.addr, "", &certs, "", ""));
    let mut tls = within(
        "tls",
        tls_connect(
            sidecar.addr("public"),
            "api.test",
            client_config(&[&ca.der]),
        ),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    within("response", tls.read_to_end(&mut out)).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hello from backend"), "{text}");
    assert_eq!(
        backend.record.heads()[0].headers["x-forwarded-proto"],
        "https"
    );
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_unknown_names_get_the_first() {
    let ca = Ca::new("test ca");
    let first = ca.leaf(&["first.test"]);
    let second = ca.leaf(&["second.test", "*.wild.test"]);
    let dir = temp_dir();
    let (c1, k1) = write_leaf(&dir, "first", &first);
    let (c2, k2) = write_leaf(&dir, "second", &second);
    let backend = backends::http_backend().await;
    let certs = cert_tables(&[
        (&c1, &k1, &["first.test"]),
        (&c2, &k2, &["second.test", "*.wild.test"]),
    ]);
    let sidecar = start(&https_toml(backend.addr, "", &certs, "", ""));
    let addr = sidecar.addr("public");
    let any = any_cert_config();
    for (sni, expected) in [
        ("first.test", &first.der),
        ("second.test", &second.der),
        ("SECOND.test", &second.der),
        ("a.wild.test", &second.der),
        ("a.b.wild.test", &first.der), // a wildcard covers one label only
        ("wild.test", &first.der),
        ("unknown.test", &first.der),
    ] {
        let tls = within("tls", tls_connect(addr, sni, any.clone()))
            .await
            .unwrap();
        assert_eq!(&served(&tls), expected, "certificate served for SNI {sni}");
    }
    // No SNI at all (an IP address as the server name): the first certificate.
    let tls = within("tls", tls_connect(addr, "127.0.0.1", any.clone()))
        .await
        .unwrap();
    assert_eq!(served(&tls), first.der);
    within("stop", sidecar.stop()).await.unwrap();
}

/// A TLS 1.0 (or 1.1) ClientHello with no `supported_versions` extension.
fn old_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version); // client_version
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[1, 0]); // null compression
    let mut hs = vec![1, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn tls_1_0_and_1_1_client_hellos_are_refused() {
    let ca = Ca::new("test ca");
    let leaf = ca.leaf(&["old.test"]);
    let dir = temp_dir();
    let (cert, key) = write_leaf(&dir, "old", &leaf);
    let backend = backends::http_backend().await;
    let certs = cert_tables(&[(&cert, &key, &[])]);
    let sidecar = start(&https_toml(backend.addr, "", &certs, "", ""));
    for version in [[3, 1], [3, 2]] {
        let mut tcp = TcpStream::connect(sidecar.addr("public")).await.unwrap();
        tcp.write_all(&old_client_hello(version)).await.unwrap();
        let mut answer = Vec::new();
        let _ = within("refusal", tcp.read_to_end(&mut answer)).await;
        // A fatal alert record, never a ServerHello; then the connection closes.
        assert_eq!(
            answer.first(),
            Some(&0x15),
            "answer to {version:?}: {answer:?}"
        );
        assert_eq!(answer.get(5), Some(&2), "a fatal alert: {answer:?}");
    }
    // The listener still serves modern clients, TLS 1.2 and 1.3 alike.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut store = RootCertStore::empty();
        store.add(ca.der.clone()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(store)
                .with_no_client_auth();
        let tls = within(
            "tls",
            tls_connect(sidecar.addr("public"), "old.test", Arc::new(config)),
        )
        .await
        .unwrap();
        assert_eq!(served(&tls), leaf.der);
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    }
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn replaced_certificate_files_switch_new_connections_and_keep_live_sessions() {
    let ca = Ca::new("test ca");
    let old = ca.leaf(&["chat.test"]);
    let new = ca.leaf(&["chat.test"]);
    let dir = temp_dir();
    let (cert, key) = write_leaf(&dir, "chat", &old);
    let backend = backends::ws_echo().await;
    let certs = cert_tables(&[(&cert, &key, &[])]);
    let sidecar = start(&https_toml(backend.addr, "", &certs, "", ""));
    let addr = sidecar.addr("public");
    let config = client_config(&[&ca.der]);
    let mut live = wss(addr, "chat.test", config.clone()).await;
    assert_eq!(served(live.get_ref()), old.der);

    // A broken certificate file is not installed: new connections keep getting the old one.
    std::fs::write(&cert, "not a certificate").unwrap();
    let tls = within("tls", tls_connect(addr, "chat.test", config.clone()))
        .await
        .unwrap();
    assert_eq!(served(&tls), old.der);

    // Write the new pair (key first, then certificate), then wait until a new connection
    // gets the new certificate.
    std::fs::write(&key, &new.key_pem).unwrap();
    std::fs::write(&cert, &new.cert_pem).unwrap();
    within("reload", async {
        loop {
            let tls = tls_connect(addr, "chat.test", config.clone())
                .await
                .unwrap();
            if served(&tls) == new.der {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The session opened before the reload still works.
    within("send", live.send(Message::text("still here")))
        .await
        .unwrap();
    assert_eq!(
        within("echo", live.next()).await.unwrap().unwrap(),
        Message::text("still here")
    );
    within("close", live.close(None)).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

fn write_ca(dir: &Path, ca: &Ca) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &ca.pem).unwrap();
    path
}

fn key_der(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A server configuration for a TLS backend, optionally requiring client certificates.
fn server_config(leaf: &Leaf, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
    };
    Arc::new(
        builder
            .with_single_cert(vec![leaf.der.clone()], key_der(&leaf.key_pem))
            .unwrap(),
    )
}

/// A plain-HTTP listener `public` in front of `backend` with `settings`.
fn plain_toml(backend: SocketAddr, settings: &str, extra: &str) -> String {
    tether_integration_tests::config_toml(backend, settings, extra)
}

/// Sends `GET path` over plain HTTP and returns the status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = tether_integration_tests::raw::send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    (resp.status, resp.text())
}

#[tokio::test]
async fn mtls_listener_refuses_clients_without_a_certificate_and_accepts_one_with() {
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let leaf = ca.leaf(&["mesh.test"]);
    let client = clients.leaf(&["client.test"]);
    let stranger = Ca::new("stranger ca").leaf(&["client.test"]);
    let dir = temp_dir();
    let (cert, key) = write_leaf(&dir, "mesh", &leaf);
    let client_ca = write_ca(&dir, &clients);
    let backend = backends::http_backend().await;
    let certs = cert_tables(&[(&cert, &key, &[])]);
    let sidecar = start(&https_toml(
        backend.addr,
        &format!("client_ca = \"{}\"", client_ca.display()),
        &certs,
        "",
        "",
    ));
    let addr = sidecar.addr("public");
    let with_cert = |leaf: &Leaf| {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![leaf.der.clone()], key_der(&leaf.key_pem))
                .unwrap(),
        )
    };
    let request = b"GET / HTTP/1.1\r\nHost: mesh.test\r\nConnection: close\r\n\r\n";
    // Without a certificate, or with one from another CA: refused at the TLS layer, and no
    // request reaches the backend. (In TLS 1.3 the client's side of the handshake completes
    // first; the refusal arrives as an alert on the first read.)
    for config in [client_config(&[&ca.der]), with_cert(&stranger)] {
        let refused = async {
            let mut tls = tls_connect(addr, "mesh.test", config).await?;
            tls.write_all(request).await?;
            let mut out = Vec::new();
            tls.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        let result = within("refusal", refused).await;
        assert!(
            result.is_err() || result.as_ref().is_ok_and(|out| out.is_empty()),
            "a client without a valid certificate got an answer: {result:?}"
        );
    }
    assert_eq!(backend.record.connections(), 0);
    // With a certificate from the client CA: served.
    let mut tls = within("tls", tls_connect(addr, "mesh.test", with_cert(&client)))
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    within("response", tls.read_to_end(&mut out)).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn backend_over_tls_with_a_private_ca_works_for_requests_and_wss_sessions() {
    let listener_ca = Ca::new("listener ca");
    let backend_ca = Ca::new("backend ca");
    let dir = temp_dir();
    let (cert, key) = write_leaf(&dir, "front", &listener_ca.leaf(&["chat.test"]));
    let ca_file = write_ca(&dir, &backend_ca);
    let ws = backends::ws_echo().await;
    let front = tether_integration_tests::tls_front::tls_front(
        ws.addr,
        server_config(&backend_ca.leaf(&["backend.test"]), None),
    )
    .await;
    let settings = format!(
        "protocol = \"https\"\nca_file = \"{}\"\nserver_name = \"backend.test\"",
        ca_file.display()
    );
    let certs = cert_tables(&[(&cert, &key, &[])]);
    // TLS on both sides of the session: wss:// in, https to the backend, pings included.
    let sidecar = start(&https_toml(
        front.addr,
        "",
        &certs,
        &settings,
        "keepalive_interval = \"0s\"",
    ));
    let mut ws_client = wss(
        sidecar.addr("public"),
        "chat.test",
        client_config(&[&listener_ca.der]),
    )
    .await;
    let large: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    for msg in [Message::text("both sides tls"), Message::binary(large)] {
        within("send", ws_client.send(msg.clone())).await.unwrap();
        assert_eq!(
            within("echo", ws_client.next()).await.unwrap().unwrap(),
            msg
        );
    }
    within("close", ws_client.close(None)).await.unwrap();
    while let Some(Ok(_)) = within("drain", ws_client.next()).await {}
    assert_eq!(front.handshakes(), 1);
    within("stop", sidecar.stop()).await.unwrap();

    // Ordinary requests too, over pooled TLS connections.
    let http = backends::http_backend().await;
    let front = tether_integration_tests::tls_front::tls_front(
        http.addr,
        server_config(&backend_ca.leaf(&["backend.test"]), None),
    )
    .await;
    let sidecar = start(&plain_toml(front.addr, &settings, ""));
    for _ in 0..3 {
        let (status, body) = within("get", get(sidecar.addr("public"), "/")).await;
        assert_eq!((status, body.as_str()), (200, "hello from backend"));
    }
    assert_eq!(http.record.heads().len(), 3);
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn backend_with_a_certificate_from_another_ca_gets_502() {
    let trusted = Ca::new("trusted ca");
    let other = Ca::new("other ca");
    let dir = temp_dir();
    let ca_file = write_ca(&dir, &trusted);
    let http = backends::http_backend().await;
    let front = tether_integration_tests::tls_front::tls_front(
        http.addr,
        server_config(&other.leaf(&["backend.test"]), None),
    )
    .await;
    let settings = format!(
        "protocol = \"https\"\nca_file = \"{}\"\nserver_name = \"backend.test\"",
        ca_file.display()
    );
    let sidecar = start(&plain_toml(front.addr, &settings, ""));
    let (status, body) = within("get", get(sidecar.addr("public"), "/")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TLS"), "{body}");
    // A trusted certificate for another name is refused just the same.
    let front = tether_integration_tests::tls_front::tls_front(
        http.addr,
        server_config(&trusted.leaf(&["elsewhere.test"]), None),
    )
    .await;
    let sidecar2 = start(&plain_toml(front.addr, &settings, ""));
    let (status, body) = within("get", get(sidecar2.addr("public"), "/")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(http.record.heads().len(), 0);
    within("stop", sidecar.stop()).await.unwrap();
    within("stop", sidecar2.stop()).await.unwrap();
}

#[tokio::test]
async fn backend_mtls_presents_the_configured_client_certificate() {
    let server_ca = Ca::new("backend ca");
    let client_ca = Ca::new("mesh client ca");
    let dir = temp_dir();
    let ca_file = write_ca(&dir, &server_ca);
    let (client_cert, client_key) = write_leaf(&dir, "client", &client_ca.leaf(&["tether.test"]));
    let http = backends::http_backend().await;
    let front = tether_integration_tests::tls_front::tls_front(
        http.addr,
        server_config(&server_ca.leaf(&["backend.test"]), Some(&client_ca)),
    )
    .await;
    let base = format!(
        "protocol = \"https\"\nca_file = \"{}\"\nserver_name = \"backend.test\"",
        ca_file.display()
    );
    let without = start(&plain_toml(front.addr, &base, ""));
    let (status, _) = within("get", get(without.addr("public"), "/")).await;
    assert_eq!(status, 502);
    let with = start(&plain_toml(
        front.addr,
        &format!(
            "{base}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            client_cert.display(),
            client_key.display()
        ),
        "",
    ));
    let (status, body) = within("get", get(with.addr("public"), "/")).await;
    assert_eq!((status, body.as_str()), (200, "hello from backend"));
    within("stop", without.stop()).await.unwrap();
    within("stop", with.stop()).await.unwrap();
}

#[tokio::test]
async fn https_probe_marks_a_backend_with_a_bad_certificate_unhealthy() {
    use tether_integration_tests::pool::{member, wait_for};
    let trusted = Ca::new("trusted ca");
    let other = Ca::new("other ca");
    let dir = temp_dir();
    let ca_file = write_ca(&dir, &trusted);
    let http = backends::http_backend().await;
    let good = tether_integration_tests::tls_front::tls_front(
        http.addr,
        server_config(&trusted.leaf(&["backend.test"]), None),
    )
    .await;
    let bad = tether_integration_tests::tls_front::tls_front(
        http.addr,
        server_config(&other.leaf(&["backend.test"]), None),
    )
    .await;
    let toml = format!(
        r#"workers = 1
admin = {{ bind = "127.0.0.1:0" }}

[listeners.public]
bind = "127.0.0.1:0"

[backend_pools.app]
members = ["{good}", "{bad}"]

[backend_settings.app]
protocol = "https"
ca_file = "{ca}"
server_name = "backend.test"
probe = "app"

[probes.app]
protocol = "https"
path = "/health"
interval = "5s"
timeout = "5s"

[routing_rules.app]
listener = "public"
backend_pool = "app"
backend_settings = "app"
"#,
        good = good.addr,
        bad = bad.addr,
        ca = ca_file.display()
    );
    let sidecar = start(&toml);
    let admin = sidecar.admin_addr();
    let status = wait_for(admin, "good member healthy, bad one probed", |s| {
        member(s, "app", good.addr)["state"] == "healthy"
            && !member(s, "app", bad.addr)["last_probe"].is_null()
    })
    .await;
    let good_member = member(&status, "app", good.addr);
    let bad_member = member(&status, "app", bad.addr);
    assert_eq!(good_member["state"], "healthy", "{good_member}");
    assert_ne!(bad_member["state"], "healthy", "{bad_member}");
    assert_eq!(bad_member["in_rotation"], false);
    let result = bad_member["last_probe"]["result"].as_str().unwrap();
    assert!(result.contains("TLS"), "{result}");
    // Every request goes to the member whose certificate verifies.
    for _ in 0..4 {
        let (status, _) = within("get", get(sidecar.addr("public"), "/")).await;
        assert_eq!(status, 200);
    }
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn http_listener_redirects_requests_to_https_and_refuses_plain_websockets() {
    let ca = Ca::new("test ca");
    let dir = temp_dir();
    let (cert, key) = write_leaf(&dir, "site", &ca.leaf(&["site.test"]));
    let backend = backends::ws_echo().await;
    let toml = format!(
        r#"workers = 1
admin = {{ bind = "127.0.0.1:0" }}

[listeners.plain]
bind = "127.0.0.1:0"
redirect_to = "secure"

[listeners.secure]
bind = "127.0.0.1:0"
protocol = "https"

[[listeners.secure.certificates]]
cert_file = "{cert}"
key_file = "{key}"

[backend_pools.app]
members = ["{backend}"]

[backend_settings.app]

[routing_rules.app]
listener = "secure"
backend_pool = "app"
backend_settings = "app"
"#,
        cert = cert.display(),
        key = key.display(),
        backend = backend.addr,
    );
    let sidecar = start(&toml);
    let (plain, secure) = (sidecar.addr("plain"), sidecar.addr("secure"));
    let resp = tether_integration_tests::raw::send(
        plain,
        b"POST /chat/room?x=1 HTTP/1.1\r\nHost: site.test:8080\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 308);
    assert_eq!(
        resp.header("location"),
        Some(format!("https://site.test:{}/chat/room?x=1", secure.port()).as_str())
    );
    // Browsers do not follow redirects for WebSockets: a plain upgrade gets 403 with a reason.
    let mut tcp = TcpStream::connect(plain).await.unwrap();
    tcp.write_all(&tether_integration_tests::raw::handshake("/ws", ""))
        .await
        .unwrap();
    let resp = within("403", tether_integration_tests::raw::read_head(&mut tcp)).await;
    assert_eq!(resp.status, 403);
    let len: usize = resp.header("content-length").unwrap().parse().unwrap();
    let mut reason = vec![0u8; len];
    within("reason", tcp.read_exact(&mut reason)).await.unwrap();
    let reason = String::from_utf8(reason).unwrap();
    assert!(reason.contains("wss://"), "{reason}");
    assert_eq!(backend.record.connections(), 0);
    // The https listener itself serves.
    let mut ws = wss(secure, "site.test", client_config(&[&ca.der])).await;
    within("send", ws.send(Message::text("secure")))
        .await
        .unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("secure")
    );
    within("close", ws.close(None)).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}

#[tokio::test]
async fn a_stalled_or_broken_handshake_does_not_disturb_other_connections() {
    let ca = Ca::new("test ca");
    let leaf = ca.leaf(&["chat.test"]);
    let dir = temp_dir();
    let (cert, key) = write_leaf(&dir, "chat", &leaf);
    let backend = backends::ws_echo().await;
    let certs = cert_tables(&[(&cert, &key, &[])]);
    // One worker: every connection below shares it.
    let sidecar = start(&https_toml(backend.addr, "", &certs, "", ""));
    let addr = sidecar.addr("public");
    // A client that connects and never says hello, one that sends half a ClientHello, and one
    // that speaks plain HTTP to the TLS port.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&old_client_hello([3, 3])[..20])
        .await
        .unwrap();
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: chat.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within("plain http refused", plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    // Meanwhile a real client is served at once.
    let mut ws = wss(addr, "chat.test", client_config(&[&ca.der])).await;
    within("send", ws.send(Message::text("unaffected")))
        .await
        .unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("unaffected")
    );
    within("close", ws.close(None)).await.unwrap();
    within("stop", sidecar.stop()).await.unwrap();
}
