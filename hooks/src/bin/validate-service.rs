//! validate-service hook (see handoff::lifecycle::validate_service).
use clap::Parser;

/// Check the new release through the real port; on failure, roll back in place to the previous release.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    hook: handoff::cli::HookArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    handoff::cli::run_hook(
        "validate-service",
        args.hook.verbose,
        handoff::lifecycle::validate_service(&args.hook),
    )
}
