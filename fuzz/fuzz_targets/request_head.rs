//! Fuzzes the request-head checks Tether owns, on heads parsed as hyper parses them (httparse):
//! the host rules (`headers::request_host`, `headers::parse_authority`), the WebSocket
//! handshake checks and the hop-by-hop rewriting. Nothing may panic, and:
//!
//! * a host that passes is a valid authority, and a replacement `Host` equals the routed host;
//! * an authority that parses re-parses to itself once re-serialized;
//! * no hop-by-hop header survives `strip_hop_by_hop`.
#![no_main]

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use tether_actors::handshake;
use tether_actors::headers::{self, parse_authority};

fuzz_target!(|data: &[u8]| {
    // Any text is also tried as an authority on its own.
    if let Ok(text) = std::str::from_utf8(data) {
        check_authority(text);
    }
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return;
    };
    // hyper refuses what the http crate cannot represent; so do we.
    let Ok(uri) = path.parse::<Uri>() else {
        return;
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .version(if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for h in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        builder = builder.header(name, value);
    }
    let Ok(mut req) = builder.body(()) else {
        return;
    };

    if let Ok((host, replacement)) = headers::request_host(req.version(), req.uri(), req.headers())
    {
        if let Some(host) = host {
            assert!(parse_authority(host).is_some(), "accepted host {host:?}");
        } else {
            assert_eq!(req.version(), Version::HTTP_10);
        }
        if let Some(replacement) = &replacement {
            assert_eq!(Some(replacement.as_bytes()), host.map(str::as_bytes));
        }
    }
    if handshake::wants_websocket(req.headers()) {
        let _ = handshake::validate(&req, data.len() % 2 == 0);
    }
    headers::strip_hop_by_hop(req.headers_mut());
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        assert!(!req.headers().contains_key(name));
    }
});

fn check_authority(text: &str) {
    let Some(a) = parse_authority(text) else {
        return;
    };
    assert!(!a.host.is_empty());
    let again = match (a.host.contains(':'), a.port) {
        (true, Some(p)) => format!("[{}]:{p}", a.host),
        (true, None) => format!("[{}]", a.host),
        (false, Some(p)) => format!("{}:{p}", a.host),
        (false, None) => a.host.to_owned(),
    };
    assert_eq!(parse_authority(&again), Some(a), "{text:?} → {again:?}");
}
