//! `handoff-front`: see the library documentation.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use handoff_front::{Config, exit_code};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let mut config = Config::parse();
    init_tracing(config.verbose);
    config.notify = true;
    // SAFETY: no other thread exists yet (the runtime is built afterwards); only call.
    let result = match unsafe { handoff_front::listen::sockets(&config.bind) } {
        Err(e) => Err(anyhow::Error::new(e)),
        Ok(listeners) => {
            info!(
                id = %config.id,
                pid = std::process::id(),
                sockets = %listeners.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                "starting"
            );
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
            {
                Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
                Ok(rt) => rt.block_on(async move {
                    let shutdown = shutdown_signal()?;
                    let listeners = listeners.into_iter().map(|l| l.listener).collect();
                    handoff_front::run(listeners, config, shutdown).await
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

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "info,handoff_front=debug",
        _ => "debug,handoff_front=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}
