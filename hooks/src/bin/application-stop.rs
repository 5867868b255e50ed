//! ApplicationStop hook. CodeDeploy runs the *previous* revision's copy with the new
//! deployment's id: it leaves the service serving and records that a deployment began.
use clap::Parser;

/// Leave the serving release running; check and record the service's state.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    hook: handoff::cli::HookArgs,
    /// Really stop the service: drain every instance and close the socket.
    #[arg(long)]
    stop_service: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    handoff::cli::run_hook(
        "application-stop",
        args.hook.verbose,
        handoff::lifecycle::application_stop(&args.hook, args.stop_service),
    )
}
