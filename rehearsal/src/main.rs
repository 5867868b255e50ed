//! `deploy-local`: rehearse a CodeDeploy in-place deployment on this host (see
//! handoff_rehearsal).
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Run a revision through the CodeDeploy agent's in-place lifecycle on this host, as the agent
/// would: ApplicationStop from the last successful install, DownloadBundle, BeforeInstall,
/// Install (`files:`), AfterInstall, ApplicationStart, ValidateService (and the traffic hooks
/// when listed), each script with the agent's environment, timeout and scripts.log.
///
/// Exit status: 0 deployed, 1 a lifecycle event failed, 2 the agent would refuse the bundle
/// (or bad arguments), 3 this host is not ready (rights, disk, a deployment already running).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The revision: a zip (as scripts/bundle builds it) or an unpacked bundle folder.
    #[arg(long, value_name = "PATH")]
    bundle: PathBuf,
    /// The deployment id (it names the release the hooks create). Default: a new one like
    /// the agent's, d- and 9 letters or digits.
    #[arg(long, value_name = "ID")]
    deployment_id: Option<String>,
    /// The agent's deployment root: archives, logs and deployment instructions live here.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/opt/codedeploy-agent/deployment-root"
    )]
    root: PathBuf,
    /// The deployment group's id (DEPLOYMENT_GROUP_ID; names its folder under the root).
    #[arg(long, value_name = "ID", default_value = "local-group")]
    group_id: String,
    /// The application's name (APPLICATION_NAME).
    #[arg(long, value_name = "NAME", default_value = "local-app")]
    application: String,
    /// The deployment group's name (DEPLOYMENT_GROUP_NAME).
    #[arg(long, value_name = "NAME", default_value = "local-group")]
    group: String,
    /// More output: each script's path and timeout, every lifecycle event.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = handoff_rehearsal::Options {
        bundle: args.bundle,
        deployment_id: args.deployment_id,
        root: args.root,
        group_id: args.group_id,
        application: args.application,
        group: args.group,
        verbose: args.verbose,
    };
    match handoff_rehearsal::run(&options) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("deploy-local: {e:#}");
            ExitCode::from(handoff::fault::exit_code(&e) as u8)
        }
    }
}
