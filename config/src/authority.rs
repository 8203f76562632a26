//! Host-and-port text: the one parser of `uri-host [ ":" port ]` in Tether.
//!
//! Request `Host` values and request-target authorities (in `tether-actors`), the TLS server
//! names and probe hosts derived from configured host overrides, and the configuration's own
//! checks of `host_override`, `probes.NAME.host` and allowed origins all split host from port
//! here, so a value the configuration accepts is read the same way on the data path.

use std::net::Ipv6Addr;

/// A `uri-host [ ":" port ]` split in two (RFC 9110 §7.2 `Host`, RFC 3986 §3.2.2–3.2.3): the
/// one parser of host-and-port text, for `Host` values, request-target authorities and
/// configured host overrides alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authority<'a> {
    /// The host as sent (case kept), an IPv6 literal without its brackets.
    pub host: &'a str,
    /// The port, when one is given.
    pub port: Option<u16>,
}

/// Parses `uri-host [ ":" port ]`: a reg-name or IPv4 address (unreserved, percent-encoded and
/// sub-delim characters, RFC 3986 §3.2.2) or a bracketed IPv6 literal, then an optional decimal
/// port of at most 65535 (an empty port, which RFC 3986 allows, counts as none). An empty host
/// is refused: an `http` URI never has one (RFC 9110 §4.2.1). No allocation.
pub fn parse_authority(s: &str) -> Option<Authority<'_>> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (v6, port)
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    if host.is_empty() {
        return None;
    }
    if !s.starts_with('[') && !is_reg_name(host.as_bytes()) {
        return None;
    }
    Some(Authority { host, port })
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )` (RFC 3986 §3.2.2); IPv4 addresses
/// are reg-names too.
fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_host_and_port() {
        let a = |host, port| Some(Authority { host, port });
        assert_eq!(
            parse_authority("Chat.Example:8080"),
            a("Chat.Example", Some(8080))
        );
        assert_eq!(parse_authority("10.0.0.5"), a("10.0.0.5", None));
        assert_eq!(parse_authority("[::1]:443"), a("::1", Some(443)));
        assert_eq!(parse_authority("[::1]"), a("::1", None));
        assert_eq!(parse_authority("a.example:"), a("a.example", None));
        assert_eq!(
            parse_authority("caf%C3%A9.example"),
            a("caf%C3%A9.example", None)
        );
        for bad in [
            "",
            ":80",
            "a.example:65536",
            "a.example:123456",
            "a.example:8o",
            "a b",
            "a.example:80:80",
            "::1",
            "[::1",
            "[::1]x",
            "[nope]:80",
            "user@a.example",
            "a/b",
            "a%zz",
            "a%4",
        ] {
            assert_eq!(parse_authority(bad), None, "{bad:?}");
        }
    }
}
