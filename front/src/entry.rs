//! The front's process from start to exit: flags, sockets, runtimes, signals and logging, so
//! that a binary's `main` is one call.

use std::process::ExitCode;

use crate::{Config, exit_code};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

/// The front's process: parses the flags (and `HANDOFF_FRONT_*`), takes the sockets systemd
/// passes, serves and drains on one runtime per core, and maps the end to an exit code. The
/// `handoff-front` binary is this; `handoff` runs it too when started under that name.
pub fn main() -> ExitCode {
    let mut config = Config::parse();
    handoff_drain::logging::init(config.verbose, "handoff_front");
    config.notify = true;
    // SAFETY: no other thread exists yet (the runtime is built afterwards); only call.
    let result = match unsafe { crate::listen::sockets(&config.bind) } {
        Err(e) => Err(anyhow::Error::new(e)),
        Ok(listeners) => {
            info!(
                id = %config.id,
                pid = std::process::id(),
                sockets = %listeners.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                trusted_proxies = %config.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                "starting"
            );
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
            match per_core(workers) {
                Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
                Ok((rt, others)) => rt.block_on(async move {
                    let shutdown = shutdown_signal()?;
                    let listeners = listeners.into_iter().map(|l| l.listener).collect();
                    crate::run_on(listeners, config, shutdown, others).await
                }),
            }
        }
    };
    if let Err(e) = &result {
        error!("{e:#}");
    }
    let code = exit_code(&result);
    info!(code, "exit");
    ExitCode::from(code)
}

/// One `current_thread` runtime per worker: this thread's (returned to be
/// driven by `block_on`) and `n - 1` more, each driven by a thread of its own
/// for the life of the process. Each accepts and serves its own client
/// connections with its own upstream connections: no task moves between
/// threads, so a request causes no cross-thread wake-up.
fn per_core(n: usize) -> std::io::Result<(tokio::runtime::Runtime, Vec<tokio::runtime::Handle>)> {
    let build = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    crate::route::set_workers(n);
    let mut others = Vec::new();
    for i in 1..n {
        let rt = build()?;
        others.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("front-worker-{i}"))
            .spawn(move || {
                crate::route::set_worker_index(i);
                rt.block_on(std::future::pending::<()>());
            })?;
    }
    Ok((build()?, others))
}

/// Resolves at the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!("{name}: draining");
    })
}
