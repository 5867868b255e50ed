//! Load during deployments, from real clients: `ab -r -c 10` (a new connection per request),
//! `wrk -c 10` (keep-alive, never retries a failed request), WebSocket clients (close code and
//! reconnect), all three `make bench`'s own (`bench::load`), and a paced probe that records
//! every request's latency and release.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// Counts for one client kind (requests, failed, detail), shared with `make bench`.
pub use bench::data::{Counts, WsCounts};

/// One probe request: when it started, how long it took, which release answered.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    pub latency: Duration,
    pub release: Option<String>,
}

pub struct Report {
    pub ab: Counts,
    pub wrk: Counts,
    pub ws: WsCounts,
    pub probe: Counts,
    pub samples: Vec<Sample>,
    /// When each failed probe request started (same clock as `Sample::at`).
    pub probe_failed_at: Vec<Duration>,
    /// Each WebSocket client's own counts (`ws` adds them up).
    pub ws_clients: Vec<WsCounts>,
}

impl Report {
    pub fn failures(&self) -> u64 {
        self.ab.failed
            + self.wrk.failed
            + self.probe.failed
            + self.ws.abnormal
            + self.ws.other_closes.len() as u64
    }

    pub fn summary(&self) -> String {
        format!(
            "ab: {} requests, {} failed {}\nwrk: {} requests, {} failed {}\nprobe: {} requests, {} failed {}\n\
             ws: {} sessions, {} echoes, {} closed with 1012, other closes {:?}, {} abnormal, releases seen {:?}",
            self.ab.requests,
            self.ab.failed,
            self.ab.detail,
            self.wrk.requests,
            self.wrk.failed,
            self.wrk.detail,
            self.probe.requests,
            self.probe.failed,
            self.probe.detail,
            self.ws.sessions,
            self.ws.echoes,
            self.ws.closes_1012,
            self.ws.other_closes,
            self.ws.abnormal,
            self.ws.releases_seen
        )
    }

    /// The release that answered the last probe requests.
    pub fn last_release(&self) -> Option<String> {
        self.samples.iter().rev().find_map(|s| s.release.clone())
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    stop_ws: tokio::sync::watch::Sender<bool>,
    ab: bench::load::Tool,
    wrk: bench::load::Tool,
    ws: Vec<tokio::task::JoinHandle<WsCounts>>,
    probe: tokio::task::JoinHandle<(Counts, Vec<Sample>, Vec<Duration>)>,
}

impl Load {
    /// Starts every client against 127.0.0.1:port for at most `max` (ab and wrk are bounded by
    /// it themselves); `finish` stops them all. ab, wrk and the WebSocket clients are `make
    /// bench`'s (bench::load); wrk keeps its own 2 s timeout, so a stalled request fails here.
    pub async fn start(port: u16, max: Duration, ws_clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_ws, stop_rx) = tokio::sync::watch::channel(false);
        let secs = max.as_secs().max(1);
        let url = format!("http://127.0.0.1:{port}/");
        let ab = bench::load::Tool::ab(&url, 10, secs).unwrap_or_else(|e| panic!("{e:#}"));
        let wrk = bench::load::Tool::wrk(&url, 10, secs, None).unwrap_or_else(|e| panic!("{e:#}"));
        let (connected, _) = tokio::sync::mpsc::unbounded_channel();
        let clock = bench::load::Clock::start();
        let ws = (0..ws_clients)
            .map(|_| {
                tokio::spawn(bench::load::ws_client(
                    port,
                    Duration::from_millis(100),
                    connected.clone(),
                    clock,
                    stop_rx.clone(),
                ))
            })
            .collect();
        let probe = tokio::spawn(probe(port, stop.clone()));
        // Let every client connect before anything changes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Load {
            stop,
            stop_ws,
            ab,
            wrk,
            ws,
            probe,
        }
    }

    /// Stops the clients (ab and wrk get SIGINT and print their totals) and collects the counts.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stop_ws.send(true);
        let mut ws = WsCounts::default();
        let mut ws_clients = Vec::new();
        for h in self.ws {
            let c = h.await.unwrap();
            ws_clients.push(c.clone());
            ws.add(c);
        }
        let (probe, samples, probe_failed_at) = self.probe.await.unwrap();
        let (ab, wrk) = tokio::join!(self.ab.finish(), self.wrk.finish());
        let ab_counts = bench::load::parse_ab(&ab.0);
        assert!(ab_counts.requests > 0, "ab ran no request:\n{}\n{}", ab.0, ab.1);
        let wrk_counts = bench::load::parse_wrk(&wrk.0);
        assert!(
            wrk_counts.requests > 0,
            "wrk ran no request:\n{}\n{}",
            wrk.0,
            wrk.1
        );
        Report {
            ab: ab_counts,
            wrk: wrk_counts,
            ws,
            probe,
            samples,
            probe_failed_at,
            ws_clients,
        }
    }
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Time since the first use in this test process: the probe's `Sample::at` is on this clock.
pub fn clock() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// How long a probe request may take before it counts as failed: far above any latency a
/// switch may cause (the tests bound those separately), far below a hung request.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every 5 ms a new connection and one request; records latency and the answering release,
/// and when each failed request started.
async fn probe(port: u16, stop: Arc<AtomicBool>) -> (Counts, Vec<Sample>, Vec<Duration>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new((0u64, String::new(), Vec::new())));
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let (samples, failures) = (samples.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let at = clock();
            let t = Instant::now();
            match tokio::time::timeout(PROBE_TIMEOUT, bench::load::one_request(port, "/")).await {
                Ok(Ok(release)) => samples.lock().await.push(Sample {
                    at,
                    latency: t.elapsed(),
                    release: Some(release),
                }),
                Ok(Err(e)) => {
                    let mut f = failures.lock().await;
                    f.0 += 1;
                    f.1 = e.to_string();
                    f.2.push(at);
                }
                Err(_) => {
                    let mut f = failures.lock().await;
                    f.0 += 1;
                    f.1 = format!("no answer within {PROBE_TIMEOUT:?}");
                    f.2.push(at);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut samples = Arc::try_unwrap(samples).unwrap().into_inner();
    samples.sort_by_key(|s| s.at);
    let (failed, last, mut failed_at) = Arc::try_unwrap(failures).unwrap().into_inner();
    failed_at.sort();
    (
        Counts {
            requests: samples.len() as u64 + failed,
            failed,
            detail: last,
            ..Default::default()
        },
        samples,
        failed_at,
    )
}

/// p50, p99, max (ms) and the number of requests of a window.
pub type Window = (f64, f64, f64, usize);

/// The probe's view of a switch window [from, to) of the sample app: asserts that the load
/// overlapped it (requests before, during and after it) and that its latency did not stall:
/// the window's p99 within [`NO_STALL_P99_MS`] of the same run's baseline p99, and its slowest
/// request within [`NO_STALL_MAX_MS`] of it. Its callers run alone
/// (.config/nextest.toml), so no other test is measured with them. Returns
/// (baseline, window).
pub fn assert_no_stall(report: &Report, from: Duration, to: Duration, what: &str) -> (Window, Window) {
    let (base, during) = switch_window(report, from, to, what);
    assert!(
        during.1 <= base.1 + NO_STALL_P99_MS && during.2 <= base.1 + NO_STALL_MAX_MS,
        "{what}: the switch stalled requests: p99 {:.1} ms and max {:.1} ms during it against a p99 of {:.1} ms \
         before (bounds: +{NO_STALL_P99_MS} ms at p99, +{NO_STALL_MAX_MS} ms at the max)",
        during.1,
        during.2,
        base.1
    );
    (base, during)
}

/// The README's figures come from `make bench` on a quiet machine: +2.6 ms at p99 over the
/// baseline, 16 ms at the slowest request. The tests run beside others on CI's 2 cores, so
/// they assert +50 ms at p99 and +250 ms at the max (one full run measured +5.5 ms and 21 ms);
/// a stall (a blocked accept, a restart) takes a second or more.
pub const NO_STALL_P99_MS: f64 = 50.0;
/// See [`NO_STALL_P99_MS`].
pub const NO_STALL_MAX_MS: f64 = 250.0;

/// The probe's baseline (before `from`) and switch window [from, to), after asserting that the
/// load overlapped the switch: requests before, during and after it.
pub fn switch_window(report: &Report, from: Duration, to: Duration, what: &str) -> (Window, Window) {
    let base = percentiles(&report.samples, Duration::ZERO, from)
        .unwrap_or_else(|| panic!("{what}: no probe request before the switch"));
    let during = percentiles(&report.samples, from, to)
        .unwrap_or_else(|| panic!("{what}: no probe request during the switch"));
    assert!(
        report.samples.iter().any(|s| s.at >= to),
        "{what}: the load stopped before the switch ended"
    );
    // A 5 ms probe over a switch of a second or more: a load that really overlapped it.
    assert!(
        during.3 >= 50,
        "{what}: only {} probe requests during the switch",
        during.3
    );
    eprintln!("{what}: probe latency ms (p50/p99/max/n): baseline {base:?}, during the switch {during:?}");
    (base, during)
}

/// How much a real server's switch window may exceed its steady state (`examples.rs`):
/// generous for a 2-core machine shared by the load tools, systemd and a server that may be
/// single-threaded; a stall of a second (a blocked accept, a restart) is far above it.
pub const STALL_BOUND_MS: f64 = 250.0;

/// p50, p99 and max of the samples whose start falls in [from, to).
pub fn percentiles(samples: &[Sample], from: Duration, to: Duration) -> Option<Window> {
    let mut l: Vec<f64> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .map(|s| s.latency.as_secs_f64() * 1e3)
        .collect();
    if l.is_empty() {
        return None;
    }
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    Some((p(0.5), p(0.99), *l.last().unwrap(), l.len()))
}

/// No failed request of any client kind, and enough load that this means something.
pub fn assert_no_failures(report: &Report, what: &str) {
    assert_eq!(
        report.failures(),
        0,
        "{what}: requests failed under load:\n{}",
        report.summary()
    );
    assert!(
        report.ab.requests > 100 && report.wrk.requests > 100 && report.probe.requests > 100,
        "{what}: too little load:\n{}",
        report.summary()
    );
}

/// Each of the `clients` WebSocket clients, one by one, was closed with 1012 at least once and
/// then greeted by another release than its first: every client reconnected, to the new one.
pub fn assert_websockets_reconnected(report: &Report, clients: u64, what: &str) {
    assert_eq!(
        report.ws_clients.len() as u64,
        clients,
        "{what}: {} WebSocket clients ran, not {clients}",
        report.ws_clients.len()
    );
    for (i, c) in report.ws_clients.iter().enumerate() {
        assert!(
            c.closes_1012 >= 1 && c.releases_seen.len() >= 2 && c.abnormal == 0 && c.other_closes.is_empty(),
            "{what}: WebSocket client {i} was not closed with 1012 and reconnected to the new release: {c:?}\n{}",
            report.summary()
        );
    }
}

/// Slow requests (1.5 s) in flight across a switch; each must be answered 200.
pub fn slow_requests(port: u16, n: usize) -> Vec<tokio::task::JoinHandle<String>> {
    (0..n)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                crate::support::http_get(port, "/?sleep_ms=1500").unwrap_or_else(|e| format!("error {e}"))
            })
        })
        .collect()
}
