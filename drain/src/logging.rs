//! Logging of a process that serves the socket (the sample app, the front): to stderr, without
//! timestamps (journald adds them), colour only on a terminal; `-v` shows the process's own
//! debug lines, `-vv` everything; `RUST_LOG` overrides.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber. `own` is the process's crate, as tracing names it (`sample_app`).
pub fn init(verbose: u8, own: &str) {
    let level = match verbose {
        0 => "info".to_string(),
        1 => format!("info,{own}=debug"),
        _ => format!("debug,{own}=trace"),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}
