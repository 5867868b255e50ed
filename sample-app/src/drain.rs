//! The shutdown coordinator: serve, then drain without losing a request.
//!
//! [`run`] takes the listening sockets, the configuration and a `shutdown`
//! future (SIGTERM/SIGINT in the binary, anything in tests), in the style of
//! tokio-rs/mini-redis. It serves until `shutdown` resolves, then drains:
//!
//! 1. **Stop accepting at once.** Every accept loop ends and drops its
//!    listener, which really closes our fd. systemd (and a successor instance)
//!    hold their own copies of the socket, so connections that arrive from now
//!    on queue in the kernel for the successor instead of landing on a process
//!    that is going away.
//! 2. **`STOPPING=1`** (with a `STATUS=` line) so systemd shows the drain.
//! 3. **Lame duck** ([`Phase::LameDuck`], `--lame-duck-ms`): every further
//!    response carries `Connection: close`, so keep-alive clients leave after
//!    their current request and reconnect (to the successor). Closing an idle
//!    keep-alive connection ourselves would race with the client's next
//!    request on it: a client that does not retry would see a failure.
//!    `/healthz` still answers 200: it speaks for the host, which the successor
//!    serves.
//! 4. **First-request grace** (`--first-request-grace-ms`): hyper's
//!    `graceful_shutdown()` closes a connection it has not read a byte from,
//!    even when the request already sits in the kernel buffer, and the client
//!    sees a reset. A connection that has not delivered its first request is
//!    therefore not shut down before that request began or the grace (counted
//!    from SIGTERM) has run out.
//! 5. **Close HTTP connections** ([`Phase::Closing`], after the lame duck, or
//!    as soon as nothing is open): in-flight requests finish and their
//!    connection closes after the response. An idle keep-alive connection is
//!    held for `--idle-hold-ms` from SIGTERM (`HANDOFF_IDLE_HOLD_MS` from the
//!    hooks: deploy.yml `drain.idle_hold`, the balancer's idle timeout), so
//!    that it ends with its client's next request (answered with
//!    `Connection: close`) or the client's own close; only then does
//!    `graceful_shutdown()` close it. A load balancer pools its connections to
//!    this instance and sends on an idle one at any moment: closed at the end
//!    of a 500 ms lame duck, 3 requests of 950,000 through HAProxy failed in
//!    one `make fleet` run. The hold may outlast the drain timeout, which
//!    bounds busy work only. Once nothing but idle connections is left, the
//!    `STATUS=` line says so ([`IDLE_HOLD_STATUS`]): the hooks stop waiting
//!    for the stop, and systemd finishes it.
//!
//! [`IDLE_HOLD_STATUS`]: crate::state::IDLE_HOLD_STATUS
//! 6. **Close WebSockets** (same moment): a close frame with code 1012
//!    (service restart), then up to `--ws-close-timeout-ms` for the client's
//!    close frame. The closes are spread at `--ws-close-rate` per second (within
//!    the drain timeout), so the reconnects reach the successor at a rate its
//!    accept queue holds instead of all in one millisecond.
//! 7. **Exit** once nothing is open. Exit code 0 if that happened within
//!    `--drain-timeout-ms` of SIGTERM (or, with only idle connections left then,
//!    within the idle hold); otherwise whatever is left is dropped
//!    ([`Phase::Abort`]) and the outcome is [`Outcome::DrainTimedOut`]
//!    (exit 1). The binary also arms [`arm_hard_deadline`] at SIGTERM: a plain
//!    thread that exits(1) at `--hard-deadline-ms` whatever the runtime is
//!    doing, before systemd's `TimeoutStopSec=` turns into SIGKILL.
//!
//! Steps 1 to 7 are the drain contract's coordinator, [`handoff_drain::drain`], which the
//! front runs too; this module adds the sample app's start (the startup delay, the failure
//! knobs) and its report.
//!
//! Connection tasks follow the phase through a `watch` channel
//! ([`crate::state::Shared`]); the coordinator follows them through a
//! counter of open connections ([`crate::state::Tracker`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use handoff_drain::{Budget, Notifier, accept_until_drain, plural};
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::sleep;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::http;
use crate::state::{Open, Shared, Stats};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down and drained completely within the drain budget (exit 0).
    Drained(DrainReport),
    /// The drain budget ran out; the connections still open were dropped (exit 1).
    DrainTimedOut(DrainReport),
    /// `--crash-after-ms` fired: the process should die at once (exit 3).
    Crashed,
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Drained(_) => 0,
            Outcome::DrainTimedOut(_) => 1,
            Outcome::Crashed => 3,
        }
    }
}

/// What the drain found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Open when shutdown began.
    pub open_at_shutdown: Open,
    /// Still open when the drain budget ran out (dropped).
    pub dropped: Open,
    /// Connections accepted over the life of the process.
    pub connections: u64,
    /// Requests received over the life of the process.
    pub requests: u64,
    /// WebSockets established over the life of the process.
    pub websockets: u64,
    /// WebSockets closed with 1012 whose client answered the close.
    pub ws_close_acked: u64,
    /// WebSockets closed with 1012 whose client did not answer in time.
    pub ws_close_unacked: u64,
    /// From shutdown to the end of the drain.
    pub elapsed: Duration,
}

/// Serves `listeners` until `shutdown` resolves, then drains (see the module
/// documentation). Must run inside a tokio runtime with IO and time enabled.
///
/// Errors are start failures (`--fail-start`, unusable listeners); they happen
/// before `READY=1`.
pub async fn run(
    listeners: Vec<std::net::TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    tokio::pin!(shutdown);
    let notifier = Notifier::new(config.notify);
    let shared = Shared::new(&config);
    let release = shared.identity.release.clone();

    if listeners.is_empty() {
        bail!("no listening socket to serve");
    }
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut tokio_listeners = Vec::new();
    for l in listeners {
        l.set_nonblocking(true).context("listener: set_nonblocking")?;
        addrs.push(l.local_addr().context("listener: local_addr")?);
        tokio_listeners.push(TcpListener::from_std(l).context("listener: register with tokio")?);
    }

    if !config.startup_delay().is_zero() {
        notifier.status(&format!(
            "starting release {release}: startup delay {} ms",
            config.startup_delay_ms
        ));
        info!(delay_ms = config.startup_delay_ms, "startup delay");
        tokio::select! {
            () = sleep(config.startup_delay()) => {}
            () = &mut shutdown => {
                info!("shutdown requested during the startup delay: exiting");
                return Ok(Outcome::Drained(DrainReport::default()));
            }
        }
    }
    if config.fail_start {
        bail!("SAMPLE_FAIL_START is set: failing the start on purpose (before READY=1)");
    }

    // Start serving; READY=1 only once every accept loop runs.
    let mut accept_loops = JoinSet::new();
    let mut started = Vec::new();
    // No limit of our own: the file limit is the app's business.
    let unlimited = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    for listener in tokio_listeners {
        let (tx, rx) = oneshot::channel();
        started.push(rx);
        let shared = shared.clone();
        accept_loops.spawn(accept_until_drain(
            listener,
            shared.phase.subscribe(),
            unlimited.clone(),
            tx,
            move |stream, peer, _| http::spawn_connection(stream, peer, shared.clone()),
        ));
    }
    for rx in started {
        rx.await.context("accept loop failed to start")?;
    }
    let serving = format!("serving release {release} on {}", plural(addrs.len(), "socket"));
    if config.never_ready {
        notifier.status(&format!("{serving} (never ready: SAMPLE_NEVER_READY)"));
        warn!(?addrs, "serving, but never sending READY=1 (SAMPLE_NEVER_READY)");
    } else if config.unhealthy {
        let s = format!("{serving} (unhealthy: SAMPLE_UNHEALTHY)");
        notifier.send(&[NotifyState::Status(&s), NotifyState::Ready]);
        info!(?addrs, "ready (unhealthy on purpose: /healthz answers 503)");
    } else {
        notifier.send(&[NotifyState::Status(&serving), NotifyState::Ready]);
        info!(?addrs, "ready");
    }

    let crash = async {
        match config.crash_after() {
            Some(d) => sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = &mut shutdown => {}
        () = crash => {
            error!(after_ms = config.crash_after_ms, "SAMPLE_CRASH_AFTER_MS: crashing on purpose (exit 3)");
            return Ok(Outcome::Crashed);
        }
    }

    let budget = Budget {
        lame_duck: config.lame_duck(),
        drain_timeout: config.drain_timeout(),
        first_request_grace: config.first_request_grace(),
        idle_hold: config.idle_hold(),
        ws_close_timeout: config.ws_close_timeout(),
        ws_close_rate: config.ws_close_rate,
    };
    let drained = handoff_drain::drain(&shared, budget, accept_loops, &notifier).await;
    let (open_at_shutdown, timed_out) = (drained.open_at_shutdown, drained.dropped.is_some());
    let dropped = drained.dropped.unwrap_or_default();

    let s = &shared.stats;
    let report = DrainReport {
        open_at_shutdown,
        dropped,
        connections: Stats::get(&s.connections),
        requests: Stats::get(&s.requests),
        websockets: Stats::get(&s.websockets),
        ws_close_acked: Stats::get(&s.ws_close_acked),
        ws_close_unacked: Stats::get(&s.ws_close_unacked),
        elapsed: drained.elapsed,
    };
    let summary = format!(
        "drain {} in {} ms: {} and {} open at shutdown, {} dropped; {} on {} and {} served in total; {} closed with 1012 ({} unanswered)",
        if timed_out { "timed out" } else { "finished" },
        report.elapsed.as_millis(),
        plural(open_at_shutdown.http, "connection"),
        plural(open_at_shutdown.ws, "websocket"),
        dropped.total(),
        plural(report.requests as usize, "request"),
        plural(report.connections as usize, "connection"),
        plural(report.websockets as usize, "websocket"),
        plural(
            (report.ws_close_acked + report.ws_close_unacked) as usize,
            "websocket"
        ),
        report.ws_close_unacked,
    );
    notifier.status(&summary);
    if timed_out {
        warn!("{summary}");
        Ok(Outcome::DrainTimedOut(report))
    } else {
        info!("{summary}");
        Ok(Outcome::Drained(report))
    }
}

/// Arms the hard deadline: a plain OS thread (independent of the async
/// runtime, which may be wedged) that logs and exits the process with code 1
/// once `deadline` has passed. Keep it below the unit's `TimeoutStopSec=`.
pub fn arm_hard_deadline(deadline: Duration) {
    let spawned = std::thread::Builder::new()
        .name("hard-deadline".to_owned())
        .spawn(move || {
            std::thread::sleep(deadline);
            error!(
                deadline_ms = deadline.as_millis() as u64,
                "hard deadline reached during the drain: exiting with code 1"
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        error!("cannot arm the hard deadline: {e}");
    }
}
