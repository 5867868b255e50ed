//! The drain's phases, and what is open: the state every connection task of a draining
//! process (the sample app, the front) follows and reports to.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

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
    pub fn new() -> Self {
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

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
