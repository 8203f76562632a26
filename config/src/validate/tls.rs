//! TLS fields of listeners and backend settings: presence and consistency (`client_ca` and
//! `redirect_to` on the right kind of listener, a client key with its certificate).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Checker;
use crate::model::{BackendProtocol, ListenerConfig, ListenerProtocol};
use crate::raw::{RawBackendSettings, RawListener};

/// The TLS fields of one backend settings entry, checked.
pub(super) struct BackendTls {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Checker<'_> {
    /// A file path that, when given, must not be empty.
    fn tls_file(&mut self, path: &str, value: &Option<String>) -> Option<Option<PathBuf>> {
        match value.as_deref() {
            None => Some(None),
            Some("") => {
                self.error(path, "must not be empty");
                None
            }
            Some(s) => Some(Some(PathBuf::from(s))),
        }
    }

    /// `client_ca` and `redirect_to` of a listener.
    pub(super) fn listener_tls(
        &mut self,
        entry: &str,
        protocol: ListenerProtocol,
        raw: &RawListener,
    ) -> Option<(Option<PathBuf>, Option<String>)> {
        let client_ca = self.tls_file(&format!("{entry}.client_ca"), &raw.client_ca);
        if protocol == ListenerProtocol::Http && raw.client_ca.is_some() {
            self.error(
                &format!("{entry}.client_ca"),
                "client authentication needs TLS: only https listeners take a client_ca",
            );
            return None;
        }
        if protocol == ListenerProtocol::Https && raw.redirect_to.is_some() {
            self.error(
                &format!("{entry}.redirect_to"),
                "only http listeners redirect (to an https listener)",
            );
            return None;
        }
        Some((client_ca?, raw.redirect_to.0.clone()))
    }

    /// Each `redirect_to` names an https listener.
    pub(super) fn redirects(&mut self, listeners: &BTreeMap<String, ListenerConfig>) {
        for (name, l) in listeners {
            let Some(target) = &l.redirect_to else {
                continue;
            };
            let path = format!("listeners.{name}.redirect_to");
            match listeners.get(target) {
                Some(t) if t.protocol == ListenerProtocol::Https => {}
                Some(_) => self.error(
                    &path,
                    format!("listener \"{target}\" is not an https listener"),
                ),
                None => self.error(&path, format!("no listener named \"{target}\"")),
            }
        }
    }

    /// `ca_file`, `server_name`, `client_cert_file` and `client_key_file` of backend settings.
    pub(super) fn backend_tls(
        &mut self,
        name: &str,
        protocol: BackendProtocol,
        raw: &RawBackendSettings,
    ) -> Option<BackendTls> {
        let at = |field: &str| format!("backend_settings.{name}.{field}");
        let ca_file = self.tls_file(&at("ca_file"), &raw.ca_file);
        let cert = self.tls_file(&at("client_cert_file"), &raw.client_cert_file);
        let key = self.tls_file(&at("client_key_file"), &raw.client_key_file);
        let server_name = match raw.server_name.as_deref() {
            Some(s) if rustls_pki_types::ServerName::try_from(s).is_err() => {
                self.error(
                    &at("server_name"),
                    format!("invalid server name \"{s}\": expected a DNS name or an IP address"),
                );
                None
            }
            other => Some(other.map(str::to_owned)),
        };
        if !protocol.uses_tls() {
            for (field, set) in [
                ("ca_file", raw.ca_file.is_some()),
                ("server_name", raw.server_name.is_some()),
                ("client_cert_file", raw.client_cert_file.is_some()),
                ("client_key_file", raw.client_key_file.is_some()),
            ] {
                if set {
                    self.warn(&at(field), "only used when protocol = \"https\" or \"h2\"");
                }
            }
        }
        match (&raw.client_cert_file.0, &raw.client_key_file.0) {
            (Some(_), None) => {
                self.error(&at("client_key_file"), "client_cert_file needs its key");
                return None;
            }
            (None, Some(_)) => {
                self.error(
                    &at("client_cert_file"),
                    "client_key_file needs its certificate",
                );
                return None;
            }
            _ => {}
        }
        Some(BackendTls {
            ca_file: ca_file?,
            server_name: server_name?,
            client_cert_file: cert?,
            client_key_file: key?,
        })
    }
}

/// Certificates expiring sooner than this are reported with a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Checks every TLS file the configuration names — readable, PEM with what it should hold, a
/// key matching its certificate, a certificate not expired (a warning under
/// [`EXPIRY_WARNING_DAYS`]) — and that no SNI name is served by two certificates of one
/// listener. Run by [`crate::load`] (start-up and `tether check`), not by
/// [`crate::from_toml_str`], so that configurations can be built without the files.
pub(crate) fn check_files(
    root: &crate::tree::Node,
    config: &crate::Config,
) -> (Vec<crate::ConfigError>, Vec<String>) {
    let mut c = Checker {
        root,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for (name, l) in &config.listeners {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, cert) in l.certificates.iter().enumerate() {
            let entry = format!("listeners.{name}.certificates[{i}]");
            c.cert_pair(
                &entry,
                "cert_file",
                &cert.cert_file,
                "key_file",
                &cert.key_file,
                now,
            );
            for n in &cert.server_names {
                if let Some(first) = seen.insert(n.to_ascii_lowercase(), i) {
                    c.error(
                        &format!("{entry}.server_names"),
                        format!(
                            "\"{n}\" is already served by listeners.{name}.certificates[{first}]"
                        ),
                    );
                }
            }
        }
        if let Some(ca) = &l.client_ca {
            c.ca_bundle(&format!("listeners.{name}.client_ca"), ca);
        }
    }
    for (name, s) in &config.backend_settings {
        if !s.protocol.uses_tls() {
            continue;
        }
        let entry = format!("backend_settings.{name}");
        if let Some(ca) = &s.ca_file {
            c.ca_bundle(&format!("{entry}.ca_file"), ca);
        }
        if let (Some(cert), Some(key)) = (&s.client_cert_file, &s.client_key_file) {
            c.cert_pair(
                &entry,
                "client_cert_file",
                cert,
                "client_key_file",
                key,
                now,
            );
        }
    }
    (c.errors, c.warnings)
}

impl Checker<'_> {
    fn read_file(&mut self, path: &str, file: &std::path::Path) -> Option<Vec<u8>> {
        std::fs::read(file)
            .map_err(|e| self.error(path, format!("cannot read {}: {e}", file.display())))
            .ok()
    }

    fn pem_certs(
        &mut self,
        path: &str,
        file: &std::path::Path,
    ) -> Option<Vec<rustls_pki_types::CertificateDer<'static>>> {
        use rustls_pki_types::pem::PemObject;
        let pem = self.read_file(path, file)?;
        match rustls_pki_types::CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>()
        {
            Ok(certs) if !certs.is_empty() => Some(certs),
            Ok(_) => {
                self.error(
                    path,
                    format!("{}: no CERTIFICATE in the PEM file", file.display()),
                );
                None
            }
            Err(e) => {
                self.error(path, format!("{}: invalid PEM: {e}", file.display()));
                None
            }
        }
    }

    fn ca_bundle(&mut self, path: &str, file: &std::path::Path) {
        let Some(certs) = self.pem_certs(path, file) else {
            return;
        };
        let mut roots = rustls::RootCertStore::empty();
        let (_, unusable) = roots.add_parsable_certificates(certs);
        if roots.is_empty() {
            self.error(
                path,
                format!(
                    "{}: no usable CA certificate ({unusable} unusable)",
                    file.display()
                ),
            );
        }
    }

    /// A certificate chain and its key: readable, matching, and the leaf not expired.
    fn cert_pair(
        &mut self,
        entry: &str,
        cert_field: &str,
        cert_file: &std::path::Path,
        key_field: &str,
        key_file: &std::path::Path,
        now: i64,
    ) {
        use rustls_pki_types::pem::PemObject;
        let cert_path = format!("{entry}.{cert_field}");
        let key_path = format!("{entry}.{key_field}");
        let certs = self.pem_certs(&cert_path, cert_file);
        let key = self.read_file(&key_path, key_file).and_then(|pem| {
            rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| {
                    self.error(
                        &key_path,
                        format!(
                            "{}: no usable private key (PKCS#8, RSA or SEC1 PEM expected): {e}",
                            key_file.display()
                        ),
                    )
                })
                .ok()
        });
        let Some(certs) = certs else {
            return;
        };
        if let Some(not_after) = not_after(&certs[0]) {
            let days = (not_after - now).div_euclid(86_400);
            if not_after <= now {
                self.error(
                    &cert_path,
                    format!("{}: the certificate has expired", cert_file.display()),
                );
            } else if days < EXPIRY_WARNING_DAYS {
                self.warn(
                    &cert_path,
                    &format!(
                        "{}: the certificate expires in {days} days",
                        cert_file.display()
                    ),
                );
            }
        }
        let Some(key) = key else {
            return;
        };
        let provider = rustls::crypto::ring::default_provider();
        match rustls::sign::CertifiedKey::from_der(certs, key, &provider) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => self.error(
                &key_path,
                format!(
                    "{}: the private key does not match the certificate in {}",
                    key_file.display(),
                    cert_file.display()
                ),
            ),
            Err(e) => self.error(
                &key_path,
                format!("{}: unusable private key: {e}", key_file.display()),
            ),
        }
    }
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The end of a certificate's validity (RFC 5280 §4.1.2.5), in seconds since the Unix epoch.
fn not_after(cert: &[u8]) -> Option<i64> {
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let mut rest = tbs;
    // [0] version (optional), serialNumber, signature, issuer, then validity.
    let (tag, _, after) = der(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..3 {
        rest = der(rest)?.2;
    }
    let (_, validity, _) = der(rest)?;
    let (_, after_not_before) = der(validity).map(|(t, _, r)| (t, r))?;
    let (tag, time, _) = der(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    let digits = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match tag {
        0x17 => {
            let yy = digits(text.get(0..2)?)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (digits(text.get(0..4)?)?, text.get(4..)?),
        _ => return None,
    };
    let month = digits(rest.get(0..2)?)?;
    let day = digits(rest.get(2..4)?)?;
    let hour = digits(rest.get(4..6)?)?;
    let minute = digits(rest.get(6..8)?)?;
    let second = digits(rest.get(8..10)?)?;
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_count_days_from_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 21), 20_778);
    }

    #[test]
    fn redirect_to_must_name_an_https_listener_from_an_http_one() {
        let base = r#"
[listeners.public]
bind = "127.0.0.1:8080"
redirect_to = "REDIRECT"

[listeners.other]
bind = "127.0.0.1:8081"
"#;
        let errors = |toml: &str| match crate::from_toml_str(toml) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        let e = errors(&base.replace("REDIRECT", "nope"));
        assert!(
            e.iter().any(|e| e.contains("no listener named \"nope\"")),
            "{e:?}"
        );
        let e = errors(&base.replace("REDIRECT", "other"));
        assert!(
            e.iter().any(|e| e.contains("is not an https listener")),
            "{e:?}"
        );
    }

    /// Writes a self-signed certificate for `names` valid until `not_after`, and its key.
    fn pair(
        dir: &std::path::Path,
        name: &str,
        names: &[&str],
        not_after: (i32, u8, u8),
    ) -> (std::path::PathBuf, std::path::PathBuf, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, key.serialize_pem())
    }

    #[test]
    fn tls_files_are_checked_at_load_time() {
        let dir = std::env::temp_dir().join(format!("tether-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good_c, good_k, _) = pair(&dir, "good", &["a.test"], (4000, 1, 1));
        let (old_c, old_k, _) = pair(&dir, "old", &["b.test"], (2020, 1, 1));
        let (other_c, _, _) = pair(&dir, "other", &["c.test"], (4000, 1, 1));
        let soon = time_in_days(10);
        let (soon_c, soon_k, _) = pair(&dir, "soon", &["d.test"], soon);
        let entry = |c: &std::path::Path, k: &std::path::Path, names: &str| {
            format!(
                "[[listeners.public.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\nserver_names = [{names}]\n",
                c.display(),
                k.display()
            )
        };
        let toml = format!(
            "[listeners.public]\nbind = \"127.0.0.1:8443\"\nprotocol = \"https\"\nclient_ca = \"{missing}\"\n{}{}{}{}{}",
            entry(&good_c, &good_k, "\"a.test\""),
            entry(&old_c, &old_k, "\"b.test\""),
            entry(&other_c, &good_k, "\"c.test\""),
            entry(&soon_c, &soon_k, "\"A.test\""),
            entry(&dir.join("nope.crt"), &good_k, ""),
            missing = dir.join("missing-ca.pem").display(),
        );
        let root = crate::tree::parse_str(&toml, "inline").unwrap();
        let config = crate::build(&root).unwrap().config;
        let (errors, warnings) = check_files(&root, &config);
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
        assert!(
            has("listeners.public.certificates[1].cert_file"),
            "{errors:#?}"
        );
        assert!(has("the certificate has expired"), "{errors:#?}");
        assert!(
            has("listeners.public.certificates[2].key_file"),
            "{errors:#?}"
        );
        assert!(has("does not match the certificate"), "{errors:#?}");
        assert!(has("listeners.public.certificates[3].server_names: \"a.test\" is already served by listeners.public.certificates[0]"), "{errors:#?}");
        assert!(
            has("listeners.public.certificates[4].cert_file: cannot read"),
            "{errors:#?}"
        );
        assert!(
            has("listeners.public.client_ca: cannot read"),
            "{errors:#?}"
        );
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("expires in"), "{warnings:?}");
    }

    /// The calendar date `days` from now (UTC).
    fn time_in_days(days: i64) -> (i32, u8, u8) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut z = now / 86_400 + days + 719_468;
        let era = z.div_euclid(146_097);
        z -= era * 146_097;
        let yoe = (z - z / 1460 + z / 36_524 - z / 146_096) / 365;
        let doy = z - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y as i32, m as u8, d as u8)
    }
}
