//! `handoff`: the operator's view of a service deployed by the hooks.
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Status and manual rollback of a service deployed with the handoff hooks.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The service (deploy.yml `service:`); its releases live in /opt/<service>.
    #[arg(long, short, env = "HANDOFF_SERVICE", global = true, default_value = "sample")]
    service: String,
    /// More output.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the socket, the running instances, the kept releases and which one serves.
    Status,
    /// Serve a kept release again, with zero downtime (default: the previous one).
    Rollback {
        /// The release to serve (a folder name under /opt/<service>/releases).
        #[arg(long)]
        to: Option<String>,
        /// Print the D-Bus operations instead of performing them.
        #[arg(long)]
        dry_run: bool,
        /// Roll back even while a deployment waits for its ValidateService (which then fails).
        #[arg(long)]
        force: bool,
        /// How long to wait for a deployment step that holds the lock.
        #[arg(long, default_value = "60s", value_parser = handoff::config::parse_duration)]
        lock_wait: Duration,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    handoff::cli::run("handoff", args.verbose, async move {
        match args.command {
            Command::Status => {
                print!("{}", handoff::lifecycle::status(&args.service).await?);
                Ok(())
            }
            Command::Rollback {
                to,
                dry_run,
                force,
                lock_wait,
            } => handoff::lifecycle::manual_rollback(&args.service, to, dry_run, force, lock_wait).await,
        }
    })
}
