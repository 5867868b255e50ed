//! Prometheus metrics (`--metrics ADDR`, deploy.yml `front.metrics`): the text exposition
//! format at `GET /metrics` on an address of its own, apart from the clients' sockets.
//!
//! * Counting costs a request a few relaxed atomic additions on its release's
//!   [`ReleaseStats`]: no lock, no allocation, no label built per request. The stats of a release
//!   are found once, when it is routed ([`StatsBook::for_release`]), and a release routed again
//!   (a rollback) counts on in the same series.
//! * A scrape reads the counters as they are; the histogram's `+Inf` bucket and `_count` are
//!   the sum of the buckets read, so they always agree.
//! * Requests answered before any release was routed (503, a refused request head) count under
//!   `release=""`.
//! * The counters live as long as the front process. A front upgrade starts from zero, which
//!   Prometheus' `rate()` and `increase()` take as a counter reset.
//! * The listener: the old front closes it at SIGTERM and its successor, already serving,
//!   binds it then ([`serve`] retries every 100 ms). A scrape in that gap is refused: one
//!   failed scrape per front upgrade, never a client request.
//!
//! The names, labels and a scrape config are in the README ("Metrics").

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::state::Shared;

/// The methods counted by name; any other counts as `other`.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "other",
];

/// The index of `m` in [`METHODS`].
pub fn method_index(m: &Method) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|n| *n == m.as_str())
        .unwrap_or(METHODS.len() - 1)
}

/// Upper bounds of the latency histogram's buckets, in microseconds (1 ms to 10 s).
const BUCKETS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// Why a request to a release failed, as the `cause` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Connection refused: the release is not listening.
    Refused,
    /// No connection within `--connect-timeout-ms`.
    ConnectTimeout,
    /// Another failure to connect.
    Connect,
    /// The connection closed or was reset before the response head.
    Closed,
    /// An invalid response.
    Invalid,
    /// Anything else.
    Other,
}

const CAUSES: [(Cause, &str); 6] = [
    (Cause::Refused, "refused"),
    (Cause::ConnectTimeout, "connect_timeout"),
    (Cause::Connect, "connect"),
    (Cause::Closed, "closed"),
    (Cause::Invalid, "invalid_response"),
    (Cause::Other, "other"),
];

/// One release's counters (see the module documentation).
#[derive(Debug, Default)]
pub struct ReleaseStats {
    /// By method and status class (1xx to 5xx).
    requests: [[AtomicU64; 5]; METHODS.len()],
    /// Requests per latency bucket (not cumulative; the last one is above 10 s).
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    /// Their latency in microseconds, summed.
    sum_us: AtomicU64,
    /// Failed attempts to reach the release, by [`Cause`] (retried or not).
    errors: [AtomicU64; CAUSES.len()],
}

impl ReleaseStats {
    /// Counts one answered request.
    pub fn record(&self, method: usize, status: StatusCode, took: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[method.min(METHODS.len() - 1)][class].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Counts one failed attempt to reach the release.
    pub fn upstream_error(&self, cause: Cause) {
        let i = CAUSES
            .iter()
            .position(|(c, _)| *c == cause)
            .unwrap_or(CAUSES.len() - 1);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The releases this front has routed to, each with its stats (most recent last).
#[derive(Debug, Default)]
pub struct StatsBook {
    releases: Mutex<Vec<(String, Arc<ReleaseStats>)>>,
    /// Requests answered with no release routed.
    pub unrouted: ReleaseStats,
    /// Switches that retired a release into its drain.
    pub drains: AtomicU64,
}

/// How many releases' series a front keeps (a long-lived front forgets the oldest).
const KEPT_RELEASES: usize = 16;

impl StatsBook {
    /// The stats of `release`: the same ones each time it is routed.
    pub fn for_release(&self, release: &str) -> Arc<ReleaseStats> {
        let mut all = self.releases.lock().expect("stats lock");
        if let Some(i) = all.iter().position(|(r, _)| r == release) {
            let entry = all.remove(i);
            let stats = entry.1.clone();
            all.push(entry);
            return stats;
        }
        if all.len() >= KEPT_RELEASES {
            all.remove(0);
        }
        let stats = Arc::new(ReleaseStats::default());
        all.push((release.to_string(), stats.clone()));
        stats
    }

    fn releases(&self) -> Vec<(String, Arc<ReleaseStats>)> {
        self.releases.lock().expect("stats lock").clone()
    }
}

/// A label value, escaped as the text format wants (`\\`, `\"`, `\n`).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// A release's stats, or those of requests answered with no release routed.
fn pick<'a>(book: &'a StatsBook, s: &'a Option<Arc<ReleaseStats>>) -> &'a ReleaseStats {
    s.as_deref().unwrap_or(&book.unrouted)
}

/// The whole exposition, in the text format (version 0.0.4).
pub fn render(shared: &Shared, access_log_dropped: u64) -> String {
    let book = &shared.router.stats;
    let mut releases = vec![(String::new(), None)];
    releases.extend(book.releases().into_iter().map(|(r, s)| (label(&r), Some(s))));
    let mut out = String::with_capacity(4096);

    help(
        &mut out,
        "handoff_front_requests_total",
        "counter",
        "Requests answered, by release, method and status class.",
    );
    for (r, s) in &releases {
        for (m, by_class) in pick(book, s).requests.iter().enumerate() {
            for (c, n) in by_class.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "handoff_front_requests_total{{release=\"{r}\",method=\"{}\",status_class=\"{}xx\"}} {n}",
                        METHODS[m],
                        c + 1
                    );
                }
            }
        }
    }

    let name = "handoff_front_request_duration_seconds";
    help(
        &mut out,
        name,
        "histogram",
        "From a request's head to the end of its response, by release.",
    );
    for (r, s) in &releases {
        let s = pick(book, s);
        let mut cumulative = 0;
        for (i, n) in s.buckets.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            let le = BUCKETS_US
                .get(i)
                .map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{release=\"{r}\",le=\"{le}\"}} {cumulative}");
        }
        let sum = s.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_sum{{release=\"{r}\"}} {sum}\n{name}_count{{release=\"{r}\"}} {cumulative}"
        );
    }

    let name = "handoff_front_upstream_errors_total";
    help(
        &mut out,
        name,
        "counter",
        "Failed attempts to reach a release (retried or not), by release and cause.",
    );
    for (r, s) in releases.iter().skip(1) {
        for (i, (_, cause)) in CAUSES.iter().enumerate() {
            let n = pick(book, s).errors[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{release=\"{r}\",cause=\"{cause}\"}} {n}");
        }
    }

    let (in_flight, websockets) = shared.router.counts();
    for (name, text, counts) in [
        (
            "handoff_front_in_flight_requests",
            "Requests on their way to a release or back, by release.",
            &in_flight,
        ),
        (
            "handoff_front_open_websockets",
            "WebSockets relayed to a release, by release.",
            &websockets,
        ),
    ] {
        help(&mut out, name, "gauge", text);
        for (r, n) in counts {
            let _ = writeln!(out, "{name}{{release=\"{}\"}} {n}", label(r));
        }
    }

    let open = shared.open();
    let simple: [(&str, &str, &str, u64); 4] = [
        (
            "handoff_front_open_connections",
            "gauge",
            "Client connections open (HTTP, WebSockets not included).",
            open.http as u64,
        ),
        (
            "handoff_front_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            shared.connections.load(Ordering::Relaxed),
        ),
        (
            "handoff_front_release_drains_total",
            "counter",
            "Switches that retired a release into its drain.",
            book.drains.load(Ordering::Relaxed),
        ),
        (
            "handoff_front_access_log_dropped_total",
            "counter",
            "Access log lines dropped because the journal did not take them in time.",
            access_log_dropped,
        ),
    ];
    for (name, kind, text, v) in simple {
        help(&mut out, name, kind, text);
        let _ = writeln!(out, "{name} {v}");
    }
    let routed = shared
        .router
        .current()
        .map(|u| label(&u.release))
        .unwrap_or_default();
    help(
        &mut out,
        "handoff_front_info",
        "gauge",
        "This front: its id, its version and the release it routes to.",
    );
    let _ = writeln!(
        out,
        "handoff_front_info{{id=\"{}\",version=\"{}\",release=\"{routed}\"}} 1",
        label(&shared.id),
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// Binds `addr` for the metrics, retrying every 100 ms while another front holds it (the one
/// this front replaces lets it go at its SIGTERM), and serves scrapes until the front's own
/// drain begins. A scrape is one request on its own connection or a keep-alive one.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>, access_log_dropped: fn() -> u64) {
    let mut waited = Duration::ZERO;
    let listener = loop {
        if !shared.is_serving() {
            return;
        }
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if waited == Duration::from_secs(5) {
                    warn!(
                        "metrics: {addr} is still in use after 5 s; if not by the front this one replaces, \
                         free it or change front.metrics (retrying)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                waited += Duration::from_millis(100);
            }
            Err(e) => {
                warn!(
                    "metrics: cannot listen on {addr} ({e}); no metrics from this front: check front.metrics"
                );
                return;
            }
        }
    };
    info!(%addr, "metrics: serving /metrics");
    let stop = shared.wait_phase(|p| !p.is_serving());
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    debug!("metrics: accept: {e}");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &shared, access_log_dropped())) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!("metrics: connection: {e}");
            }
        });
    }
    info!("metrics: draining: {addr} closed for the next front");
}

fn answer(req: &Request<Incoming>, shared: &Shared, dropped: u64) -> Response<Full<Bytes>> {
    let (status, body, kind) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            render(shared, dropped),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "only GET /metrics is served here\n".to_string(),
            "text/plain; charset=utf-8",
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_classes_and_buckets() {
        assert_eq!(METHODS[method_index(&Method::GET)], "GET");
        assert_eq!(
            METHODS[method_index(&Method::from_bytes(b"PURGE").unwrap())],
            "other"
        );
        let s = ReleaseStats::default();
        s.record(
            method_index(&Method::POST),
            StatusCode::CREATED,
            Duration::from_micros(900),
        );
        s.record(
            method_index(&Method::POST),
            StatusCode::BAD_GATEWAY,
            Duration::from_millis(30),
        );
        s.record(
            method_index(&Method::GET),
            StatusCode::SWITCHING_PROTOCOLS,
            Duration::from_secs(11),
        );
        assert_eq!(s.requests[2][1].load(Ordering::Relaxed), 1);
        assert_eq!(s.requests[2][4].load(Ordering::Relaxed), 1);
        assert_eq!(s.requests[0][0].load(Ordering::Relaxed), 1);
        assert_eq!(s.buckets[0].load(Ordering::Relaxed), 1, "900 us: le 1 ms");
        assert_eq!(s.buckets[5].load(Ordering::Relaxed), 1, "30 ms: le 50 ms");
        assert_eq!(
            s.buckets[BUCKETS_US.len()].load(Ordering::Relaxed),
            1,
            "11 s: +Inf only"
        );
        assert_eq!(s.sum_us.load(Ordering::Relaxed), 900 + 30_000 + 11_000_000);
    }

    #[test]
    fn a_release_routed_again_counts_in_the_same_series_and_old_ones_are_forgotten() {
        let book = StatsBook::default();
        let v1 = book.for_release("v1");
        book.for_release("v2");
        assert!(Arc::ptr_eq(&v1, &book.for_release("v1")));
        for i in 0..KEPT_RELEASES {
            book.for_release(&format!("r{i}"));
        }
        let kept: Vec<String> = book.releases().into_iter().map(|(r, _)| r).collect();
        assert_eq!(kept.len(), KEPT_RELEASES);
        assert!(
            !kept.contains(&"v2".to_string()) && !kept.contains(&"v1".to_string()),
            "{kept:?}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
