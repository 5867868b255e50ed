//! The coordinator: what happens between the signal and the exit, step by step (the crate's
//! documentation lists the steps). The sample app and the front both call [`drain`] once their
//! shutdown future resolves, and [`accept_until_drain`] for each listening socket before.
//!
//! A process exposes its state through [`Draining`]: the phase its connection tasks follow,
//! what is open, how many requests are being handled, and its WebSocket close turns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use crate::{Open, Phase, WsTurns, close_window, idle_hold_status};

/// The drain's settings (each process's `--…-ms` flags).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// How long every response says `Connection: close` before anything is closed.
    pub lame_duck: Duration,
    /// From the signal to dropping what busy work is left.
    pub drain_timeout: Duration,
    /// How long a connection that has not sent its first byte is left alone.
    pub first_request_grace: Duration,
    /// How long an idle keep-alive connection is held (a load balancer's idle timeout).
    pub idle_hold: Duration,
    /// How long a WebSocket's close handshake may take.
    pub ws_close_timeout: Duration,
    /// WebSocket closes per second (0: all at once).
    pub ws_close_rate: u64,
}

/// What a draining process shows the coordinator.
pub trait Draining: Send + Sync + 'static {
    /// Moves its connection tasks to `phase`.
    fn set_phase(&self, phase: Phase);
    /// What is open now.
    fn open(&self) -> Open;
    /// Changes of [`Draining::open`].
    fn subscribe_open(&self) -> watch::Receiver<Open>;
    /// Requests being handled now.
    fn busy(&self) -> usize;
    /// The turns its WebSockets wait for to close.
    fn ws_turns(&self) -> &WsTurns;
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Open at the signal.
    pub open_at_shutdown: Open,
    /// What the drain timeout dropped; `None` when everything ended in time.
    pub dropped: Option<Open>,
    /// From the signal to the end.
    pub elapsed: Duration,
}

/// Talks to systemd (`sd_notify`), or not (no `NOTIFY_SOCKET`, or in tests).
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier that sends when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    /// Sends `states`; a failure is logged, never fatal.
    pub fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(states)
        {
            warn!("sd_notify failed: {e}");
        }
    }

    /// Sends a `STATUS=` line.
    pub fn status(&self, s: &str) {
        self.send(&[NotifyState::Status(s)]);
    }
}

/// `1 connection`, `2 connections`.
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The `STATUS=` line while busy work is left.
pub fn draining_status(o: Open) -> String {
    format!(
        "draining: {}, {}",
        plural(o.http, "connection"),
        plural(o.ws, "websocket")
    )
}

/// Accepts connections from `listener` until the phase leaves [`Phase::Serving`], then drops
/// (closes) it. Each accepted connection goes to `serve` with a permit of `limit`: with every
/// permit taken it stops accepting, and new connections wait in the kernel's queue. `started`
/// is told once the loop runs (`READY=1` waits for every loop).
pub async fn accept_until_drain(
    listener: TcpListener,
    mut phase: watch::Receiver<Phase>,
    limit: Arc<Semaphore>,
    started: oneshot::Sender<()>,
    mut serve: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let addr = listener.local_addr().ok();
    let _ = started.send(());
    loop {
        let permit = tokio::select! {
            biased;
            () = not_serving(&mut phase) => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        tokio::select! {
            biased;
            () = not_serving(&mut phase) => break,
            res = listener.accept() => match res {
                Ok((stream, peer)) => serve(stream, peer, permit),
                Err(e) => {
                    // Per-connection errors (ECONNABORTED, …) and resource exhaustion
                    // (EMFILE, …): log, breathe, go on.
                    warn!("accept on {addr:?} failed: {e}");
                    sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    debug!(?addr, "listener closed");
}

/// Resolves once the phase has left [`Phase::Serving`] (its `Ref` is not `Send`: not kept).
async fn not_serving(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| !p.is_serving()).await;
}

/// Drains `shared` from now on (the signal has come): stops the `accept_loops`, then the lame
/// duck, the closes and the wait, within `budget`. Sends `STOPPING=1` and the `STATUS=` lines
/// through `notifier`; the caller reports the end.
pub async fn drain<S: Draining>(
    shared: &Arc<S>,
    budget: Budget,
    mut accept_loops: JoinSet<()>,
    notifier: &Notifier,
) -> Drained {
    // (1) Stop accepting: the accept loops end and drop (close) their listeners.
    let t0 = Instant::now();
    let deadline = t0 + budget.drain_timeout;
    // Busy work ends by the drain deadline; idle connections may be held past it.
    let final_deadline = deadline.max(t0 + budget.idle_hold + Duration::from_secs(1));
    let open_at_shutdown = shared.open();
    shared.set_phase(Phase::LameDuck);
    while accept_loops.join_next().await.is_some() {}
    // (2) Tell systemd.
    notifier.send(&[
        NotifyState::Stopping,
        NotifyState::Status(&draining_status(open_at_shutdown)),
    ]);
    info!(
        connections = open_at_shutdown.http,
        websockets = open_at_shutdown.ws,
        "draining: listeners closed, lame duck for {} ms",
        budget.lame_duck.as_millis()
    );
    // (3) Lame duck, cut short when nothing is open.
    let mut open_rx = shared.subscribe_open();
    tokio::select! {
        () = sleep_until((t0 + budget.lame_duck).min(deadline)) => {}
        _ = open_rx.wait_for(|o| o.total() == 0) => {}
    }
    // (4) Close: HTTP connections after their first-request grace, idle ones after the hold;
    // the WebSockets at their turns, spread at the rate within what is left of the budget.
    let ws_open = shared.open().ws as u64;
    let ws_budget = deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(budget.ws_close_timeout);
    let ws_window = close_window(ws_open, budget.ws_close_rate, ws_budget);
    if ws_open > 0 {
        debug!(
            websockets = ws_open,
            window_ms = ws_window.as_millis() as u64,
            "closing websockets"
        );
    }
    shared.set_phase(Phase::closing(
        t0,
        budget.first_request_grace,
        budget.idle_hold,
        final_deadline,
    ));
    let turns = shared.clone();
    tokio::spawn(async move { turns.ws_turns().hand_out(ws_open, ws_window).await });
    // (5) Wait until nothing is open, or the budget ends.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = String::new();
    let busy = |o: Open| o.ws > 0 || shared.busy() > 0;
    let mut past_deadline = false;
    let timed_out = loop {
        tokio::select! {
            _ = open_rx.wait_for(|o| o.total() == 0) => break false,
            () = sleep_until(deadline), if !past_deadline => {
                past_deadline = true;
                if busy(shared.open()) {
                    break true;
                }
            }
            () = sleep_until(final_deadline) => break true,
            _ = tick.tick() => {
                let now = shared.open();
                let status = if busy(now) {
                    draining_status(now)
                } else {
                    idle_hold_status(now.http, budget.idle_hold)
                };
                if status != reported {
                    notifier.status(&status);
                    debug!(connections = now.http, websockets = now.ws, "{status}");
                    reported = status;
                }
            }
        }
    };
    let dropped = timed_out.then(|| {
        let left = shared.open();
        warn!(
            connections = left.http,
            websockets = left.ws,
            "drain timeout ({} ms): dropping what is still open",
            budget.drain_timeout.as_millis()
        );
        shared.set_phase(Phase::Abort);
        left
    });
    if dropped.is_some() {
        // Aborted tasks end at their next poll; don't wait long for them.
        let _ = tokio::time::timeout(Duration::from_millis(500), open_rx.wait_for(|o| o.total() == 0)).await;
    }
    Drained {
        open_at_shutdown,
        dropped,
        elapsed: t0.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BusyCounter, Tracker};

    struct Process {
        phase: watch::Sender<Phase>,
        tracker: Tracker,
        busy: BusyCounter,
        turns: WsTurns,
    }

    impl Draining for Process {
        fn set_phase(&self, phase: Phase) {
            self.phase.send_replace(phase);
        }
        fn open(&self) -> Open {
            self.tracker.open()
        }
        fn subscribe_open(&self) -> watch::Receiver<Open> {
            self.tracker.subscribe()
        }
        fn busy(&self) -> usize {
            self.busy.get()
        }
        fn ws_turns(&self) -> &WsTurns {
            &self.turns
        }
    }

    fn process() -> Arc<Process> {
        Arc::new(Process {
            phase: watch::Sender::new(Phase::Serving),
            tracker: Tracker::new(),
            busy: BusyCounter::default(),
            turns: WsTurns::default(),
        })
    }

    const BUDGET: Budget = Budget {
        lame_duck: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(10),
        first_request_grace: Duration::from_millis(200),
        idle_hold: Duration::ZERO,
        ws_close_timeout: Duration::from_secs(1),
        ws_close_rate: 0,
    };

    #[tokio::test(start_paused = true)]
    async fn nothing_open_ends_at_once_without_the_lame_duck() {
        let p = process();
        let d = drain(&p, BUDGET, JoinSet::new(), &Notifier::new(false)).await;
        assert_eq!(d.dropped, None);
        assert!(d.elapsed < BUDGET.lame_duck, "{:?}", d.elapsed);
        assert!(p.phase.borrow().is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_waited_for_and_busy_work_dropped_at_the_deadline() {
        let p = process();
        // One that ends within the budget.
        let short = p.tracker.http();
        let mut phase = p.phase.subscribe();
        tokio::spawn(async move {
            let _ = phase.wait_for(Phase::is_closing).await;
            sleep(Duration::from_secs(2)).await;
            drop(short);
        });
        let d = drain(&p, BUDGET, JoinSet::new(), &Notifier::new(false)).await;
        assert_eq!(d.dropped, None);
        assert!(d.elapsed >= Duration::from_millis(2500), "{:?}", d.elapsed);

        // One that is busy past it.
        let p = process();
        let _stuck = p.tracker.http();
        let _busy = p.busy.enter();
        let d = drain(&p, BUDGET, JoinSet::new(), &Notifier::new(false)).await;
        assert_eq!(d.dropped, Some(Open { http: 1, ws: 0 }));
        assert_eq!(*p.phase.borrow(), Phase::Abort);
        assert!(d.elapsed >= BUDGET.drain_timeout, "{:?}", d.elapsed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_held_past_the_drain_timeout_until_the_hold() {
        let p = process();
        let _idle = p.tracker.http();
        let budget = Budget {
            idle_hold: Duration::from_secs(30),
            ..BUDGET
        };
        let d = drain(&p, budget, JoinSet::new(), &Notifier::new(false)).await;
        // Not busy at the drain timeout: held on, and dropped at the hold's end.
        assert_eq!(d.dropped, Some(Open { http: 1, ws: 0 }));
        assert!(d.elapsed >= Duration::from_secs(30), "{:?}", d.elapsed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_accept_loop_stops_at_the_lame_duck_and_closes_its_listener() {
        let p = process();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let mut loops = JoinSet::new();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        loops.spawn(accept_until_drain(
            listener,
            p.phase.subscribe(),
            Arc::new(Semaphore::new(10)),
            tx,
            move |_, _, _| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            },
        ));
        rx.await.unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        drain(&p, BUDGET, loops, &Notifier::new(false)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is still open"
        );
    }
}
