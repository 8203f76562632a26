//! The values of the configuration that have a written form of their own, and their parsers:
//! pool members (`"10.0.0.5:5000 weight=3"`), backend addresses, hash keys, host and path
//! patterns, status ranges. Each `FromStr` explains a refusal in the configuration's words.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::error::ParseError;

/// A member's weight when its entry has no `weight=N`.
pub const DEFAULT_WEIGHT: NonZeroU32 = NonZeroU32::new(1).unwrap();
/// The largest member weight. Weights are ratios between members of one pool; a bound keeps
/// the balancing arithmetic (sums and products of weights and loads) far from overflow.
pub const MAX_WEIGHT: u32 = 1000;

/// One entry of `backend_pools.NAME.members`: an address and its weight, written
/// `"10.0.0.5:5000"` or `"10.0.0.5:5000 weight=3"` (a string, so that it also fits in a
/// comma-separated environment variable).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolMember {
    /// Where the member is.
    pub address: Member,
    /// Its share of new requests and sessions relative to the other members; default
    /// [`DEFAULT_WEIGHT`], at most [`MAX_WEIGHT`]. Every address a DNS name resolves to gets it.
    pub weight: NonZeroU32,
}

impl PoolMember {
    /// A member of weight 1.
    pub fn new(address: Member) -> PoolMember {
        PoolMember {
            address,
            weight: DEFAULT_WEIGHT,
        }
    }
}

impl fmt::Display for PoolMember {
    /// The written form: the address, then ` weight=N` unless the weight is the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weight == DEFAULT_WEIGHT {
            write!(f, "{}", self.address)
        } else {
            write!(f, "{} weight={}", self.address, self.weight)
        }
    }
}

impl FromStr for PoolMember {
    type Err = ParseError;

    /// Parses `address` or `address weight=N` (see [`Member`] for the address forms).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut words = s.split_whitespace();
        let address: Member = words.next().unwrap_or_default().parse()?;
        let mut weight = DEFAULT_WEIGHT;
        for word in words {
            let invalid = || {
                ParseError::new(format!(
                    "invalid member \"{s}\": after the address only \"weight=N\" may follow \
                     (N from 1 to {MAX_WEIGHT}), e.g. \"{address} weight=3\""
                ))
            };
            let n = word.strip_prefix("weight=").ok_or_else(invalid)?;
            weight = n
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_WEIGHT)
                .and_then(NonZeroU32::new)
                .ok_or_else(invalid)?;
        }
        Ok(PoolMember { address, weight })
    }
}

/// What `consistent_hash` hashes to pick a member, so that a reconnecting client lands on the
/// same member while that member is in rotation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// The client's IP address (`client_ip`).
    ClientIp,
    /// A request header (`header:x-user-id`), lowercase; requests without it hash the client IP.
    Header(String),
    /// A cookie (`cookie:session`); requests without it hash the client IP.
    Cookie(String),
}

impl fmt::Display for HashKey {
    /// The written form: `client_ip`, `header:NAME` or `cookie:NAME`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

impl FromStr for HashKey {
    type Err = ParseError;

    /// Parses `client_ip`, `header:NAME` or `cookie:NAME` (NAME an RFC 9110 token).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let invalid = || {
            ParseError::new(format!(
                "invalid hash key \"{s}\": expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\", \
                 e.g. \"header:x-user-id\""
            ))
        };
        if s == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        let (kind, name) = s.split_once(':').ok_or_else(invalid)?;
        if !is_token(name) {
            return Err(invalid());
        }
        match kind {
            "header" => Ok(HashKey::Header(name.to_ascii_lowercase())),
            "cookie" => Ok(HashKey::Cookie(name.to_owned())),
            _ => Err(invalid()),
        }
    }
}

/// One backend address: an IP address or a DNS name, with a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Member {
    /// `ip:port`, e.g. `10.0.0.5:5000` or `[::1]:5000`.
    Addr(SocketAddr),
    /// `host:port`, e.g. `chat.internal:5000`; the host is resolved at run time.
    Dns {
        /// Lowercase DNS name.
        host: String,
        /// Port.
        port: u16,
    },
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Addr(addr) => write!(f, "{addr}"),
            Member::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for Member {
    type Err = ParseError;

    /// Parses `ip:port` (IPv6 in brackets) or `host:port`. The port is required and not 0.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let invalid = |why: &str| ParseError::new(format!("invalid member \"{s}\": {why}"));
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return match addr.port() {
                0 => Err(invalid("port 0 is not a backend port")),
                _ => Ok(Member::Addr(addr)),
            };
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(if is_hostname(s) || s.parse::<IpAddr>().is_ok() {
                invalid(&format!("port required, e.g. \"{s}:80\""))
            } else {
                invalid("expected ip:port or host:port, e.g. \"10.0.0.5:5000\" or \"chat.internal:5000\"")
            });
        };
        if host.contains(':') || s.parse::<IpAddr>().is_ok() {
            return Err(invalid(
                "write IPv6 addresses in brackets with a port, e.g. \"[::1]:5000\"",
            ));
        }
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(invalid("the port must be a number from 1 to 65535")),
            Ok(port) => port,
        };
        if !is_hostname(host) {
            return Err(invalid(&format!(
                "\"{host}\" is not a valid host name or IP address"
            )));
        }
        Ok(Member::Dns {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// A `Host` a routing rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Exactly this host (lowercase), e.g. `chat.example.com`.
    Exact(String),
    /// Any host ending in this suffix: `*.example.com` is `Suffix(".example.com")`.
    Suffix(String),
}

impl fmt::Display for HostPattern {
    /// The written form: `chat.example.com` or `*.example.com`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl FromStr for HostPattern {
    type Err = ParseError;

    /// Parses `host`, an IP address, or `*.domain`; lowercases it.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let invalid = |why: &str| ParseError::new(format!("invalid host \"{s}\": {why}"));
        let lower = s.to_ascii_lowercase();
        if lower == "*" {
            return Err(invalid("leave hosts empty to match any host"));
        }
        if let Some(domain) = lower.strip_prefix("*.") {
            return if is_hostname(domain) {
                Ok(HostPattern::Suffix(format!(".{domain}")))
            } else {
                Err(invalid(
                    "expected \"*.\" followed by a domain, e.g. \"*.example.com\"",
                ))
            };
        }
        if lower.contains('*') {
            return Err(invalid(
                "\"*\" is only allowed as a leading \"*.\", e.g. \"*.example.com\"",
            ));
        }
        let ip = lower.parse::<IpAddr>().is_ok()
            || lower
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
        if ip || is_hostname(&lower) {
            Ok(HostPattern::Exact(lower))
        } else {
            Err(invalid(
                "expected a host name such as \"chat.example.com\" or \"*.example.com\"",
            ))
        }
    }
}

/// A request path a routing rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathPattern {
    /// Exactly this path, e.g. `/chat`.
    Exact(String),
    /// Any path starting with this prefix: `/chat/*` is `Prefix("/chat/")`, `/*` is `Prefix("/")`.
    Prefix(String),
}

impl fmt::Display for PathPattern {
    /// The written form: `/chat` or `/chat/*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Exact(path) => f.write_str(path),
            PathPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl FromStr for PathPattern {
    type Err = ParseError;

    /// Parses `/exact` or `/prefix/*`. `*` is allowed only as a final `/*`.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let invalid = |why: &str| ParseError::new(format!("invalid path \"{s}\": {why}"));
        if !s.starts_with('/') {
            return Err(invalid("paths start with \"/\""));
        }
        if s.contains(|c: char| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
            return Err(invalid(
                "a path has no spaces, query (\"?\") or fragment (\"#\")",
            ));
        }
        let (path, prefix) = match s.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') => (prefix, true),
            _ => (s, false),
        };
        if path.contains('*') {
            return Err(invalid(
                "\"*\" is only allowed as a final \"/*\", e.g. \"/chat/*\"",
            ));
        }
        Ok(if prefix {
            PathPattern::Prefix(path.to_owned())
        } else {
            PathPattern::Exact(path.to_owned())
        })
    }
}

/// Parses a status or status range: `"404"` or `"200-399"`, within 100..=599.
pub(crate) fn parse_status_range(s: &str) -> Result<RangeInclusive<u16>, ParseError> {
    let invalid = || {
        ParseError::new(format!(
            "invalid status \"{s}\": expected a status or range between 100 and 599, e.g. \"200-399\" or \"404\""
        ))
    };
    let status = |t: &str| match t.trim().parse::<u16>() {
        Ok(n) if (100..=599).contains(&n) => Ok(n),
        _ => Err(invalid()),
    };
    let range = match s.split_once('-') {
        Some((lo, hi)) => status(lo)?..=status(hi)?,
        None => status(s)?..=status(s)?,
    };
    if range.is_empty() {
        return Err(invalid());
    }
    Ok(range)
}

/// The written form of a status range: `"200-399"`, or `"404"` for a single status.
pub(crate) fn format_status_range(range: &RangeInclusive<u16>) -> String {
    if range.start() == range.end() {
        range.start().to_string()
    } else {
        format!("{}-{}", range.start(), range.end())
    }
}

/// An HTTP token (RFC 9110 §5.6.2): header names, cookie names and WebSocket subprotocols.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// A DNS host name: dot-separated labels of letters, digits, `-` and `_` (1–63 characters,
/// not starting or ending with `-`), at most 253 characters, last label not all digits
/// (so `10.0.0.300` is not mistaken for a name).
pub(crate) fn is_hostname(s: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(label_ok)
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths() {
        let p = |s: &str| s.parse::<PathPattern>();
        assert_eq!(p("/chat/*"), Ok(PathPattern::Prefix("/chat/".into())));
        assert_eq!(p("/*"), Ok(PathPattern::Prefix("/".into())));
        assert_eq!(p("/chat"), Ok(PathPattern::Exact("/chat".into())));
        assert_eq!(p("/"), Ok(PathPattern::Exact("/".into())));
        assert_eq!(
            p("chat").unwrap_err().to_string(),
            r#"invalid path "chat": paths start with "/""#
        );
        for bad in ["/chat*", "/*/x", "/a/*/*", "/a b", "/a?x=1"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(PathPattern::Prefix("/chat/".into()).to_string(), "/chat/*");
    }

    #[test]
    fn hosts() {
        let h = |s: &str| s.parse::<HostPattern>();
        assert_eq!(
            h("*.Example.com"),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert_eq!(
            h("Chat.Example.com"),
            Ok(HostPattern::Exact("chat.example.com".into()))
        );
        assert_eq!(h("10.0.0.1"), Ok(HostPattern::Exact("10.0.0.1".into())));
        assert!(h("*")
            .unwrap_err()
            .to_string()
            .contains("leave hosts empty"));
        assert!(h("a.*.com").is_err());
        assert!(h("exa mple.com").is_err());
        assert_eq!(
            HostPattern::Suffix(".example.com".into()).to_string(),
            "*.example.com"
        );
    }

    #[test]
    fn members() {
        let m = |s: &str| s.parse::<Member>();
        assert_eq!(
            m("127.0.0.1:5000"),
            Ok(Member::Addr("127.0.0.1:5000".parse().unwrap()))
        );
        assert_eq!(
            m("[::1]:5000"),
            Ok(Member::Addr("[::1]:5000".parse().unwrap()))
        );
        assert_eq!(
            m("Chat.internal:5000"),
            Ok(Member::Dns {
                host: "chat.internal".into(),
                port: 5000
            })
        );
        let err = |s: &str| m(s).unwrap_err().to_string();
        assert_eq!(
            err("chat.internal"),
            r#"invalid member "chat.internal": port required, e.g. "chat.internal:80""#
        );
        assert!(err("10.0.0.1:0").contains("port 0"));
        assert!(err("chat:http").contains("1 to 65535"));
        assert!(err("::1:80").contains("brackets"));
        assert!(err("10.0.0.300:80").contains("not a valid host name"));
        assert!(err("bad host:80").contains("not a valid host name"));
        assert_eq!(
            Member::Dns {
                host: "a.b".into(),
                port: 1
            }
            .to_string(),
            "a.b:1"
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(parse_status_range("200-399"), Ok(200..=399));
        assert_eq!(parse_status_range("404"), Ok(404..=404));
        assert!(parse_status_range("399-200").is_err());
        assert!(parse_status_range("600").is_err());
        assert!(parse_status_range("2xx").is_err());
        assert_eq!(format_status_range(&(404..=404)), "404");
        assert_eq!(format_status_range(&(200..=399)), "200-399");
    }

    proptest! {
        #[test]
        fn path_patterns_round_trip(segments in proptest::collection::vec("[a-z0-9._~-]{1,8}", 0..4), prefix: bool) {
            let mut written = format!("/{}", segments.join("/"));
            if prefix {
                if !written.ends_with('/') {
                    written.push('/');
                }
                written.push('*');
            }
            let parsed: PathPattern = written.parse().unwrap();
            prop_assert_eq!(matches!(parsed, PathPattern::Prefix(_)), prefix);
            if let PathPattern::Prefix(p) = &parsed {
                prop_assert!(p.ends_with('/') && written.starts_with(p.as_str()));
            }
            prop_assert_eq!(parsed.to_string(), written);
        }

        #[test]
        fn path_parsing_never_panics(s in "\\PC{0,16}") {
            if let Ok(p) = s.parse::<PathPattern>() {
                prop_assert_eq!(p.to_string().parse::<PathPattern>(), Ok(p));
            }
        }
    }
}
