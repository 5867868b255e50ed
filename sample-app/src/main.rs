//! `sample-app`: see the library documentation and README.md.
//!
//! Exit codes: 0 drained cleanly, 1 start failure / drain timeout / hard
//! deadline, 2 usage error or no listening socket, 3 simulated crash.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use sample_app::listen::{self, Listener};
use sample_app::{Config, Outcome};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let matches = Config::command().get_matches();
    let config = match Config::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    handoff_drain::logging::init(config.verbose, "sample_app");
    // The hooks' hold (deploy.yml drain.idle_hold) unless the app was given its own.
    let own_hold = matches.value_source("idle_hold_ms") != Some(ValueSource::DefaultValue);
    let host_hold = std::env::var("HANDOFF_IDLE_HOLD_MS").ok();
    let config = match config.with_host_idle_hold(own_hold, host_hold.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    for w in config.warnings() {
        warn!("{w}");
    }

    let listeners = match sockets(&config) {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    info!(
        release = %config.release,
        instance = %config.instance,
        pid = std::process::id(),
        sockets = %listeners.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        "starting"
    );

    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let hard_deadline = config.hard_deadline();
    let exit_at_once = config.exit_on_sigterm;
    let result = runtime.block_on(async move {
        let shutdown = shutdown_signal(hard_deadline, exit_at_once)?;
        let listeners = listeners.into_iter().map(|l| l.listener).collect();
        sample_app::run(listeners, config, shutdown).await
    });
    match result {
        Ok(Outcome::Crashed) => std::process::exit(3),
        Ok(outcome) => {
            let code = outcome.exit_code();
            info!(code, "exit");
            ExitCode::from(code)
        }
        Err(e) => {
            error!("{e:#}");
            info!(code = 1, "exit");
            ExitCode::from(1)
        }
    }
}

/// Inherited sockets, or `--bind` ones; both at once is ambiguous and refused.
fn sockets(config: &Config) -> Result<Vec<Listener>, String> {
    let activated = std::env::var_os("LISTEN_FDS").is_some();
    if !config.bind.is_empty() {
        if activated {
            return Err(
                "both LISTEN_FDS (socket activation) and --bind/SAMPLE_BIND are set; use one".to_owned(),
            );
        }
        warn!(bind = ?config.bind, "binding sockets myself (--bind): for local runs only");
        return listen::bind(&config.bind).map_err(|e| e.to_string());
    }
    // SAFETY: no other thread exists yet (the runtime is built afterwards), and
    // this is the only call.
    unsafe { listen::from_systemd() }.map_err(|e| e.to_string())
}

/// Resolves at the first SIGTERM or SIGINT, and arms the hard deadline then. With
/// `exit_at_once` (SAMPLE_EXIT_ON_SIGTERM) the process exits there instead, like an app that
/// does nothing for a deploy: whatever is open is cut.
fn shutdown_signal(
    hard_deadline: std::time::Duration,
    exit_at_once: bool,
) -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if exit_at_once {
            info!("{name}: exiting at once (SAMPLE_EXIT_ON_SIGTERM: no drain)");
            std::process::exit(0);
        }
        info!("{name}: shutting down");
        sample_app::arm_hard_deadline(hard_deadline);
    })
}
