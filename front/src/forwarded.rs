//! The forwarded headers a request carries to the release: `X-Forwarded-For`, `-Proto`,
//! `-Host`, `-Port` and RFC 7239 `Forwarded`.
//!
//! * From a trusted peer (`--trusted-proxies`, e.g. the load balancer's subnets), which
//!   terminated the client's connection and said so: its `X-Forwarded-Proto`, `-Host` and
//!   `-Port` are kept (set only if absent: `http`, the request's `Host`, the front's port), the
//!   peer's address is appended to `X-Forwarded-For` (several header lines become one,
//!   `a, b, peer`), and `Forwarded` is kept as it came.
//! * From any other peer, whatever the client claims is replaced: `X-Forwarded-For` is the
//!   peer's address alone, `X-Forwarded-Proto: http`, `X-Forwarded-Host` the request's `Host`
//!   (none without one), `X-Forwarded-Port` the front's port, and `Forwarded` is removed. A
//!   client cannot make the app believe it came over HTTPS or from another address.
//!
//! Whether a peer is trusted is decided once per connection (at accept). A request allocates
//! only to join a trusted peer's `X-Forwarded-For` with its address.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const FORWARDED: HeaderName = header::FORWARDED;
const HTTP: HeaderValue = HeaderValue::from_static("http");

/// Sets the forwarded headers of a request from `peer` (its IP as a header value) that came in
/// on the front's `port` (as a header value), `trusted` if the peer is a trusted proxy.
pub fn rewrite(headers: &mut HeaderMap, trusted: bool, peer: &HeaderValue, port: &HeaderValue) {
    if !trusted {
        headers.insert(X_FORWARDED_FOR, peer.clone());
        headers.insert(X_FORWARDED_PROTO, HTTP);
        match headers.get(header::HOST).cloned() {
            Some(host) => headers.insert(X_FORWARDED_HOST, host),
            None => headers.remove(X_FORWARDED_HOST),
        };
        headers.insert(X_FORWARDED_PORT, port.clone());
        headers.remove(FORWARDED);
        return;
    }
    append_for(headers, peer);
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HTTP);
    }
    if !headers.contains_key(X_FORWARDED_HOST)
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
    if !headers.contains_key(X_FORWARDED_PORT) {
        headers.insert(X_FORWARDED_PORT, port.clone());
    }
}

/// `X-Forwarded-For: <every prior line, joined>, <peer>`.
fn append_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let prior = headers.get_all(&X_FORWARDED_FOR);
    let mut lines = prior
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty())
        .peekable();
    if lines.peek().is_none() {
        headers.insert(X_FORWARDED_FOR, peer.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for line in lines {
        joined.extend_from_slice(line);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    // Header values joined by ", " are a valid header value.
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => headers.insert(X_FORWARDED_FOR, v),
        Err(_) => headers.insert(X_FORWARDED_FOR, peer.clone()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: HeaderValue = HeaderValue::from_static("10.0.1.5");
    const PORT: HeaderValue = HeaderValue::from_static("80");

    fn forged() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("198.51.100.2, 192.0.2.1"),
        );
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        h.insert(X_FORWARDED_PORT, HeaderValue::from_static("443"));
        h.insert(FORWARDED, HeaderValue::from_static("for=203.0.113.7;proto=https"));
        h
    }

    fn all(h: &HeaderMap, name: &HeaderName) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn trusted_peer_keeps_what_it_says_and_is_appended() {
        let mut h = forged();
        rewrite(&mut h, true, &PEER, &PORT);
        assert_eq!(all(&h, &X_FORWARDED_PROTO), ["https"]);
        assert_eq!(
            all(&h, &X_FORWARDED_FOR),
            ["203.0.113.7, 198.51.100.2, 192.0.2.1, 10.0.1.5"]
        );
        assert_eq!(all(&h, &X_FORWARDED_HOST), ["evil.example"]);
        assert_eq!(all(&h, &X_FORWARDED_PORT), ["443"]);
        assert_eq!(all(&h, &FORWARDED), ["for=203.0.113.7;proto=https"]);
    }

    #[test]
    fn trusted_peer_without_forwarded_headers_gets_the_fronts() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static(" "));
        rewrite(&mut h, true, &PEER, &PORT);
        assert_eq!(all(&h, &X_FORWARDED_FOR), ["10.0.1.5"]);
        assert_eq!(all(&h, &X_FORWARDED_PROTO), ["http"]);
        assert_eq!(all(&h, &X_FORWARDED_HOST), ["shop.example"]);
        assert_eq!(all(&h, &X_FORWARDED_PORT), ["80"]);
        assert!(!h.contains_key(FORWARDED));
    }

    #[test]
    fn untrusted_peer_cannot_forge_any() {
        let mut h = forged();
        rewrite(&mut h, false, &PEER, &PORT);
        assert_eq!(all(&h, &X_FORWARDED_PROTO), ["http"]);
        assert_eq!(all(&h, &X_FORWARDED_FOR), ["10.0.1.5"]);
        assert_eq!(all(&h, &X_FORWARDED_HOST), ["shop.example"]);
        assert_eq!(all(&h, &X_FORWARDED_PORT), ["80"]);
        assert!(!h.contains_key(FORWARDED));
        // Without a Host, no X-Forwarded-Host at all.
        let mut h = forged();
        h.remove(header::HOST);
        rewrite(&mut h, false, &PEER, &PORT);
        assert!(!h.contains_key(X_FORWARDED_HOST));
    }
}
