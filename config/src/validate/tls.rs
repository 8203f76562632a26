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
        Some((client_ca?, raw.redirect_to.clone()))
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
        if protocol == BackendProtocol::Http {
            for (field, set) in [
                ("ca_file", raw.ca_file.is_some()),
                ("server_name", raw.server_name.is_some()),
                ("client_cert_file", raw.client_cert_file.is_some()),
                ("client_key_file", raw.client_key_file.is_some()),
            ] {
                if set {
                    self.warn(&at(field), "only used when protocol = \"https\"");
                }
            }
        }
        match (&raw.client_cert_file, &raw.client_key_file) {
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
