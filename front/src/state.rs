//! State shared by the coordinator, the accept loops, every connection task
//! and the control channel: identity, drain phase ([`handoff_drain`]'s
//! [`Phase`]), open connections, the router.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use handoff_drain::Open;
use handoff_drain::Phase;
use hyper::header::HeaderValue;
use tokio::sync::watch;

use crate::cidr::{self, Cidr};
use crate::config::{Config, Upstream};
use crate::route::{Route, Router};

/// Everything tasks need.
#[derive(Debug)]
pub struct Shared {
    /// `--id`.
    pub id: String,
    /// `--id` as a header value (`X-Handoff-Front`).
    pub h_id: HeaderValue,
    /// Where requests go.
    pub router: Router,
    /// Drain phase (the drain contract, [`handoff_drain`]); change it with [`Shared::set_phase`].
    pub phase: watch::Sender<Phase>,
    /// Whether the phase is still `Serving` (read on every request without a lock).
    serving: AtomicBool,
    open: watch::Sender<Open>,
    /// Connections accepted over the life of the process.
    pub connections: AtomicU64,
    /// Whether "no release is routed yet" was logged.
    pub no_route_logged: AtomicBool,
    /// `--header-read-timeout-ms`.
    pub header_read_timeout: Duration,
    /// `--idle-timeout-ms`.
    pub idle_timeout: Duration,
    /// `--max-header-bytes`.
    pub max_header_bytes: usize,
    /// `--ws-close-timeout-ms`.
    pub ws_close_timeout: Duration,
    /// `--ws-close-rate`.
    pub ws_close_rate: u64,
    /// The spread of the WebSocket closes of the front's own drain.
    pub ws_turns: handoff_drain::WsTurns,
    /// `--connect-timeout-ms`.
    pub connect_timeout: Duration,
    /// Requests being handled (the drain announces its idle hold when none is).
    pub busy: handoff_drain::BusyCounter,
    /// `--trusted-proxies`.
    pub trusted_proxies: Vec<Cidr>,
}

impl Shared {
    /// Shared state for a run routed to `route` (if any).
    pub fn new(config: &Config, route: Option<Route>) -> Arc<Self> {
        let clean: String = config
            .id
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect();
        Arc::new(Self {
            id: config.id.clone(),
            h_id: HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("?")),
            router: Router::new(route, config.connect_timeout(), config.upstream == Upstream::H2c),
            phase: watch::Sender::new(Phase::Serving),
            serving: AtomicBool::new(true),
            open: watch::Sender::new(Open::default()),
            connections: AtomicU64::new(0),
            no_route_logged: AtomicBool::new(false),
            header_read_timeout: config.header_read_timeout(),
            idle_timeout: config.idle_timeout(),
            max_header_bytes: config.max_header_bytes,
            ws_close_timeout: config.ws_close_timeout(),
            ws_close_rate: config.ws_close_rate,
            ws_turns: Default::default(),
            connect_timeout: config.connect_timeout(),
            busy: Default::default(),
            trusted_proxies: config.trusted_proxies.clone(),
        })
    }

    /// Whether a client at `ip` is a trusted proxy (`--trusted-proxies`).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        cidr::any_contains(&self.trusted_proxies, ip)
    }

    /// Moves to the next drain phase.
    pub fn set_phase(&self, phase: Phase) {
        self.serving.store(phase.is_serving(), Ordering::SeqCst);
        self.phase.send_replace(phase);
    }

    /// Whether the phase is `Serving` (cheap: no lock).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Resolves once the phase satisfies `pred` (at once if it already does).
    pub async fn wait_phase(&self, pred: impl Fn(&Phase) -> bool) -> Phase {
        let mut rx = self.phase.subscribe();
        match rx.wait_for(|p| pred(p)).await {
            Ok(p) => *p,
            Err(_) => Phase::Abort,
        }
    }

    /// Counts an open HTTP connection (`ws == false`) or WebSocket until dropped.
    pub fn open_guard(self: &Arc<Self>, ws: bool) -> OpenGuard {
        self.open
            .send_modify(|o| if ws { o.ws += 1 } else { o.http += 1 });
        OpenGuard {
            shared: self.clone(),
            ws,
        }
    }

    /// What is open now.
    pub fn open(&self) -> Open {
        *self.open.borrow()
    }

    /// Subscribes to changes of [`Shared::open`].
    pub fn subscribe_open(&self) -> watch::Receiver<Open> {
        self.open.subscribe()
    }

    /// Counts an accepted connection.
    pub fn count_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps a connection counted as open.
#[derive(Debug)]
pub struct OpenGuard {
    shared: Arc<Shared>,
    ws: bool,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let ws = self.ws;
        self.shared
            .open
            .send_modify(|o| if ws { o.ws -= 1 } else { o.http -= 1 });
    }
}

impl handoff_drain::Draining for Shared {
    fn set_phase(&self, phase: Phase) {
        Shared::set_phase(self, phase);
    }

    fn open(&self) -> Open {
        Shared::open(self)
    }

    fn subscribe_open(&self) -> watch::Receiver<Open> {
        Shared::subscribe_open(self)
    }

    fn busy(&self) -> usize {
        self.busy.get()
    }

    fn ws_turns(&self) -> &handoff_drain::WsTurns {
        &self.ws_turns
    }
}
