//! Request forwarding: headers, the one retry, errors.
//!
//! * The request is routed to the current upstream ([`crate::route::Router::acquire`]) and
//!   counted in flight until its response body has been sent (or dropped).
//! * Bodies stream both ways: the client's `Incoming` goes upstream as it
//!   arrives, the upstream's `Incoming` comes back as it arrives. If the
//!   upstream fails mid-response, the body errors and hyper closes the client
//!   connection (no fake success).
//! * Hop-by-hop headers are removed both ways ([`crate::headers`]), except that a WebSocket
//!   upgrade keeps `Connection: upgrade` + `Upgrade`. `X-Forwarded-For`, `-Proto`, `-Host`,
//!   `-Port` and `Forwarded`: see [`crate::forwarded`] (kept and appended to
//!   from a `--trusted-proxies` peer, replaced from any other).
//!   Client-sent `X-Handoff-*` headers never reach the upstream (nor
//!   upstream-sent ones the client); `X-Handoff-Probe` makes the response
//!   carry `X-Handoff-Front: <id>` and `X-Handoff-Release: <release>`.
//! * Framing: hyper (1.12) itself answers 400 to conflicting `Content-Length`
//!   headers; a request with both `Content-Length` and `Transfer-Encoding`
//!   is parsed as chunked with the `Content-Length` removed and the
//!   connection closed after the response (RFC 9112 §6.1), so the upstream
//!   never sees both. A `Content-Length` list that reaches the handler
//!   (`5, 5`) or both headers together are refused here with 400 and
//!   `Connection: close`.
//! * Retry: a request that failed before any byte of the response head came
//!   back (connect refused/reset, connection closed before the head) is sent
//!   once more on a fresh connection if its method is idempotent and it has
//!   no body. Nothing else is ever replayed. (A request that never left,
//!   because its pooled connection had closed before hyper took it, goes out
//!   on a new connection whatever its method: that is not a replay.)
//! * Cost: a request is served on the thread (runtime) that accepted its
//!   client connection, with upstream connections of that thread's pool; only
//!   a retryable request keeps a copy of its head; header rewriting allocates
//!   nothing in the usual case (no hop-by-hop or `X-Handoff-*` header, no
//!   prior `X-Forwarded-For` from a trusted proxy).
//! * HTTP/2 ([`crate::h2c`]): a client's HTTP/2 request goes to an HTTP/1.1 release with its
//!   authority as `Host`, and to an h2c release (`--upstream h2c`) with `Host` as its
//!   authority and `TE: trailers` kept; the response goes back in the client's own version,
//!   trailers included. WebSockets are relayed to HTTP/1.1 releases only (else 501).
//! * Errors: `502` with a short body and a `warn!` naming release, address and
//!   cause; no route yet: `503 no release is routed yet`.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tracing::{debug, info, warn};

use crate::access_log;
use crate::client::{ConnInfo, RequestGuard};
use crate::h2c;
use crate::headers::{H_FRONT, H_PROBE, H_RELEASE, has_token, strip_handoff, strip_hop_by_hop};
use crate::metrics::{self, Cause, ReleaseStats};
use crate::route::{self, InFlight, Pool, ProxyBody, Sender, Upstream, UpstreamError};
use crate::state::Shared;
use crate::{forwarded, ws};

/// A short plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The hyper service: one client request.
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
) -> Result<Response<ProxyBody>, Infallible> {
    let request_guard = conn.request_started();
    let probe = req.headers().contains_key(H_PROBE);
    let mut seen = Some(Seen::new(&req));
    let h2_client = req.version() == Version::HTTP_2;
    let (mut resp, upstream) = route(req, &shared, &conn, request_guard, &mut seen).await;
    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    if probe {
        h.insert(H_FRONT, shared.h_id.clone());
        if let Some(r) = upstream
            .as_ref()
            .and_then(|u| HeaderValue::from_str(&u.release).ok())
        {
            h.insert(H_RELEASE, r);
        }
    }
    // Lame duck (own drain): clients leave after this response (an HTTP/2 client is sent
    // GOAWAY instead, when the drain closes its connection).
    if !shared.is_serving() && !upgraded && !h2_client {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // Answered here (an error, a WebSocket's 101): counted now; a relayed body counts at its end.
    if let Some(seen) = seen {
        let bytes = resp.body().size_hint().exact().unwrap_or(0);
        let (release, stats) = match &upstream {
            Some(u) => (u.release.as_str(), &*u.stats),
            None => ("", &shared.router.stats.unrouted),
        };
        seen.done(&conn, release, stats, resp.status(), bytes, false);
    }
    Ok(resp)
}

/// What the metrics and the access log need of a request until its response has ended.
struct Seen {
    start: Instant,
    method: Method,
    uri: Uri,
}

impl Seen {
    fn new(req: &Request<Incoming>) -> Self {
        Self {
            start: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
        }
    }

    /// Counts the request under its release and logs it.
    #[allow(clippy::too_many_arguments)]
    fn done(
        self,
        conn: &ConnInfo,
        release: &str,
        stats: &ReleaseStats,
        status: StatusCode,
        bytes: u64,
        aborted: bool,
    ) {
        let took = self.start.elapsed();
        stats.record(metrics::method_index(&self.method), status, took);
        if access_log::enabled() {
            access_log::log(&access_log::Entry {
                client: conn.peer.ip(),
                method: self.method.as_str(),
                path: self.uri.path(),
                status: status.as_u16(),
                bytes,
                took,
                release,
                aborted,
            });
        }
    }
}

/// Smuggling guard: ambiguous framing that reached the handler.
fn ambiguous_framing(headers: &HeaderMap) -> bool {
    let cl: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    cl.len() > 1
        || cl.iter().any(|v| v.as_bytes().contains(&b','))
        || (!cl.is_empty() && headers.contains_key(header::TRANSFER_ENCODING))
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn without_body(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    let cl_zero_or_none = match h.get(header::CONTENT_LENGTH) {
        None => true,
        Some(v) => v.as_bytes() == b"0",
    };
    cl_zero_or_none && !h.contains_key(header::TRANSFER_ENCODING) && req.body().is_end_stream()
}

async fn route(
    mut req: Request<Incoming>,
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    request_guard: RequestGuard,
    seen: &mut Option<Seen>,
) -> (Response<ProxyBody>, Option<Arc<Upstream>>) {
    if ambiguous_framing(req.headers()) {
        debug!(peer = %conn.peer, "ambiguous Content-Length/Transfer-Encoding: 400");
        let mut r = text(
            StatusCode::BAD_REQUEST,
            "bad request: ambiguous message framing\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return (r, None);
    }
    if req.method() == Method::CONNECT {
        return (
            text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n"),
            None,
        );
    }
    let Some(acq) = shared.router.acquire() else {
        if !shared.no_route_logged.swap(true, Ordering::Relaxed) {
            info!("no release is routed yet: answering 503 until a `route` command arrives");
        }
        return (
            text(StatusCode::SERVICE_UNAVAILABLE, "no release is routed yet\n"),
            None,
        );
    };
    let upstream = Some(acq.upstream.clone());
    let websocket = ws::is_websocket_upgrade(&req);
    let h2c = acq.pool.h2c.is_some();
    if websocket && h2c {
        return (
            text(
                StatusCode::NOT_IMPLEMENTED,
                "WebSockets are relayed only to releases that speak HTTP/1.1 (front.upstream: http1)\n",
            ),
            upstream,
        );
    }
    let retryable = idempotent(req.method()) && without_body(&req);
    let on_client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let client_version = parts.version;
    let mut headers = parts.headers;
    // gRPC needs `TE: trailers` on the way to the release, which the front honours: it relays
    // trailers.
    let te_trailers = h2c && has_token(&headers, &header::TE, "trailers");
    strip_hop_by_hop(&mut headers, websocket);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    strip_handoff(&mut headers);
    if websocket {
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    forwarded::rewrite(&mut headers, conn.trusted, &conn.xff, &conn.port);
    if !headers.contains_key(header::HOST) {
        // An HTTP/2 client names the host in the request's authority.
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| acq.pool.host.clone());
        headers.insert(header::HOST, host);
    }
    // Origin form (`/path?query`); `*` (OPTIONS) and absolute-form targets are rewritten.
    let uri = match parts.uri.path_and_query().map(|p| p.as_str()) {
        Some(pq) if parts.uri.scheme().is_none() && parts.uri.authority().is_none() && pq != "*" => parts.uri,
        pq => {
            let pq = match pq {
                None | Some("*") => "/",
                Some(pq) => pq,
            };
            match Uri::builder().path_and_query(pq).build() {
                Ok(u) => u,
                Err(_) => return (text(StatusCode::BAD_REQUEST, "bad request target\n"), upstream),
            }
        }
    };
    // HTTP/2 to the release: the host goes in the authority, the Host header goes.
    let (uri, version) = if h2c {
        let host = headers.remove(header::HOST).expect("set above");
        let absolute = Uri::builder()
            .scheme("http")
            .authority(host.as_bytes())
            .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
            .build();
        match absolute {
            Ok(u) => (u, Version::HTTP_2),
            Err(_) => {
                return (
                    text(StatusCode::BAD_REQUEST, "bad request: invalid Host\n"),
                    upstream,
                );
            }
        }
    } else {
        (uri, Version::HTTP_11)
    };
    let build = |method: Method, uri: Uri, headers: HeaderMap, body: ProxyBody| {
        let mut r = Request::new(body);
        *r.method_mut() = method;
        *r.uri_mut() = uri;
        *r.version_mut() = version;
        *r.headers_mut() = headers;
        r
    };
    // Only a request that may be retried keeps a copy of its head.
    let (first, again) = if retryable {
        let again = (parts.method.clone(), uri.clone(), headers.clone());
        (build(parts.method, uri, headers, empty()), Some(again))
    } else {
        (build(parts.method, uri, headers, body.boxed_unsync()), None)
    };
    let mut res = send(&acq.pool, first).await.map(|(r, s)| (r, s, true));
    if let Err(e) = &res {
        let f = classify(e, shared);
        if let Some((method, uri, headers)) = again
            && f.retry
        {
            // The attempt retried counts here; a last one that fails, in `bad_gateway`.
            if let Some(cause) = f.cause_kind {
                acq.upstream.stats.upstream_error(cause);
            }
            debug!(release = %acq.upstream.release, "{}: retrying once on a fresh connection", f.cause);
            res = send_fresh(&acq.pool, build(method, uri, headers, empty()))
                .await
                .map(|(r, s)| (r, s, false));
        }
    }
    let (mut resp, sender, pooled) = match res {
        Ok(r) => r,
        Err(e) => return (bad_gateway(&acq.upstream, &e, shared), upstream),
    };

    if websocket && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let on_upstream = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        strip_handoff(&mut parts.headers);
        if let Some(on_client) = on_client_upgrade {
            ws::spawn_relay(
                on_client,
                on_upstream,
                acq.upstream.clone(),
                shared.clone(),
                conn.clone(),
            );
        }
        drop((acq.guard, sender));
        return (Response::from_parts(parts, empty()), upstream);
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    strip_handoff(&mut parts.headers);
    parts.version = client_version;
    // The request stays counted (in flight to the upstream, active on the
    // connection) until the body has been sent or dropped; then the upstream
    // connection goes back to the pool if the response was complete.
    let status = parts.status;
    let body = Relay {
        body,
        done: false,
        seen: seen.take(),
        status,
        bytes: 0,
        back: sender.map(|s| (s, pooled.then(|| acq.pool.clone()))),
        _guards: (acq.guard, request_guard),
    }
    .boxed_unsync();
    (Response::from_parts(parts, body), upstream)
}

/// A response, and the HTTP/1.1 connection it came on (to go back to the pool).
type Sent = (Response<Incoming>, Option<Sender>);

/// Sends on an idle pooled connection (HTTP/2: on this worker's connection), or on a new one
/// if there is none or the one taken turned out closed before the request went out.
async fn send(pool: &Pool, req: Request<ProxyBody>) -> Result<Sent, UpstreamError> {
    let mut req = req;
    if let Some(h2c) = &pool.h2c {
        if let Some(mut s) = h2c.checkout() {
            match s.try_send_request(req).await {
                Ok(r) => return Ok((r, None)),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        return send_fresh(pool, req).await;
    }
    if let Some(mut s) = pool.checkout() {
        match s.try_send_request(req).await {
            Ok(r) => return Ok((r, Some(s))),
            Err(mut e) => match e.take_message() {
                Some(r) => req = r,
                None => return Err(UpstreamError::Http(e.into_error())),
            },
        }
    }
    send_fresh(pool, req).await
}

/// Sends on a new connection (HTTP/2: which becomes this worker's connection).
async fn send_fresh(pool: &Pool, req: Request<ProxyBody>) -> Result<Sent, UpstreamError> {
    if let Some(h2c) = &pool.h2c {
        let mut s = h2c.keep(h2c::connect(pool.addr, pool.connect_timeout).await?);
        return match s.try_send_request(req).await {
            Ok(r) => Ok((r, None)),
            Err(e) => Err(UpstreamError::Http(e.into_error())),
        };
    }
    let mut s = route::connect(pool.addr, pool.connect_timeout).await?;
    match s.try_send_request(req).await {
        Ok(r) => Ok((r, Some(s))),
        Err(e) => Err(UpstreamError::Http(e.into_error())),
    }
}

/// The upstream's response body on its way to the client: holds the request's
/// counters and, once complete, hands the upstream connection back to its pool.
struct Relay {
    body: Incoming,
    done: bool,
    /// Counted and logged when the body ends or is dropped.
    seen: Option<Seen>,
    status: StatusCode,
    /// Body bytes relayed.
    bytes: u64,
    back: Option<(Sender, Option<Arc<Pool>>)>,
    _guards: (InFlight, RequestGuard),
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let f = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &f {
            None => self.done = true,
            Some(Ok(frame)) => self.bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(_)) => {}
        }
        Poll::Ready(f)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let complete = self.done || self.body.is_end_stream();
        if let Some(seen) = self.seen.take() {
            let (upstream, conn) = (self._guards.0.upstream(), self._guards.1.conn());
            seen.done(
                conn,
                &upstream.release,
                &upstream.stats,
                self.status,
                self.bytes,
                !complete,
            );
        }
        if let Some((sender, Some(pool))) = self.back.take()
            && complete
        {
            pool.put(sender);
        }
    }
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|n| match n {})
        .boxed_unsync()
}

/// Why a request to an upstream failed.
struct Failure {
    /// Failed before any byte of the response head: may be retried.
    retry: bool,
    /// The release's failure, as the metrics count it (`None`: the client's).
    cause_kind: Option<Cause>,
    /// The client's own request body failed (the client went away).
    client: bool,
    cause: String,
}

fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

fn classify(e: &UpstreamError, shared: &Shared) -> Failure {
    let connect = e.is_connect();
    let e: &(dyn std::error::Error + 'static) = e;
    let io_kind = chain(e)
        .find_map(|e| e.downcast_ref::<io::Error>())
        .map(io::Error::kind);
    let hyper_err = chain(e).find_map(|e| e.downcast_ref::<hyper::Error>());
    let text = chain(e).map(|e| e.to_string()).collect::<Vec<_>>().join(": ");
    // `None`: the client's failure, not the release's.
    let f = |retry, kind: Option<Cause>, cause: String| Failure {
        retry,
        cause_kind: kind,
        client: kind.is_none(),
        cause,
    };
    if connect {
        return match io_kind {
            Some(io::ErrorKind::ConnectionRefused) => f(
                true,
                Some(Cause::Refused),
                "refused the connection: is it running? systemd restarts a crashed release".into(),
            ),
            Some(io::ErrorKind::TimedOut) => f(
                true,
                Some(Cause::ConnectTimeout),
                format!(
                    "did not accept the connection within {} ms",
                    shared.connect_timeout.as_millis()
                ),
            ),
            _ => f(
                true,
                Some(Cause::Connect),
                format!("could not be connected to ({text})"),
            ),
        };
    }
    if let Some(h) = hyper_err {
        if h.is_user() || h.is_body_write_aborted() {
            return f(
                false,
                None,
                format!("request body from the client failed ({text})"),
            );
        }
        if h.is_incomplete_message() || h.is_canceled() {
            return f(
                true,
                Some(Cause::Closed),
                "closed the connection before answering".into(),
            );
        }
        if h.is_parse() {
            return f(
                false,
                Some(Cause::Invalid),
                format!("sent an invalid response ({text})"),
            );
        }
    }
    match io_kind {
        Some(
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe,
        ) => f(
            true,
            Some(Cause::Closed),
            "reset the connection before answering".into(),
        ),
        _ => f(false, Some(Cause::Other), format!("failed ({text})")),
    }
}

fn bad_gateway(up: &Upstream, e: &UpstreamError, shared: &Shared) -> Response<ProxyBody> {
    let f = classify(e, shared);
    if let Some(cause) = f.cause_kind {
        up.stats.upstream_error(cause);
    }
    if f.client {
        debug!(release = %up.release, upstream = %up.addr, "{}", f.cause);
        return text(StatusCode::BAD_REQUEST, "bad request: request body failed\n");
    }
    warn!("release {} at {} {}", up.release, up.addr, f.cause);
    text(
        StatusCode::BAD_GATEWAY,
        "bad gateway: the release is not answering\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(!ambiguous_framing(&h));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(ambiguous_framing(&h));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
        assert!(ambiguous_framing(&h));
    }
}
