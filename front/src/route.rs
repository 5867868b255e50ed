//! Where requests go: the routes file, the current upstream, and the
//! bookkeeping that lets a switch drain the previous release.
//!
//! Each [`Upstream`] (one release on one loopback address) owns its own
//! keep-alive [`Pool`] of hyper `client::conn::http1` connections, an
//! in-flight request counter and a count of the WebSockets relayed to it. A request *acquires* the current upstream
//! under the router's lock, which increments the counter in the same critical
//! section as the read of "current": once [`Router::switch`] has returned, no
//! new request can be counted against the old upstream, so waiting for its
//! counter to reach zero is a real drain. The drain then closes the upstream's
//! pool (idle pooled connections close); connections of requests still in
//! flight are closed when those end instead of going back to the pool.
//!
//! The pool is deliberately small: a stack of idle `SendRequest`s (most
//! recently used first), each with its connection driven by a task of its
//! own. A connection goes back when its response body has ended; it is taken
//! out only once hyper says it is ready for the next request (a closed one is
//! dropped); idle ones are closed after [`POOL_IDLE_TIMEOUT`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::h2c;
use crate::metrics::{ReleaseStats, StatsBook};

/// The body type sent upstream and back to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;
/// One upstream HTTP/1.1 connection's request handle.
pub type Sender = http1::SendRequest<ProxyBody>;

/// Idle pooled upstream connections are closed after this long.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to an upstream failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// The connection could not be made (refused, timed out, ...).
    Connect(io::Error),
    /// The connection failed (handshake, request or response head).
    Http(hyper::Error),
}

impl UpstreamError {
    /// Whether connecting failed.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(_) => f.write_str("connect error"),
            Self::Http(_) => f.write_str("upstream error"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Http(e) => Some(e),
        }
    }
}

/// A TCP connection to `addr` (TCP_NODELAY), within `timeout`.
pub async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
        Err(_) => {
            return Err(UpstreamError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Opens a new HTTP/1.1 connection to `addr` (TCP_NODELAY, `timeout` to connect) and
/// spawns the task that drives it (with upgrades, for WebSockets).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, UpstreamError> {
    let stream = tcp(addr, timeout).await?;
    // Flattened writes, as toward clients (see `conn`).
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!("upstream connection: {e}");
        }
    });
    Ok(sender)
}

/// Idle connections, each with the time it became idle.
type Stack = Vec<(Sender, Instant)>;

static WORKERS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many worker threads (each with its own runtime) serve connections:
/// pools keep one stack of idle connections per worker. Set before any pool
/// is made.
pub fn set_workers(n: usize) {
    WORKERS.store(n.max(1), Ordering::Relaxed);
}

/// Marks the calling thread as worker `i` (0 by default).
pub fn set_worker_index(i: usize) {
    WORKER_INDEX.with(|w| w.set(i));
}

/// The calling thread's worker index.
pub fn worker_index() -> usize {
    WORKER_INDEX.with(std::cell::Cell::get)
}

/// Idle keep-alive connections to one upstream (see the module documentation).
/// One stack per worker thread: a connection is driven by a task on the
/// runtime that opened it and only used from there.
#[derive(Debug)]
pub struct Pool {
    /// Where they go.
    pub addr: SocketAddr,
    /// `--connect-timeout-ms`.
    pub connect_timeout: Duration,
    /// `Host` for requests that came without one.
    pub host: HeaderValue,
    /// Per worker, oldest first; each with the time it became idle.
    idle: Box<[Mutex<Stack>]>,
    closed: AtomicBool,
    /// `--upstream h2c`: the release's HTTP/2 connections (the idle stacks stay empty).
    pub h2c: Option<h2c::Conns>,
}

impl Pool {
    /// An empty pool; a task evicts idle connections while it exists.
    pub fn new(addr: SocketAddr, connect_timeout: Duration, h2c: bool) -> Arc<Self> {
        let pool = Arc::new(Self {
            addr,
            connect_timeout,
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header value"),
            idle: (0..WORKERS.load(Ordering::Relaxed))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            closed: AtomicBool::new(false),
            h2c: h2c.then(|| h2c::Conns::new(WORKERS.load(Ordering::Relaxed))),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak: Weak<Self> = Arc::downgrade(&pool);
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(POOL_IDLE_TIMEOUT / 4).await;
                    let Some(p) = weak.upgrade() else { break };
                    p.evict(Instant::now());
                }
            });
        }
        pool
    }

    fn mine(&self) -> &Mutex<Stack> {
        &self.idle[worker_index() % self.idle.len()]
    }

    /// An idle connection ready for a request, if there is one.
    pub fn checkout(&self) -> Option<Sender> {
        let mut idle = self.mine().lock().expect("pool lock");
        // Most recently used first; connections still finishing their last
        // response stay, closed ones are dropped.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].0.is_ready() {
                return Some(idle.remove(i).0);
            }
            if idle[i].0.is_closed() {
                idle.remove(i);
            }
        }
        None
    }

    /// Returns a connection whose response has ended (dropped, and so closed,
    /// once the pool is closed or when the connection is).
    pub fn put(&self, sender: Sender) {
        if self.closed.load(Ordering::Relaxed) || sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.mine().lock().expect("pool lock");
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        idle.push((sender, now));
    }

    fn evict(&self, now: Instant) {
        for idle in &self.idle {
            let mut idle = idle.lock().expect("pool lock");
            idle.retain(|(s, t)| !s.is_closed() && now.duration_since(*t) < POOL_IDLE_TIMEOUT);
        }
    }

    /// Closes the idle connections; later ones are closed instead of pooled.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Some(h2c) = &self.h2c {
            h2c.close();
        }
        for idle in &self.idle {
            let idle = std::mem::take(&mut *idle.lock().expect("pool lock"));
            drop(idle);
        }
    }
}

/// The routes file: `{"release":"v2","upstream":"127.0.0.1:21001"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Release id.
    pub release: String,
    /// Loopback address the release listens on.
    pub upstream: SocketAddr,
}

/// Reads the routes file. `Ok(None)` when it does not exist (no release routed yet).
pub fn load_routes(path: &Path) -> Result<Option<Route>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("routes file {}: cannot read it: {e}", path.display())),
    };
    let route: Route = serde_json::from_str(&text).map_err(|e| {
        format!(
            "routes file {}: {e} (expected {{\"release\":\"v2\",\"upstream\":\"127.0.0.1:21001\"}})",
            path.display()
        )
    })?;
    if route.release.is_empty() {
        return Err(format!("routes file {}: \"release\" is empty", path.display()));
    }
    Ok(Some(route))
}

/// The route a front starts with: the routes file's, unless the hooks' `state` records another
/// release as serving and `routes/<release>.json` beside the routes file has its route. The
/// state is the commit: a routes file written by a switch that never committed (a power cut
/// between the two) must not send a booting front to a release that is not running.
pub fn starting_route(routes: &Path, state: Option<&Path>) -> Result<Option<Route>, String> {
    let from_file = load_routes(routes)?;
    let Some(serving) = state.and_then(serving_release) else {
        return Ok(from_file);
    };
    if from_file.as_ref().is_some_and(|r| r.release == serving) {
        return Ok(from_file);
    }
    let own = routes
        .parent()
        .unwrap_or(Path::new("/"))
        .join("routes")
        .join(format!("{serving}.json"));
    match load_routes(&own) {
        Ok(Some(route)) if route.release == serving => Ok(Some(route)),
        _ => Ok(from_file),
    }
}

/// The release a state file records as serving, if it can be read.
fn serving_release(state: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["serving"].as_str().map(str::to_string)
}

/// One release on one address, with its pool and what is open to it.
#[derive(Debug)]
pub struct Upstream {
    /// Release id.
    pub release: String,
    /// Its address.
    pub addr: SocketAddr,
    pool: Mutex<Option<Arc<Pool>>>,
    in_flight: AtomicUsize,
    /// Signalled when `in_flight` drops to zero while `closing`.
    in_flight_zero: Notify,
    /// Set with `closing` (readable without a lock on the request path).
    draining: AtomicBool,
    websockets: watch::Sender<usize>,
    ws_closed: AtomicU64,
    /// Its WebSockets' close turns when it is drained: only the WebSocket whose turn came
    /// wakes (10,000 relays that each computed their own delay all woke at once).
    pub ws_turns: handoff_drain::WsTurns,
    /// Its release's metrics.
    pub stats: Arc<ReleaseStats>,
}

impl Upstream {
    fn new(route: &Route, connect_timeout: Duration, h2c: bool, stats: Arc<ReleaseStats>) -> Arc<Self> {
        Arc::new(Self {
            stats,
            release: route.release.clone(),
            addr: route.upstream,
            pool: Mutex::new(Some(Pool::new(route.upstream, connect_timeout, h2c))),
            in_flight: AtomicUsize::new(0),
            in_flight_zero: Notify::new(),
            draining: AtomicBool::new(false),
            websockets: watch::Sender::new(0),
            ws_closed: AtomicU64::new(0),
            ws_turns: Default::default(),
        })
    }

    /// Requests in flight to it now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// WebSockets relayed to it now.
    pub fn websockets(&self) -> usize {
        *self.websockets.borrow()
    }

    /// Counts a WebSocket relayed to this upstream until the guard drops.
    pub fn ws_guard(self: &Arc<Self>) -> WsGuard {
        self.websockets.send_modify(|n| *n += 1);
        WsGuard(self.clone())
    }

    /// Records a WebSocket closed because of this upstream's drain.
    pub fn note_ws_closed(&self) {
        self.ws_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Drains it: waits for in-flight requests (up to `budget`), drops the
    /// pool, and closes its WebSockets (waiting up to `ws_wait` for them).
    /// WebSockets are told to close at once, not after the requests: they
    /// reconnect to the new release meanwhile, spread at `ws_rate` per second
    /// (within the budget) so the reconnects do not arrive all at once.
    pub async fn drain(&self, budget: Duration, ws_wait: Duration, ws_rate: u64) -> Drained {
        let t0 = Instant::now();
        self.draining.store(true, Ordering::SeqCst);
        let window =
            handoff_drain::close_window(self.websockets() as u64, ws_rate, budget.saturating_sub(ws_wait));
        // The close turns go out beside the rest of the drain, which waits for them.
        let (_, drained) = tokio::join!(
            self.ws_turns.hand_out(self.websockets() as u64, window),
            self.drain_after_turns(t0, budget, ws_wait)
        );
        drained
    }

    async fn drain_after_turns(&self, t0: Instant, budget: Duration, ws_wait: Duration) -> Drained {
        let none_left = async {
            loop {
                let zero = self.in_flight_zero.notified();
                if self.in_flight() == 0 {
                    break;
                }
                zero.await;
            }
        };
        let _ = tokio::time::timeout(budget, none_left).await;
        let requests_left = self.in_flight();
        if let Some(pool) = self.pool.lock().expect("pool lock").take() {
            pool.close();
        }
        let mut ws = self.websockets.subscribe();
        let ws_deadline = (t0 + budget).max(Instant::now()) + ws_wait;
        let _ = tokio::time::timeout_at(ws_deadline, ws.wait_for(|n| *n == 0)).await;
        Drained {
            release: self.release.clone(),
            requests_left,
            websockets_closed: self.ws_closed.load(Ordering::Relaxed),
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight() == 0 && self.websockets() == 0
    }
}

/// What a drain did, as reported by the `route` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drained {
    /// The drained release.
    pub release: String,
    /// Requests still in flight when the budget ran out (0: drained).
    pub requests_left: usize,
    /// WebSockets closed with 1012.
    pub websockets_closed: u64,
}

/// Keeps a request counted as in flight to its upstream until dropped
/// (the proxy drops it when the response body has been sent or abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    /// The upstream it counts against.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.draining.load(Ordering::SeqCst) {
            self.0.in_flight_zero.notify_waiters();
        }
    }
}

/// Keeps a WebSocket counted under its upstream until dropped.
#[derive(Debug)]
pub struct WsGuard(Arc<Upstream>);

impl Drop for WsGuard {
    fn drop(&mut self) {
        self.0.websockets.send_modify(|n| *n -= 1);
    }
}

/// A request's claim on an upstream.
#[derive(Debug)]
pub struct Acquired {
    /// The upstream it was routed to.
    pub upstream: Arc<Upstream>,
    /// Its connection pool.
    pub pool: Arc<Pool>,
    /// Counted in flight until dropped.
    pub guard: InFlight,
}

#[derive(Debug, Default)]
struct Routes {
    current: Option<Arc<Upstream>>,
    /// Previous upstreams still draining (or whose drain ran out of budget).
    retired: Vec<Arc<Upstream>>,
}

/// The current upstream and the retired ones.
#[derive(Debug)]
pub struct Router {
    routes: Mutex<Routes>,
    connect_timeout: Duration,
    /// `--upstream h2c`.
    h2c: bool,
    /// Each routed release's metrics.
    pub stats: StatsBook,
}

/// What [`Router::switch`] did.
#[derive(Debug)]
pub enum Switch {
    /// Already routed there: nothing to drain.
    Unchanged,
    /// Switched; these upstreams are to be drained.
    Switched(Vec<Arc<Upstream>>),
}

impl Router {
    /// A router, routed to `initial` if any.
    pub fn new(initial: Option<Route>, connect_timeout: Duration, h2c: bool) -> Self {
        let stats = StatsBook::default();
        let current = initial.map(|r| Upstream::new(&r, connect_timeout, h2c, stats.for_release(&r.release)));
        Self {
            routes: Mutex::new(Routes {
                current,
                retired: Vec::new(),
            }),
            connect_timeout,
            h2c,
            stats,
        }
    }

    /// Routes a new request: the current upstream, counted in flight. `None`
    /// when no release is routed yet.
    pub fn acquire(&self) -> Option<Acquired> {
        let routes = self.routes.lock().expect("routes lock");
        let upstream = routes.current.clone()?;
        let pool = upstream.pool.lock().expect("pool lock").clone()?;
        upstream.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(Acquired {
            guard: InFlight(upstream.clone()),
            upstream,
            pool,
        })
    }

    /// The current upstream.
    pub fn current(&self) -> Option<Arc<Upstream>> {
        self.routes.lock().expect("routes lock").current.clone()
    }

    /// Makes `route` current. Returns every other upstream, to be drained.
    pub fn switch(&self, route: &Route) -> Switch {
        let mut routes = self.routes.lock().expect("routes lock");
        if let Some(cur) = &routes.current
            && cur.release == route.release
            && cur.addr == route.upstream
        {
            return Switch::Unchanged;
        }
        let new = Upstream::new(
            route,
            self.connect_timeout,
            self.h2c,
            self.stats.for_release(&route.release),
        );
        if let Some(old) = routes.current.replace(new) {
            routes.retired.push(old);
            self.stats.drains.fetch_add(1, Ordering::Relaxed);
        }
        Switch::Switched(routes.retired.clone())
    }

    /// Forgets retired upstreams that have nothing open any more.
    pub fn prune(&self) {
        self.routes
            .lock()
            .expect("routes lock")
            .retired
            .retain(|u| !u.is_idle());
    }

    /// Every upstream (current first), for `status` and the own drain.
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        let routes = self.routes.lock().expect("routes lock");
        routes
            .current
            .iter()
            .chain(routes.retired.iter())
            .cloned()
            .collect()
    }

    /// In-flight requests and WebSockets per release.
    pub fn counts(&self) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
        let mut req = BTreeMap::new();
        let mut ws = BTreeMap::new();
        for u in self.all() {
            *req.entry(u.release.clone()).or_default() += u.in_flight();
            *ws.entry(u.release.clone()).or_default() += u.websockets();
        }
        (req, ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(r: &str, port: u16) -> Route {
        Route {
            release: r.into(),
            upstream: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn routes_file() {
        let dir = std::env::temp_dir().join(format!("front-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("routes.json");
        assert_eq!(load_routes(&p), Ok(None));
        std::fs::write(&p, r#"{"release":"v2","upstream":"127.0.0.1:21001"}"#).unwrap();
        assert_eq!(load_routes(&p), Ok(Some(route("v2", 21001))));
        std::fs::write(&p, r#"{"release":"v2"}"#).unwrap();
        let e = load_routes(&p).unwrap_err();
        assert!(e.contains("routes.json") && e.contains("upstream"), "{e}");
        std::fs::write(&p, r#"{"release":"v2","upstream":"localhost"}"#).unwrap();
        assert!(load_routes(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_starting_front_routes_to_the_release_the_state_commits() {
        let dir = std::env::temp_dir().join(format!("front-start-route-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("routes")).unwrap();
        let (p, state) = (dir.join("routes.json"), dir.join("state.json"));
        // A switch to v2 wrote the routes file, then the power went before its commit.
        std::fs::write(&p, r#"{"release":"v2","upstream":"127.0.0.1:21002"}"#).unwrap();
        std::fs::write(
            dir.join("routes/v1.json"),
            r#"{"release":"v1","upstream":"127.0.0.1:21001"}"#,
        )
        .unwrap();
        std::fs::write(
            &state,
            "{\n  \"serving\": \"v1\",\n  \"switching\": {\"to\": \"v2\"}\n}",
        )
        .unwrap();
        assert_eq!(starting_route(&p, Some(&state)), Ok(Some(route("v1", 21001))));
        // Without a state (an older template), or with a state that names the routed
        // release, or whose release has no route of its own, the routes file wins.
        assert_eq!(starting_route(&p, None), Ok(Some(route("v2", 21002))));
        std::fs::write(&state, r#"{"serving":"v2"}"#).unwrap();
        assert_eq!(starting_route(&p, Some(&state)), Ok(Some(route("v2", 21002))));
        std::fs::write(&state, r#"{"serving":"v9"}"#).unwrap();
        assert_eq!(starting_route(&p, Some(&state)), Ok(Some(route("v2", 21002))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn acquire_counts_and_switch_retires() {
        let r = Router::new(Some(route("v1", 1)), Duration::from_secs(1), false);
        let a = r.acquire().unwrap();
        assert_eq!(a.upstream.in_flight(), 1);
        assert!(matches!(r.switch(&route("v1", 1)), Switch::Unchanged));
        let Switch::Switched(old) = r.switch(&route("v2", 2)) else {
            panic!("expected a switch")
        };
        assert_eq!(old.len(), 1);
        assert_eq!(r.acquire().unwrap().upstream.release, "v2");
        assert_eq!(r.counts().0.get("v1"), Some(&1));
        let d = tokio::spawn({
            let u = old[0].clone();
            async move {
                u.drain(Duration::from_secs(5), Duration::from_millis(10), 2_000)
                    .await
            }
        });
        drop(a);
        let d = d.await.unwrap();
        assert_eq!(d.requests_left, 0);
        r.prune();
        assert_eq!(r.all().len(), 1);
    }
}
