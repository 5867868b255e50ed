//! The headers the front rewrites on every request and response: hop-by-hop headers
//! (`Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`), which never cross the hop, and the front's
//! own `X-Handoff-*` headers, which neither side may set for the other.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Handoff-Front`.
pub const H_FRONT: &str = "x-handoff-front";
/// `X-Handoff-Release`.
pub const H_RELEASE: &str = "x-handoff-release";
/// `X-Handoff-Probe`.
pub const H_PROBE: &str = "x-handoff-probe";

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a header's comma-separated values contain `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Removes hop-by-hop headers; with `upgrade`, keeps `Upgrade` and sets
/// `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Usually there is none: one pass over the names, no allocation.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let keep = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if let Some(u) = keep {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes every `X-Handoff-*` header.
pub fn strip_handoff(headers: &mut HeaderMap) {
    if !headers.keys().any(is_handoff) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| is_handoff(n)).cloned().collect();
    for n in names {
        headers.remove(&n);
    }
}

fn is_handoff(n: &HeaderName) -> bool {
    n.as_str().starts_with("x-handoff-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_handoff_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-handoff-probe", HeaderValue::from_static("1"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false);
        strip_handoff(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-app"));
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(up.get(header::UPGRADE).unwrap(), "websocket");
        assert!(!up.contains_key("x-secret"));
    }
}
