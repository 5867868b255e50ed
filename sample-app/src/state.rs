//! State shared by the coordinator and every connection task: who we are
//! (release, instance, pid), which drain phase we are in, what is open, and
//! counters for the final report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::sync::watch;

use crate::config::Config;

pub use handoff_drain::pacing::{WsTurns, close_window};
pub use handoff_drain::phase::{
    Busy, BusyCounter, Guard, IDLE_HOLD_STATUS, Open, Phase, Tracker, idle_hold_status,
};

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

/// A response body.
pub(crate) type Body = Full<Bytes>;

/// A plain-text response.
pub(crate) fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    body(status, Bytes::from_static(s.as_bytes()))
}

/// A plain-text response with a body of its own.
pub(crate) fn body(status: StatusCode, b: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::new(b));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl handoff_drain::Draining for Shared {
    fn set_phase(&self, phase: Phase) {
        if phase.is_abort() {
            self.abort();
        } else {
            self.phase.send_replace(phase);
        }
    }

    fn open(&self) -> Open {
        self.tracker.open()
    }

    fn subscribe_open(&self) -> watch::Receiver<Open> {
        self.tracker.subscribe()
    }

    fn busy(&self) -> usize {
        self.tracker.busy()
    }

    fn ws_turns(&self) -> &WsTurns {
        &self.ws_turns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
