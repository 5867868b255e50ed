//! Where requests go: the routes file, the current upstream, and the
//! bookkeeping that lets a switch drain the previous release.
//!
//! Each [`Upstream`] (one release on one loopback address) owns its own hyper
//! [`Client`] (a keep-alive pool), an in-flight request counter and a count of
//! the WebSockets relayed to it. A request *acquires* the current upstream
//! under the router's lock, which increments the counter in the same critical
//! section as the read of "current": once [`Router::switch`] has returned, no
//! new request can be counted against the old upstream, so waiting for its
//! counter to reach zero is a real drain. Dropping the upstream's client then
//! drops its pool (idle pooled connections close); in-flight requests hold
//! their own clone until they end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// The body type sent upstream and back to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;
/// The upstream HTTP client.
pub type HttpClient = Client<HttpConnector, ProxyBody>;

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

/// Builds an upstream client: keep-alive pool (or none), TCP_NODELAY, connect timeout.
pub fn make_client(connect_timeout: Duration, pooled: bool) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new()).timer(TokioTimer::new());
    if pooled {
        b.pool_idle_timeout(Duration::from_secs(30));
    } else {
        b.pool_max_idle_per_host(0);
    }
    b.build(connector)
}

/// One release on one address, with its pool and what is open to it.
#[derive(Debug)]
pub struct Upstream {
    /// Release id.
    pub release: String,
    /// Its address.
    pub addr: SocketAddr,
    client: Mutex<Option<HttpClient>>,
    in_flight: watch::Sender<usize>,
    websockets: watch::Sender<usize>,
    /// Set when the upstream is drained: relayed WebSockets close (1012 to the client).
    closing: watch::Sender<bool>,
    ws_closed: AtomicU64,
}

impl Upstream {
    fn new(route: &Route, client: HttpClient) -> Arc<Self> {
        Arc::new(Self {
            release: route.release.clone(),
            addr: route.upstream,
            client: Mutex::new(Some(client)),
            in_flight: watch::Sender::new(0),
            websockets: watch::Sender::new(0),
            closing: watch::Sender::new(false),
            ws_closed: AtomicU64::new(0),
        })
    }

    /// Requests in flight to it now.
    pub fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
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

    /// Resolves once the upstream is being drained (at once if it already is).
    pub async fn closing(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Records a WebSocket closed because of this upstream's drain.
    pub fn note_ws_closed(&self) {
        self.ws_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Drains it: waits for in-flight requests (up to `budget`), drops the
    /// pool, and closes its WebSockets (waiting up to `ws_wait` for them).
    /// WebSockets are told to close at once, not after the requests: they
    /// reconnect to the new release meanwhile.
    pub async fn drain(&self, budget: Duration, ws_wait: Duration) -> Drained {
        let t0 = Instant::now();
        self.closing.send_replace(true);
        let mut rx = self.in_flight.subscribe();
        let _ = tokio::time::timeout(budget, rx.wait_for(|n| *n == 0)).await;
        let requests_left = self.in_flight();
        self.client.lock().expect("client lock").take();
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

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
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
    /// Its pooled client.
    pub client: HttpClient,
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
    pub fn new(initial: Option<Route>, connect_timeout: Duration) -> Self {
        let current = initial.map(|r| Upstream::new(&r, make_client(connect_timeout, true)));
        Self {
            routes: Mutex::new(Routes {
                current,
                retired: Vec::new(),
            }),
            connect_timeout,
        }
    }

    /// Routes a new request: the current upstream, counted in flight. `None`
    /// when no release is routed yet.
    pub fn acquire(&self) -> Option<Acquired> {
        let routes = self.routes.lock().expect("routes lock");
        let upstream = routes.current.clone()?;
        let client = upstream.client.lock().expect("client lock").clone()?;
        upstream.in_flight.send_modify(|n| *n += 1);
        Some(Acquired {
            guard: InFlight(upstream.clone()),
            upstream,
            client,
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
        let new = Upstream::new(route, make_client(self.connect_timeout, true));
        if let Some(old) = routes.current.replace(new) {
            routes.retired.push(old);
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

    #[tokio::test]
    async fn acquire_counts_and_switch_retires() {
        let r = Router::new(Some(route("v1", 1)), Duration::from_secs(1));
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
            async move { u.drain(Duration::from_secs(5), Duration::from_millis(10)).await }
        });
        drop(a);
        let d = d.await.unwrap();
        assert_eq!(d.requests_left, 0);
        r.prune();
        assert_eq!(r.all().len(), 1);
    }
}
