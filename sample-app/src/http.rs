//! HTTP: one hyper `http1` connection per accepted socket, the routes, and the
//! per-connection part of the drain protocol.
//!
//! Each connection task owns its `hyper::server::conn::http1` connection, so it
//! decides when `graceful_shutdown` is called:
//!
//! * while [`Phase::Serving`] or [`Phase::LameDuck`]: never (in lame duck, the
//!   routes add `Connection: close`, and hyper closes after that response);
//! * at [`Phase::Closing`]: once the idle keep-alive hold has run out (until
//!   then the connection ends by itself: its next request is answered with
//!   `Connection: close`), and not before the client has sent at least one byte
//!   or the first-request grace has run out. hyper closes a connection from
//!   which it has not read a byte, even if the request is already waiting in
//!   the kernel buffer, and the client then sees a reset. [`FirstRead`] tells
//!   us when the first byte was read. Closing an idle keep-alive connection
//!   races with the request its client may be sending: a load balancer that
//!   pools connections (HAProxy, ALB) then fails that request.
//! * at [`Phase::Abort`]: the task is dropped, and the socket with it.
//!
//! An idle keep-alive connection is kept for [`KEEP_ALIVE_IDLE`] (75 s), longer than a
//! balancer keeps its own idle pooled connections (the ALB: 60 s), so that the balancer
//! is always the one to close it. hyper's `header_read_timeout` (30 s by default) also
//! runs while a kept-alive connection waits for its next request, so it is that timeout
//! that we set: it then bounds both an idle connection and a slow request head.
//!
//! [`Phase::Serving`]: crate::state::Phase::Serving
//! [`Phase::LameDuck`]: crate::state::Phase::LameDuck
//! [`Phase::Closing`]: crate::state::Phase::Closing
//! [`Phase::Abort`]: crate::state::Phase::Abort

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::{debug, trace};

pub use handoff_drain::{FirstRead, first_read};

use crate::state::{Body, Phase, Shared, Stats, body, text};
use crate::ws;

/// Longest `?sleep_ms=` honoured.
pub const MAX_SLEEP_MS: u64 = 600_000;

/// Serves one accepted connection in its own task, counted by the tracker
/// until it ends.
pub(crate) fn spawn_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let guard = shared.tracker.http();
    Stats::inc(&shared.stats.connections);
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let _guard = guard;
        tokio::select! {
            () = serve_connection(stream, peer, shared.clone()) => {}
            () = shared.wait_abort() => debug!(%peer, "drain timeout: dropping connection"),
        }
    });
}

/// How long an idle keep-alive connection is kept: past a balancer's idle timeout (the
/// ALB's is 60 s), so that a request the balancer sends on it never meets our close.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let (first_tx, mut first_rx) = oneshot::channel();
    let io = TokioIo::new(first_read(stream, first_tx));
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| handle(req, shared.clone()))
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(KEEP_ALIVE_IDLE)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);

    let phase = tokio::select! {
        res = conn.as_mut() => return finished(peer, res),
        phase = shared.wait_phase(Phase::is_closing) => phase,
    };
    let (grace_until, idle_until) = match phase {
        Phase::Closing {
            grace_until,
            idle_until,
        } => (grace_until, idle_until),
        _ => (tokio::time::Instant::now(), tokio::time::Instant::now()),
    };
    // First-request grace: don't let hyper close a connection whose first
    // request may already be on its way.
    if matches!(first_rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
        trace!(%peer, "closing: waiting for the first request (grace)");
        tokio::select! {
            res = conn.as_mut() => return finished(peer, res),
            _ = &mut first_rx => {}
            () = tokio::time::sleep_until(grace_until) => {}
        }
    }
    // Idle keep-alive hold: the connection ends by itself when the client sends its next
    // request (answered with `Connection: close`) or closes it; we close it only after
    // the hold. A request in flight meanwhile finishes the same way.
    tokio::select! {
        res = conn.as_mut() => return finished(peer, res),
        () = tokio::time::sleep_until(idle_until) => {}
    }
    trace!(%peer, "graceful shutdown");
    conn.as_mut().graceful_shutdown();
    finished(peer, conn.await);
}

fn finished(peer: SocketAddr, res: hyper::Result<()>) {
    match res {
        Ok(()) => trace!(%peer, "connection closed"),
        Err(e) => debug!(%peer, "connection error: {e}"),
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    Stats::inc(&shared.stats.requests);
    let _busy = shared.tracker.request();
    let mut resp = route(req, &shared).await;
    let upgrading = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let id = &shared.identity;
    let h = resp.headers_mut();
    h.insert("x-release", id.h_release.clone());
    h.insert("x-instance", id.h_instance.clone());
    h.insert("x-pid", id.h_pid.clone());
    // Lame duck: decided when the response is ready, so a request that was in
    // flight at SIGTERM also tells its client to leave.
    if !shared.phase().is_serving() && !upgrading {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

async fn route(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let path = req.uri().path();
    if !matches!(path, "/" | "/healthz" | "/version" | "/ws") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if shared.hang {
        std::future::pending::<()>().await;
    }
    if shared.broken {
        return text(StatusCode::SERVICE_UNAVAILABLE, "broken\n");
    }
    match path {
        "/" => {
            match sleep_ms(req.uri().query()) {
                Ok(0) => {}
                Ok(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            }
            body(StatusCode::OK, shared.identity.body.clone())
        }
        "/healthz" => {
            // Draining is healthy: the health path speaks for the host, which the next
            // instance serves, and a load balancer's check must never fail during a switch.
            if shared.is_unhealthy() {
                text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        "/version" => body(
            StatusCode::OK,
            Bytes::from(format!("{}\n", shared.identity.release)),
        ),
        _ => ws::upgrade(req, shared),
    }
}

/// Parses `sleep_ms=N` from a query string (0 when absent).
fn sleep_ms(query: Option<&str>) -> Result<u64, &'static str> {
    let Some(q) = query else { return Ok(0) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("sleep_ms=") {
            return v
                .parse::<u64>()
                .map(|ms| ms.min(MAX_SLEEP_MS))
                .map_err(|_| "sleep_ms must be a number of milliseconds\n");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_ms_query() {
        assert_eq!(sleep_ms(None), Ok(0));
        assert_eq!(sleep_ms(Some("a=1")), Ok(0));
        assert_eq!(sleep_ms(Some("a=1&sleep_ms=25")), Ok(25));
        assert_eq!(sleep_ms(Some("sleep_ms=99999999")), Ok(MAX_SLEEP_MS));
        assert!(sleep_ms(Some("sleep_ms=x")).is_err());
    }
}
