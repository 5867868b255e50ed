//! `lint-bundle`: checks a revision the way the CodeDeploy agent will (see handoff::bundle::appspec).
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Check a CodeDeploy revision (zip or unpacked folder) before deploying it: appspec.yml as
/// the agent reads it, deploy.yml, the unit templates (with systemd-analyze verify when
/// installed), and symlinks. Every problem is reported with its file, field and fix.
///
/// Exit status: 0 clean (warnings allowed unless --strict), 2 problems found.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The revision: a zip (as scripts/bundle builds it) or an unpacked bundle folder.
    path: PathBuf,
    /// Fail on warnings too (a script that is not executable, `runas:`, unknown keys).
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let report = match handoff::bundle::lint::lint(&args.path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("lint-bundle {}", args.path.display());
    print!("{report}");
    if report.errors() > 0 || (args.strict && report.warnings() > 0) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
