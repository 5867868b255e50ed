//! What the front knows about one client connection, shared by the connection task
//! ([`crate::conn`]), the proxy and the WebSocket relay: its peer and port as header values,
//! whether it is a trusted proxy, and its request timing ([`Activity`]) for the timeouts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::HeaderValue;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// A client connection, as the proxy sees it.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Its IP as an `X-Forwarded-For` value.
    pub xff: HeaderValue,
    /// Whether the peer is in `--trusted-proxies` (decided once, at accept).
    pub trusted: bool,
    /// The port it connected to, as an `X-Forwarded-Port` value.
    pub port: HeaderValue,
    /// Request timing, for the timeouts.
    pub activity: Activity,
    /// `--max-connections` slot: held while anything (the HTTP connection or
    /// a WebSocket relayed over it) still uses the connection.
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug)]
struct ActState {
    /// Requests whose head was read and whose response has not ended.
    active: usize,
    /// When the current, incomplete request head began (connection start for the first).
    head_since: Option<Instant>,
    /// When the connection last became idle.
    idle_since: Instant,
}

/// Request timing of one connection.
///
/// Nothing is signalled when it changes: the watchdog re-checks at a time no
/// later than any deadline that may have come into force meanwhile (see
/// [`crate::conn`]).
#[derive(Debug)]
pub struct Activity {
    state: Mutex<ActState>,
}

pub(crate) enum Due {
    Header,
    Idle,
}

impl Activity {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(ActState {
                active: 0,
                head_since: Some(now),
                idle_since: now,
            }),
        }
    }

    pub(crate) fn bytes_read(&self) {
        let mut s = self.state.lock().expect("activity lock");
        if s.active == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
        }
    }

    pub(crate) fn due(&self, header: Duration, idle: Duration) -> Option<(Instant, Due)> {
        let s = self.state.lock().expect("activity lock");
        if s.active > 0 {
            None
        } else if let Some(t) = s.head_since {
            Some((t + header, Due::Header))
        } else {
            Some((s.idle_since + idle, Due::Idle))
        }
    }
}

impl ConnInfo {
    /// A connection from `peer` to `port`, holding its `--max-connections` slot.
    pub fn new(peer: SocketAddr, trusted: bool, port: HeaderValue, permit: OwnedSemaphorePermit) -> Self {
        Self {
            peer,
            xff: HeaderValue::from_str(&peer.ip().to_canonical().to_string())
                .expect("an IP is a valid header value"),
            trusted,
            port,
            activity: Activity::new(),
            _permit: permit,
        }
    }

    /// A request head was complete: the handler runs. The returned guard marks
    /// the end of the request (drop it once the response has been sent).
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        {
            let mut s = self.activity.state.lock().expect("activity lock");
            s.active += 1;
            s.head_since = None;
        }
        RequestGuard(self.clone())
    }
}

/// Marks the end of a request when dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnInfo>);

impl RequestGuard {
    /// The connection the request came on.
    pub fn conn(&self) -> &ConnInfo {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut s = self.0.activity.state.lock().expect("activity lock");
        s.active -= 1;
        s.idle_since = Instant::now();
    }
}
