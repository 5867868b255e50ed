//! State shared by the coordinator and every connection task: who we are
//! (release, instance, pid), which drain phase we are in, what is open, and
//! counters for the final report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep_until};

use crate::config::Config;

/// Width of the release and instance fields in the `GET /` body.
pub const FIELD_WIDTH: usize = 24;

/// The `GET /` body: the same length whatever the release, pid or instance
/// (load generators such as `ab` count a differing length as a failure).
///
/// Non-printable and non-ASCII characters are replaced by `?` so that the byte
/// length, not just the character count, is fixed.
pub fn fixed_body(release: &str, pid: u32, instance: &str) -> String {
    format!(
        "release={} pid={:010} instance={}\n",
        fixed_width(release, FIELD_WIDTH),
        pid,
        fixed_width(instance, FIELD_WIDTH)
    )
}

/// Length in bytes of every `GET /` body.
pub const BODY_LEN: usize = "release= pid= instance=\n".len() + 2 * FIELD_WIDTH + 10;

fn fixed_width(s: &str, width: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(width)
        .collect();
    while out.len() < width {
        out.push(' ');
    }
    out
}

/// A header value from arbitrary text (invalid bytes become `?`).
fn header_value(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect();
    HeaderValue::from_str(clean.trim()).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

/// Who is answering: release, instance and pid, pre-rendered.
#[derive(Debug)]
pub struct Identity {
    /// Release id.
    pub release: String,
    /// Instance name (`INSTANCE`, `-` by default).
    pub instance: String,
    /// Our pid.
    pub pid: u32,
    /// The fixed-length `GET /` body.
    pub body: Bytes,
    pub(crate) h_release: HeaderValue,
    pub(crate) h_instance: HeaderValue,
    pub(crate) h_pid: HeaderValue,
}

impl Identity {
    /// Renders the identity of this process.
    pub fn new(release: &str, instance: &str, pid: u32) -> Self {
        Self {
            release: release.to_owned(),
            instance: instance.to_owned(),
            pid,
            body: Bytes::from(fixed_body(release, pid, instance)),
            h_release: header_value(release),
            h_instance: header_value(instance),
            h_pid: HeaderValue::from(pid),
        }
    }
}

/// Where the drain stands. Only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving normally.
    Serving,
    /// Listeners closed; every response says `Connection: close`; nothing is
    /// closed by us yet.
    LameDuck,
    /// HTTP connections get `graceful_shutdown` (a connection still waiting for
    /// its first request not before `grace_until`, an idle keep-alive connection
    /// not before `idle_until`); WebSockets get close 1012.
    Closing {
        /// End of the first-request grace (SIGTERM + first-request grace).
        grace_until: Instant,
        /// End of the idle keep-alive hold (SIGTERM + idle hold).
        idle_until: Instant,
    },
    /// Drain budget exhausted: drop whatever is still open.
    Abort,
}

impl Phase {
    /// [`Phase::Closing`] for a drain that began at `t0` and must end by `deadline`: the
    /// first-request grace, and the idle keep-alive hold ended early enough to close what is
    /// still idle then within the budget (the front's drain uses it too).
    pub fn closing(t0: Instant, grace: Duration, idle_hold: Duration, deadline: Instant) -> Phase {
        let budget = deadline.saturating_duration_since(t0);
        Phase::Closing {
            grace_until: t0 + grace,
            idle_until: (t0 + idle_hold).min(deadline - Duration::from_millis(500).min(budget / 4)),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Phase::Serving => 0,
            Phase::LameDuck => 1,
            Phase::Closing { .. } => 2,
            Phase::Abort => 3,
        }
    }

    /// Still accepting and keeping connections alive.
    pub fn is_serving(&self) -> bool {
        self.rank() == 0
    }

    /// Time to close HTTP connections and WebSockets.
    pub fn is_closing(&self) -> bool {
        self.rank() >= 2
    }

    /// Time to drop everything.
    pub fn is_abort(&self) -> bool {
        self.rank() >= 3
    }
}

/// Open connections, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Open {
    /// HTTP connections (not upgraded).
    pub http: usize,
    /// WebSockets (including upgrades in progress).
    pub ws: usize,
}

impl Open {
    /// Total open.
    pub fn total(&self) -> usize {
        self.http + self.ws
    }
}

/// Counts open connections (the drain waits on it) and requests being handled (so the
/// drain knows when only idle keep-alive connections are left: [`idle_hold_status`]).
#[derive(Debug)]
pub struct Tracker {
    open: watch::Sender<Open>,
    busy: BusyCounter,
}

/// Keeps a request counted as being handled until dropped.
#[derive(Debug)]
pub struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts requests being handled, without a lock (the front counts its own with it).
#[derive(Debug, Default, Clone)]
pub struct BusyCounter(Arc<AtomicUsize>);

impl BusyCounter {
    /// Counts one request until the guard drops.
    pub fn enter(&self) -> Busy {
        self.0.fetch_add(1, Ordering::Relaxed);
        Busy(self.0.clone())
    }

    /// Requests being handled now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The prefix of the `STATUS=` line a draining process sends once only idle keep-alive
/// connections are left (no request being handled, no WebSocket): the deploy hooks stop
/// waiting for its stop then, and systemd finishes it after the hold (sample-app/README.md,
/// "The idle hold").
pub const IDLE_HOLD_STATUS: &str = "idle hold:";

/// The `STATUS=` line of a drain in which only `idle` keep-alive connections are left, held
/// until `hold` after the signal.
pub fn idle_hold_status(idle: usize, hold: Duration) -> String {
    format!(
        "{IDLE_HOLD_STATUS} {idle} idle keep-alive connection{}, held until the client reuses or closes {} (at most {} s after the signal)",
        if idle == 1 { "" } else { "s" },
        if idle == 1 { "it" } else { "them" },
        hold.as_secs()
    )
}

/// Keeps a connection counted as open until dropped.
#[derive(Debug)]
pub struct Guard {
    open: watch::Sender<Open>,
    ws: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let ws = self.ws;
        self.open
            .send_modify(|o| if ws { o.ws -= 1 } else { o.http -= 1 });
    }
}

impl Tracker {
    fn new() -> Self {
        Self {
            open: watch::Sender::new(Open::default()),
            busy: BusyCounter::default(),
        }
    }

    /// Counts a request being handled until the guard drops.
    pub fn request(&self) -> Busy {
        self.busy.enter()
    }

    /// Requests being handled now.
    pub fn busy(&self) -> usize {
        self.busy.get()
    }

    /// Counts an HTTP connection.
    pub fn http(&self) -> Guard {
        self.open.send_modify(|o| o.http += 1);
        Guard {
            open: self.open.clone(),
            ws: false,
        }
    }

    /// Counts a WebSocket.
    pub fn ws(&self) -> Guard {
        self.open.send_modify(|o| o.ws += 1);
        Guard {
            open: self.open.clone(),
            ws: true,
        }
    }

    /// What is open now.
    pub fn open(&self) -> Open {
        *self.open.borrow()
    }

    /// Subscribes to changes of [`Tracker::open`].
    pub fn subscribe(&self) -> watch::Receiver<Open> {
        self.open.subscribe()
    }

    /// Resolves once nothing is open.
    pub async fn wait_idle(&self) {
        let mut rx = self.open.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(|o| o.total() == 0).await;
    }
}

/// Totals over the life of the process.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) websockets: AtomicU64,
    pub(crate) ws_close_acked: AtomicU64,
    pub(crate) ws_close_unacked: AtomicU64,
}

impl Stats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Everything connection tasks need.
#[derive(Debug)]
pub struct Shared {
    pub(crate) identity: Identity,
    pub(crate) unhealthy: bool,
    /// SAMPLE_BROKEN: every request answers 503.
    pub(crate) broken: bool,
    /// SAMPLE_HANG: no request is ever answered.
    pub(crate) hang: bool,
    /// SAMPLE_UNHEALTHY_AFTER_MS: unhealthy from this instant on.
    pub(crate) unhealthy_from: Option<std::time::Instant>,
    /// SAMPLE_UNHEALTHY_AFTER_CHECKS: healthy for this many health checks, then unhealthy.
    pub(crate) healthy_checks_left: Option<std::sync::atomic::AtomicU64>,
    pub(crate) ws_close_timeout: Duration,
    /// The turns of the drain's WebSocket closes.
    pub(crate) ws_turns: WsTurns,
    pub(crate) phase: watch::Sender<Phase>,
    /// True at [`Phase::Abort`] only: what every connection task waits on to be dropped,
    /// without waking at each of the drain's other phases.
    aborted: watch::Sender<bool>,
    pub(crate) tracker: Tracker,
    pub(crate) stats: Stats,
}

impl Shared {
    pub(crate) fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            identity: Identity::new(&config.release, &config.instance, std::process::id()),
            unhealthy: config.unhealthy,
            broken: config.broken,
            hang: config.hang,
            unhealthy_from: config
                .unhealthy_after_ms
                .map(|ms| std::time::Instant::now() + Duration::from_millis(ms)),
            healthy_checks_left: config
                .unhealthy_after_checks
                .map(std::sync::atomic::AtomicU64::new),
            ws_close_timeout: config.ws_close_timeout(),
            ws_turns: WsTurns::default(),
            phase: watch::Sender::new(Phase::Serving),
            aborted: watch::Sender::new(false),
            tracker: Tracker::new(),
            stats: Stats::default(),
        })
    }

    /// Whether /healthz must say 503 (the unhealthy knobs). Counts one health check.
    pub(crate) fn is_unhealthy(&self) -> bool {
        use std::sync::atomic::Ordering;
        let checks_used_up = self.healthy_checks_left.as_ref().is_some_and(|left| {
            left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        });
        self.unhealthy
            || checks_used_up
            || self
                .unhealthy_from
                .is_some_and(|t| std::time::Instant::now() >= t)
    }

    /// The current phase.
    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// [`Phase::Abort`]: whatever is still open is dropped.
    pub(crate) fn abort(&self) {
        self.phase.send_replace(Phase::Abort);
        self.aborted.send_replace(true);
    }

    /// Resolves at [`Phase::Abort`] (immediately if it has come).
    pub(crate) async fn wait_abort(&self) {
        let mut rx = self.aborted.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(|aborted| *aborted).await;
    }

    /// Resolves once the phase satisfies `pred` (immediately if it already does).
    pub(crate) async fn wait_phase(&self, pred: impl Fn(&Phase) -> bool) -> Phase {
        let mut rx = self.phase.subscribe();
        // The sender lives in `self`, so this cannot fail.
        match rx.wait_for(|p| pred(p)).await {
            Ok(p) => *p,
            Err(_) => Phase::Abort,
        }
    }
}

/// The drain's WebSocket closes, spread over a window so that their reconnects reach the
/// successor at a rate it can accept: the n-th close (in the order the tasks see the drain)
/// waits n/open of the window. Used by the front, whose WebSockets each compute their delay.
#[derive(Debug, Default)]
pub struct WsPacing {
    open: AtomicU64,
    window_ms: AtomicU64,
    next: AtomicU64,
}

impl WsPacing {
    /// Spreads `open` closes at `rate` per second, within `at_most`.
    pub fn plan(&self, open: u64, rate: u64, at_most: Duration) -> Duration {
        let window = close_window(open, rate, at_most);
        self.open.store(open.max(1), Ordering::SeqCst);
        self.window_ms.store(window.as_millis() as u64, Ordering::SeqCst);
        window
    }

    /// How long this WebSocket waits before its close frame.
    pub fn delay(&self) -> Duration {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let open = self.open.load(Ordering::SeqCst).max(1);
        let window = self.window_ms.load(Ordering::SeqCst);
        Duration::from_millis(window * n.min(open) / open)
    }
}

/// How long `open` WebSocket closes take at `rate` per second, within `at_most` (rate 0: at
/// once).
pub fn close_window(open: u64, rate: u64, at_most: Duration) -> Duration {
    if rate == 0 || open == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(open * 1000 / rate).min(at_most)
    }
}

/// The drain's WebSocket closes as turns handed out at a rate. Every WebSocket queues for its
/// turn from the moment it opens (first come, first served); at the drain [`WsTurns::hand_out`]
/// gives out the turns evenly over the close window, then lets every WebSocket go.
///
/// Only the WebSocket whose turn has come wakes up. With each WebSocket watching the drain's
/// phase and computing its own delay, 10,000 of them woke in the same instant the closes
/// began: the old instance took both cores, and the successor's new connections waited
/// (`make bench-scale` at 10,000 WebSockets: the probe's p99 in the switches was 8.3 ms
/// against 2.9 ms steady; with the turns, 4.3–5.8 ms against 1.3–1.6 ms).
#[derive(Debug)]
pub struct WsTurns {
    turns: Semaphore,
}

impl Default for WsTurns {
    fn default() -> Self {
        Self {
            turns: Semaphore::new(0),
        }
    }
}

impl WsTurns {
    /// Resolves at this WebSocket's turn to close. Keep the future across polls: its place
    /// in the queue is taken at its first poll.
    pub async fn wait(&self) {
        // Err: the semaphore is closed, every turn has been given.
        if let Ok(permit) = self.turns.acquire().await {
            permit.forget();
        }
    }

    /// Gives out `open` turns evenly over `window` (the n-th at n/open of it), then every turn.
    pub async fn hand_out(&self, open: u64, window: Duration) {
        let start = Instant::now();
        for n in 0..open {
            if !window.is_zero() {
                sleep_until(start + window.mul_f64(n as f64 / open as f64)).await;
            }
            self.turns.add_permits(1);
        }
        self.turns.close();
    }
}

/// A response body.
pub(crate) type Body = Full<Bytes>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_closes_are_spread_at_the_rate_within_the_budget() {
        let p = WsPacing::default();
        assert_eq!(
            p.plan(10_000, 2_000, Duration::from_secs(8)),
            Duration::from_secs(5)
        );
        let delays: Vec<Duration> = (0..10_000).map(|_| p.delay()).collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[5_000], Duration::from_millis(2_500));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        // More than the budget allows: faster, never later than the budget.
        let p = WsPacing::default();
        assert_eq!(
            p.plan(100_000, 2_000, Duration::from_secs(8)),
            Duration::from_secs(8)
        );
        // Rate 0: all at once.
        let p = WsPacing::default();
        assert_eq!(p.plan(10, 0, Duration::from_secs(8)), Duration::ZERO);
        assert_eq!(p.delay(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn websocket_turns_come_one_at_a_time_at_the_rate_then_all_at_once() {
        let turns = Arc::new(WsTurns::default());
        let start = Instant::now();
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let turns = turns.clone();
                tokio::spawn(async move {
                    turns.wait().await;
                    start.elapsed()
                })
            })
            .collect();
        // Nobody's turn before the drain hands them out.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        let drain = Instant::now();
        turns.hand_out(100, Duration::from_secs(1)).await;
        let mut at = Vec::new();
        for w in waiters {
            at.push(w.await.unwrap() - (drain - start));
        }
        at.sort();
        assert_eq!(at[0], Duration::ZERO);
        assert_eq!(at[50], Duration::from_millis(500));
        assert_eq!(at[99], Duration::from_millis(990));
        // A WebSocket that was not counted goes at once once every turn is out.
        tokio::time::timeout(Duration::from_millis(1), turns.wait())
            .await
            .expect("the turns are all given");
    }

    #[test]
    fn body_has_fixed_length() {
        let a = fixed_body("v1", 7, "-");
        let b = fixed_body("a-very-long-release-identifier-2024-11-22", 4_000_000_000, "blue");
        let c = fixed_body("röllout\tx", 1, "ïnstance with spaces and more");
        for body in [&a, &b, &c] {
            assert_eq!(body.len(), BODY_LEN, "{body:?}");
            assert!(body.ends_with('\n'));
        }
        assert_eq!(
            a,
            "release=v1                       pid=0000000007 instance=-                       \n"
        );
        assert!(b.starts_with("release=a-very-long-release-iden pid=4000000000 instance=blue "));
        assert!(c.is_ascii());
    }

    #[test]
    fn phases_only_move_forward_in_rank() {
        let g = Instant::now();
        let order = [
            Phase::Serving,
            Phase::LameDuck,
            Phase::Closing {
                grace_until: g,
                idle_until: g,
            },
            Phase::Abort,
        ];
        for w in order.windows(2) {
            assert!(w[0].rank() < w[1].rank());
        }
        assert!(Phase::Serving.is_serving() && !Phase::LameDuck.is_serving());
        assert!(
            !Phase::LameDuck.is_closing()
                && Phase::Closing {
                    grace_until: g,
                    idle_until: g
                }
                .is_closing()
        );
        assert!(Phase::Abort.is_closing() && Phase::Abort.is_abort());
    }

    #[test]
    fn tracker_counts_guards() {
        let t = Tracker::new();
        let a = t.http();
        let b = t.ws();
        assert_eq!(t.open(), Open { http: 1, ws: 1 });
        drop(a);
        assert_eq!(t.open(), Open { http: 0, ws: 1 });
        drop(b);
        assert_eq!(t.open().total(), 0);
    }
}
