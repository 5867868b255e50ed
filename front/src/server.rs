//! [`run`]: serve, then drain on shutdown: the front's own restart.
//!
//! The front is replaced the way sample-app is (its README, "The drain
//! protocol"): a second front instance starts on the same systemd socket,
//! sends `READY=1` once it serves, and the old one gets SIGTERM. Times count
//! from the signal:
//!
//! 1. **Stop accepting at once**: the accept loops end and drop their
//!    listeners, which really closes our fds; new connections queue in the
//!    kernel for the successor.
//! 2. **`STOPPING=1`** and a `STATUS=` line.
//! 3. **Lame duck** (`--lame-duck-ms`, cut short when nothing is open): every
//!    response carries `Connection: close`, so keep-alive clients leave after
//!    their current request instead of racing a close with their next one.
//! 4. **First-request grace** (`--first-request-grace-ms`): a connection that
//!    has not sent a byte is not shut down before it does or the grace ends
//!    (hyper would reset a request already in the kernel buffer).
//! 5. **`graceful_shutdown()`** of every HTTP connection: in-flight requests
//!    finish (forwarded to their upstream as usual); an idle keep-alive
//!    connection is held until `--idle-hold-ms` after SIGTERM, so that it ends
//!    with its client's next request (answered with `Connection: close`) or the
//!    client's close instead of a close that races with a load balancer's next
//!    request on it. The hooks set the hold to deploy.yml `drain.idle_hold`
//!    (the balancer's idle timeout); it may outlast the drain timeout, which
//!    bounds busy work only. Once only idle connections are left, `STATUS=`
//!    says `idle hold: …` (the drain contract's [`IDLE_HOLD_STATUS`]): the hooks stop
//!    waiting for the stop, and systemd finishes it.
//! 6. **WebSockets**: 1012 to the client, 1001 to the upstream, up to
//!    `--ws-close-timeout-ms` for the handshakes.
//! 7. **Exit** once nothing is open: [`Outcome::Drained`] (exit 0); at
//!    `--drain-timeout-ms`, what is left is dropped: [`Outcome::DrainTimedOut`]
//!    (exit 1).
//!
//! `READY=1` is sent only once every inherited socket is served and the
//! control socket is bound. The control socket keeps answering during the
//! drain; its file is never removed (the successor has bound its own there).
//!
//! Steps 1 to 7 are the drain contract's coordinator, [`handoff_drain::drain`], which the
//! sample app runs too. Exit codes are decided in [`exit_code`] alone.
//!
//! [`IDLE_HOLD_STATUS`]: handoff_drain::IDLE_HOLD_STATUS

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use handoff_drain::{Budget, Notifier, Open, plural};
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::Config;
use crate::state::Shared;
use crate::{conn, control, route};

/// A usage error or a missing listening socket: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Drained completely within the drain timeout.
    Drained {
        /// Open at the signal.
        open_at_shutdown: Open,
        /// From the signal to the end.
        elapsed: Duration,
    },
    /// The drain timeout ran out; what was open was dropped.
    DrainTimedOut {
        /// Still open at the timeout.
        dropped: Open,
    },
}

/// The process exit code: 0 drained, 1 drain timed out or runtime failure,
/// 2 usage error or no listening socket.
pub fn exit_code(result: &anyhow::Result<Outcome>) -> u8 {
    match result {
        Ok(Outcome::Drained { .. }) => 0,
        Ok(Outcome::DrainTimedOut { .. }) => 1,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => 2,
        Err(_) => 1,
    }
}

/// Serves `listeners` until `shutdown` resolves, then drains (see the module
/// documentation). Reads the routes file and binds the control socket first;
/// errors before `READY=1` are start failures ([`UsageError`] for a bad
/// routes file).
pub async fn run(
    listeners: Vec<std::net::TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    run_on(listeners, config, shutdown, Vec::new()).await
}

/// [`run`], with client connections also accepted (and served) on each of
/// `workers`: further runtimes, typically one `current_thread` runtime per
/// core, each accepting from its own clone of every listening socket.
pub async fn run_on(
    listeners: Vec<std::net::TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
    workers: Vec<tokio::runtime::Handle>,
) -> anyhow::Result<Outcome> {
    let notifier = Notifier::new(config.notify);
    if listeners.is_empty() {
        return Err(UsageError("no listening socket to serve".into()).into());
    }
    let initial = route::starting_route(&config.routes, config.state.as_deref()).map_err(UsageError)?;
    match &initial {
        Some(r) => info!(release = %r.release, upstream = %r.upstream, "routing"),
        None => info!(
            routes = %config.routes.display(),
            "no routes file yet: answering 503 until a `route` command arrives"
        ),
    }
    let shared = Shared::new(&config, initial);
    if config.access_log {
        crate::access_log::start(workers.len() + 1);
    }
    if let Some(addr) = config.metrics {
        tokio::spawn(crate::metrics::serve(
            addr,
            shared.clone(),
            crate::access_log::dropped,
        ));
    }

    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut tokio_listeners = Vec::new();
    let mut worker_listeners = Vec::new();
    for l in listeners {
        l.set_nonblocking(true).context("listener: set_nonblocking")?;
        addrs.push(l.local_addr().context("listener: local_addr")?);
        for w in &workers {
            worker_listeners.push((w.clone(), l.try_clone().context("listener: clone")?));
        }
        tokio_listeners.push(TcpListener::from_std(l).context("listener: register with tokio")?);
    }
    let control = control::bind(&config.control)?;
    let control_task = tokio::spawn(control::serve(control, shared.clone(), config.drain_timeout()));

    let limit = Arc::new(Semaphore::new(connections_within_file_limit(
        config.max_connections,
    )));
    let mut accept_loops = JoinSet::new();
    let mut started = Vec::new();
    for l in tokio_listeners {
        let (tx, rx) = oneshot::channel();
        started.push(rx);
        accept_loops.spawn(conn::accept_loop(l, shared.clone(), limit.clone(), tx));
    }
    for (w, l) in worker_listeners {
        let (tx, rx) = oneshot::channel();
        started.push(rx);
        let (shared, limit) = (shared.clone(), limit.clone());
        // Registered with the worker's own reactor, so from inside it.
        accept_loops.spawn_on(
            async move {
                match TcpListener::from_std(l) {
                    Ok(l) => conn::accept_loop(l, shared, limit, tx).await,
                    Err(e) => warn!("listener: register with a worker runtime: {e}"),
                }
            },
            &w,
        );
    }
    for rx in started {
        rx.await.context("accept loop failed to start")?;
    }
    let serving = format!("front {} serving on {} socket(s)", config.id, addrs.len());
    notifier.send(&[NotifyState::Status(&serving), NotifyState::Ready]);
    info!(?addrs, control = %config.control.display(), "ready");

    shutdown.await;
    let budget = Budget {
        lame_duck: config.lame_duck(),
        drain_timeout: config.drain_timeout(),
        first_request_grace: config.first_request_grace(),
        idle_hold: config.idle_hold(),
        ws_close_timeout: shared.ws_close_timeout,
        ws_close_rate: shared.ws_close_rate,
    };
    let drained = handoff_drain::drain(&shared, budget, accept_loops, &notifier).await;
    control_task.abort();
    crate::access_log::flush();
    let (open_at_shutdown, elapsed) = (drained.open_at_shutdown, drained.elapsed);
    let outcome = match drained.dropped {
        Some(dropped) => Outcome::DrainTimedOut { dropped },
        None => Outcome::Drained {
            open_at_shutdown,
            elapsed,
        },
    };
    let summary = match &outcome {
        Outcome::Drained { elapsed, .. } => format!(
            "drain finished in {} ms ({} and {} open at the signal)",
            elapsed.as_millis(),
            plural(open_at_shutdown.http, "connection"),
            plural(open_at_shutdown.ws, "websocket"),
        ),
        Outcome::DrainTimedOut { dropped } => format!(
            "drain timed out after {} ms: dropped {} and {}",
            elapsed.as_millis(),
            plural(dropped.http, "connection"),
            plural(dropped.ws, "websocket"),
        ),
    };
    notifier.status(&summary);
    if drained.dropped.is_some() {
        warn!("{summary}");
    } else {
        info!("{summary}");
    }
    Ok(outcome)
}

/// Descriptors kept aside from the connections: listeners, the control socket, idle pooled
/// connections to the release, files.
const RESERVED_FDS: u64 = 256;

/// How many client connections fit this process's file limit, at most `max`. A client
/// connection takes one descriptor and, while it holds a WebSocket or a request in flight, one
/// to the release: past the limit, accept() and the connect to the release fail with EMFILE
/// (measured: 10,000 WebSockets under a 20,000 limit, 1,177 failed accepts and 29 answers 502).
/// Within it, connections beyond the count wait in the socket's queue. The soft limit is
/// raised to the hard one first, as servers do.
fn connections_within_file_limit(max: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let max = max.max(1);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return max;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let fit = usize::try_from(limit.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX);
    if fit >= max {
        return max;
    }
    let fit = fit.max(1);
    warn!(
        "front.max_connections is {max}, but this process may open {limit} files (LimitNOFILE=, or the \
         host's hard limit), about 2 per connection: serving at most {fit} client connections at once, \
         more wait in the socket's queue; raise the file limit to serve more"
    );
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let d = Ok(Outcome::Drained {
            open_at_shutdown: Open::default(),
            elapsed: Duration::ZERO,
        });
        assert_eq!(exit_code(&d), 0);
        assert_eq!(
            exit_code(&Ok(Outcome::DrainTimedOut {
                dropped: Open::default()
            })),
            1
        );
        assert_eq!(exit_code(&Err(UsageError("x".into()).into())), 2);
        assert_eq!(exit_code(&Err(anyhow::anyhow!("runtime"))), 1);
    }
}
