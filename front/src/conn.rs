//! Client connections: the accept loop (bounded by `--max-connections`), one
//! hyper `http1` connection per socket, its timeouts, and the per-connection
//! part of the own drain.
//!
//! Timeouts are kept here rather than with hyper's `header_read_timeout`:
//! hyper (1.12) starts that timer whenever it waits for a head, including on
//! an idle keep-alive connection right after a response, so it would close
//! idle keep-alive connections after the *header* timeout. Instead a thin
//! wrapper around the socket ([`OnRead`]) notes the first byte of a new
//! request head, the service notes when a head was complete (the handler
//! runs) and when its response ended, and a watchdog in the connection task
//! applies:
//!
//! * `--header-read-timeout-ms` from the connection's start, or from the
//!   first byte of a later request, until the head is complete (slowloris):
//!   the connection is dropped;
//! * `--idle-timeout-ms` between requests on a keep-alive connection:
//!   `graceful_shutdown()`.
//!
//! Drain (the drain contract, [`handoff_drain`]: [`Phase`]): nothing changes in lame duck
//! (the proxy adds `Connection: close` to responses); at `Closing`, a
//! connection that has not sent a byte gets the first-request grace, then
//! `graceful_shutdown()` lets an in-flight request finish; at `Abort` the
//! task is dropped with the socket.

use std::net::SocketAddr;
use std::sync::Arc;

use handoff_drain::{FirstByte, OnRead, Phase};
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, trace};

use crate::client::{ConnInfo, Due};
use crate::proxy;
use crate::state::Shared;

/// Accepts connections until the drain begins ([`handoff_drain::accept_until_drain`]), then
/// drops (closes) the listener. At most `limit` connections are open at once: beyond, it stops
/// accepting until one closes, and new connections wait in the kernel queue.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    started: oneshot::Sender<()>,
) {
    let port = HeaderValue::from(listener.local_addr().map_or(0, |a| a.port()));
    let phase = shared.phase.subscribe();
    handoff_drain::accept_until_drain(listener, phase, limit, started, move |stream, peer, permit| {
        spawn_connection(stream, peer, port.clone(), shared.clone(), permit)
    })
    .await;
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    port: HeaderValue,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let guard = shared.open_guard(false);
    shared.count_connection();
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let _guard = guard;
        tokio::select! {
            () = serve(stream, peer, port, shared.clone(), permit) => {}
            _ = shared.wait_phase(Phase::is_abort) => debug!(%peer, "drain timeout: dropping connection"),
        }
    });
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    port: HeaderValue,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let info = Arc::new(ConnInfo::new(peer, shared.is_trusted(peer.ip()), port, permit));
    match crate::h2c::prior_knowledge(&stream, &shared).await {
        None => return trace!(%peer, "no request in time: closing"),
        // Boxed: the HTTP/2 connection's state is large, and every HTTP/1 connection's task
        // would reserve room for it.
        Some(true) => return Box::pin(serve_h2(stream, peer, info, shared)).await,
        Some(false) => {}
    }
    let (first_tx, mut first_rx) = oneshot::channel();
    // One pass-through for both: the timeouts' note of every read, the drain's first byte.
    let io = TokioIo::new(OnRead::new(stream, {
        let (info, mut first) = (info.clone(), FirstByte::new(first_tx));
        move || {
            info.activity.bytes_read();
            first.fire();
        }
    }));
    let svc = service(shared.clone(), info.clone());
    let conn = http1::Builder::new()
        // Flattened writes (head and small bodies copied into one buffer, one
        // write): less CPU per request than writev here, by measurement.
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_header_size(shared.max_header_bytes)
        .max_buf_size(shared.max_header_bytes.max(8192) + 8192)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);

    let phase = match watch(conn.as_mut(), &info, &shared).await {
        Watched::Ended(res) => return finished(peer, res),
        Watched::HeaderTimeout => {
            return debug!(%peer, "request head not complete within the header read timeout: closing");
        }
        Watched::IdleTimeout => {
            trace!(%peer, "idle timeout: closing");
            conn.as_mut().graceful_shutdown();
            return finished(peer, conn.await);
        }
        Watched::Closing(phase) => phase,
    };
    let (grace_until, idle_until) = match phase {
        Phase::Closing {
            grace_until,
            idle_until,
        } => (grace_until, idle_until),
        _ => (Instant::now(), Instant::now()),
    };
    if matches!(first_rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
        trace!(%peer, "closing: waiting for the first request (grace)");
        tokio::select! {
            res = conn.as_mut() => return finished(peer, res),
            _ = &mut first_rx => {}
            () = sleep_until(grace_until) => {}
        }
    }
    // Idle keep-alive hold (see handoff_drain and sample_app::http): the connection ends by itself with its
    // client's next request, answered with `Connection: close`, or the client's close.
    tokio::select! {
        res = conn.as_mut() => return finished(peer, res),
        () = sleep_until(idle_until) => {}
    }
    trace!(%peer, "graceful shutdown");
    conn.as_mut().graceful_shutdown();
    finished(peer, conn.await);
}

/// The proxy as a hyper service for one connection's requests.
fn service(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::route::ProxyBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<crate::route::ProxyBody>, std::convert::Infallible>>
             + Send,
> + Clone {
    service_fn(move |req| {
        let busy = shared.busy.enter();
        let handled = proxy::handle(req, shared.clone(), info.clone());
        async move {
            let resp = handled.await;
            drop(busy);
            resp
        }
    })
}

/// An HTTP/2 client connection ([`crate::h2c`]): its streams are its requests. The header
/// read timeout bounds the wait for the first one, the idle timeout the time between them
/// (then GOAWAY); the front's drain sends GOAWAY at once, and the streams in flight finish.
async fn serve_h2(stream: TcpStream, peer: SocketAddr, info: Arc<ConnInfo>, shared: Arc<Shared>) {
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(shared.max_header_bytes).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(stream), service(shared.clone(), info.clone()));
    tokio::pin!(conn);
    match watch(conn.as_mut(), &info, &shared).await {
        Watched::Ended(res) => return finished(peer, res),
        Watched::HeaderTimeout => {
            return debug!(%peer, "HTTP/2: no request within the header read timeout: closing");
        }
        Watched::IdleTimeout => trace!(%peer, "HTTP/2 idle timeout: GOAWAY"),
        Watched::Closing(_) => {}
    }
    conn.as_mut().graceful_shutdown();
    finished(peer, conn.await);
}

/// How [`watch`] ended.
enum Watched {
    /// The connection ended by itself.
    Ended(hyper::Result<()>),
    /// A request head (or, over HTTP/2, the first request) did not come in time: drop it.
    HeaderTimeout,
    /// Idle for the idle timeout: shut it down gracefully.
    IdleTimeout,
    /// The front's drain reached its closing phase.
    Closing(Phase),
}

/// Serves `conn` (HTTP/1 or HTTP/2) while watching its header and idle timeouts, until one of
/// them is due, the connection ends or the drain closes connections.
///
/// The timer is always set no later than any deadline that can be in force when it fires:
/// exactly at a request head's deadline; while idle, at the idle deadline but at most a header
/// timeout ahead (a head may begin any time); while a request runs, a header or idle timeout
/// ahead. So request starts and ends need not wake this loop.
async fn watch<C>(mut conn: std::pin::Pin<&mut C>, info: &ConnInfo, shared: &Shared) -> Watched
where
    C: Future<Output = hyper::Result<()>>,
{
    let (header, idle) = (shared.header_read_timeout, shared.idle_timeout);
    let closing = shared.wait_phase(Phase::is_closing);
    tokio::pin!(closing);
    let timer = sleep_until(Instant::now() + header);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            res = conn.as_mut() => return Watched::Ended(res),
            phase = &mut closing => return Watched::Closing(phase),
            () = timer.as_mut() => {
                let now = Instant::now();
                match info.activity.due(header, idle) {
                    Some((t, Due::Header)) if t <= now => return Watched::HeaderTimeout,
                    Some((t, Due::Idle)) if t <= now => return Watched::IdleTimeout,
                    Some((t, Due::Header)) => timer.as_mut().reset(t),
                    Some((t, Due::Idle)) => timer.as_mut().reset(t.min(now + header)),
                    None => timer.as_mut().reset(now + header.min(idle)),
                }
            }
        }
    }
}

fn finished(peer: SocketAddr, res: hyper::Result<()>) {
    match res {
        Ok(()) => trace!(%peer, "connection closed"),
        Err(e) => debug!(%peer, "connection error: {e}"),
    }
}
