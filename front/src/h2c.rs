//! HTTP/2 without TLS (h2c, with prior knowledge), for gRPC and other HTTP/2 apps.
//!
//! * **Clients**: a connection whose first bytes are the HTTP/2 preface (`PRI * HTTP/2.0`, a
//!   method no HTTP/1 request has) is served as HTTP/2 ([`prior_knowledge`] decides from the
//!   bytes waiting in the socket, without reading them). Any client may use it, whatever the
//!   app speaks: the front translates.
//! * **Releases** (`--upstream h2c`, deploy.yml `front.upstream: h2c`): each worker thread keeps
//!   one multiplexed connection to the release ([`Conns`]); a request takes a stream on it, and a
//!   closed one is replaced by the next request. `TE: trailers` reaches the release (gRPC needs
//!   it) and the release's trailers reach the client.
//! * **Drain**: a switch stops giving the old release new streams and waits for the open ones
//!   (they count in flight like HTTP/1 requests), then drops its connections, which close once
//!   their last stream has ended. The front's own drain sends a client connection GOAWAY
//!   (hyper's graceful shutdown: first at the highest stream id, then at the last one once a
//!   ping has gone round), so no stream is refused or reset; the client opens its next
//!   connection on the socket the next front serves.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use handoff_drain::Phase;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::debug;

use crate::route::{self, ProxyBody, UpstreamError};
use crate::state::Shared;

/// A stream handle on one HTTP/2 connection to a release.
pub type H2Sender = http2::SendRequest<ProxyBody>;

/// The first bytes of every HTTP/2 connection with prior knowledge (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client starts with the HTTP/2 preface: `Some(true)` for HTTP/2, `Some(false)`
/// for HTTP/1; `None` when it sent nothing before the header read timeout (counted from the
/// connection's start, as for an HTTP/1 head), closed, or sent nothing within the first-request
/// grace of the front's drain: the connection is to be closed, as an HTTP/1 one would be.
pub async fn prior_knowledge(stream: &TcpStream, shared: &Shared) -> Option<bool> {
    let mut until = Instant::now() + shared.header_read_timeout;
    let closing = shared.wait_phase(|p| p.is_closing() || p.is_abort());
    tokio::pin!(closing);
    let mut draining = false;
    let mut buf = [0u8; 4];
    loop {
        tokio::select! {
            biased;
            phase = &mut closing, if !draining => {
                draining = true;
                match phase {
                    Phase::Closing { grace_until, .. } => until = until.min(grace_until),
                    _ => return None,
                }
            }
            () = sleep_until(until) => return None,
            peeked = stream.peek(&mut buf) => {
                let n = match peeked {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => n,
                };
                if buf[..n] != PREFACE[..n] {
                    return Some(false);
                }
                if n == buf.len() {
                    return Some(true);
                }
                // "P" or "PR" so far (POST, PUT, PATCH and PROPFIND begin so too): the rest of
                // the first segment is on its way; peeking again at once would see the same.
                sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Opens an HTTP/2 connection to a release (TCP_NODELAY, `timeout` to connect) and spawns the
/// task that drives it.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<H2Sender, UpstreamError> {
    let stream = route::tcp(addr, timeout).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!("upstream HTTP/2 connection: {e}");
        }
    });
    Ok(sender)
}

/// One HTTP/2 connection to a release per worker thread (see the module documentation).
#[derive(Debug)]
pub struct Conns {
    per_worker: Box<[Mutex<Option<H2Sender>>]>,
}

impl Conns {
    /// None yet, for `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        Self {
            per_worker: (0..workers.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn mine(&self) -> &Mutex<Option<H2Sender>> {
        &self.per_worker[route::worker_index() % self.per_worker.len()]
    }

    /// This worker's connection, unless it has closed.
    pub fn checkout(&self) -> Option<H2Sender> {
        let mut mine = self.mine().lock().expect("h2c lock");
        match &*mine {
            Some(s) if !s.is_closed() => Some(s.clone()),
            _ => {
                *mine = None;
                None
            }
        }
    }

    /// Makes `sender` this worker's connection; returns it.
    pub fn keep(&self, sender: H2Sender) -> H2Sender {
        *self.mine().lock().expect("h2c lock") = Some(sender.clone());
        sender
    }

    /// Drops every connection: each closes once its last stream has ended.
    pub fn close(&self) {
        for c in &self.per_worker {
            c.lock().expect("h2c lock").take();
        }
    }
}
