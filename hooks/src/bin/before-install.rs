//! before-install hook (see handoff::lifecycle::before_install).
use clap::Parser;

/// Preflight: rights, config, unit files, systemd, disk space and the deploy lock; changes nothing.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    hook: handoff::cli::HookArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    handoff::cli::run_hook(
        "before-install",
        args.hook.verbose,
        handoff::lifecycle::before_install(&args.hook),
    )
}
