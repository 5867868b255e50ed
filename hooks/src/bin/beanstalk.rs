//! `beanstalk`: the hooks for Elastic Beanstalk's platform hooks (see handoff::beanstalk).
use clap::{Parser, Subcommand};
use handoff::cli::HookArgs;

/// Run the zero-downtime switch from an Elastic Beanstalk platform hook: `.platform/hooks/predeploy`
/// (preflight), `.platform/hooks/postdeploy` (switch and validate), `.platform/confighooks/postdeploy`
/// (check, change nothing). Run from the bundle's folder, as the engine does.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// More output: -v shows each D-Bus call and its timing, -vv everything.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand)]
enum Step {
    /// predeploy (in /var/app/staging): preflight of the staged bundle; changes nothing.
    Predeploy(HookArgs),
    /// postdeploy (in /var/app/current): copy the release, switch to it, validate it; else the
    /// previous release keeps serving and this exits non-zero.
    Postdeploy(HookArgs),
    /// A configuration deployment's postdeploy: check the serving release answers; switch nothing.
    Confighook(HookArgs),
}

fn main() -> std::process::ExitCode {
    use handoff::{beanstalk, cli};
    let args = Args::parse();
    match args.step {
        Step::Predeploy(hook) => {
            cli::run_hook("beanstalk predeploy", args.verbose, beanstalk::predeploy(&hook))
        }
        Step::Postdeploy(hook) => {
            cli::run_hook("beanstalk postdeploy", args.verbose, beanstalk::postdeploy(&hook))
        }
        Step::Confighook(hook) => {
            cli::run("beanstalk confighook", args.verbose, beanstalk::confighook(&hook))
        }
    }
}
