//! application-start hook (see handoff::lifecycle::application_start).
use clap::Parser;

/// Copy the release out of the revision, install its units, and switch traffic to it with zero downtime.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    hook: handoff::cli::HookArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    handoff::cli::run_hook(
        "application-start",
        args.hook.verbose,
        handoff::lifecycle::application_start(&args.hook),
    )
}
