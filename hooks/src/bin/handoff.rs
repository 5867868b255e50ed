//! `handoff`: the CodeDeploy lifecycle hooks (`handoff application-start`, run by the
//! bundle's `hooks/application-start`), the operator's view of a service deployed by them, and
//! the way into a project (init, bundle). One static executable: a revision carries one copy,
//! which is also the front of `strategy: proxy` when started as `handoff-front`.
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use handoff::cli::HookArgs;
use handoff::config::{Need, Ready, Strategy};

/// The CodeDeploy lifecycle hooks (a bundle's hooks/ run them), status and manual rollback of
/// the service they deploy, and init and bundle to deploy any app with them.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The service (deploy.yml `service:`) of status, rollback and uninstall; its releases live
    /// in /opt/<service>. Default: the one deploy.yml here names, or the only one deployed on
    /// this host. The hooks take it from the revision's deploy.yml.
    #[arg(long, short, env = "HANDOFF_SERVICE", global = true)]
    service: Option<String>,
    /// More output: -v shows each D-Bus call and its timing, -vv everything.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// ApplicationStop hook: leave the serving release running; check and record the service's
    /// state. CodeDeploy runs the previous revision's copy, with the new deployment's id.
    ApplicationStop {
        #[command(flatten)]
        hook: HookArgs,
        /// Really stop the service: drain every instance and close the socket.
        #[arg(long)]
        stop_service: bool,
    },
    /// BeforeInstall hook: preflight of rights, config, unit files, systemd, disk space and the
    /// deploy lock; changes nothing.
    BeforeInstall(HookArgs),
    /// ApplicationStart hook: copy the release out of the revision, install its units, and
    /// switch traffic to it with zero downtime.
    ApplicationStart(HookArgs),
    /// ValidateService hook: check the new release through the real port; on failure, roll
    /// back in place to the previous release.
    ValidateService(HookArgs),
    /// Show the socket, the running instances, the kept releases and which one serves. Exits 0
    /// only when the recorded release serves healthy (1 otherwise, 3 when systemd is unreachable).
    Status {
        /// One JSON object instead of text (its fields: README, "handoff status").
        #[arg(long)]
        json: bool,
    },
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
    /// Stop and remove the service's units and releases; start the unit a takeover stopped.
    /// The port is closed from the socket's stop until that unit listens: take the host out
    /// of the load balancer first. The app's own files and directories stay.
    Uninstall {
        /// Keep /opt/<service> (releases, state, logs).
        #[arg(long)]
        keep_releases: bool,
        /// Leave the unit that a takeover stopped stopped and disabled.
        #[arg(long)]
        no_restore: bool,
        /// Print the D-Bus operations instead of performing them.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for a deployment step that holds the lock.
        #[arg(long, default_value = "60s", value_parser = handoff::config::parse_duration)]
        lock_wait: Duration,
    },
    /// Write deploy.yml, appspec.yml and units/ into a project folder, for an app command.
    Init {
        /// The command that runs the server: a path in the project (bin/server) or a program
        /// on the host (/usr/bin/gunicorn).
        #[arg(long)]
        command: String,
        /// An argument to the command (repeat for more: --arg=--workers --arg=2 --arg=app:app).
        #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
        args: Vec<String>,
        /// The address clients connect to.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// handoff: the app serves the inherited socket (native); proxy: any app listening on
        /// 127.0.0.1:$PORT, behind our front; restart: stop, then start.
        #[arg(long, value_enum, default_value_t = Strategy::Handoff)]
        strategy: Strategy,
        /// notify: the app sends READY=1; probe: it cannot, it is ready once it answers.
        #[arg(long, value_enum, default_value_t = Ready::Notify)]
        ready: Ready,
        /// Hardening the runtime needs: jit (Node, JVM, PyPy), setuid (gunicorn). Comma-separated.
        #[arg(long, value_enum, value_delimiter = ',')]
        needs: Vec<Need>,
        /// The header in which the app names its instance (native mode), or "none".
        #[arg(long)]
        instance_header: Option<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// The project folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print a shell completion script: handoff completions bash > /etc/bash_completion.d/handoff
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Pack an app folder (with deploy.yml) and the hooks into a revision zip.
    Bundle {
        /// The app folder; appspec.yml and units/ are added from the shipped ones if missing.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The zip to write. Default: <service>.zip in the current folder.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Where the hook executables are. Default: beside this one (for another architecture:
        /// its static build beside this one's, target/<arch>-unknown-linux-musl/release).
        #[arg(long, value_name = "DIR")]
        hooks: Option<PathBuf>,
        /// The hosts' CPU architecture: the hooks packed must be built for it. Default:
        /// deploy.yml's `arch:`, or this machine's.
        #[arg(long, value_enum)]
        arch: Option<handoff::arch::Arch>,
    },
}

fn main() -> std::process::ExitCode {
    use handoff::{cli::run_hook, lifecycle};
    // A front unit starts this executable as `handoff-front` (a copy under that name): it
    // is the front then, and a revision carries no front binary of its own.
    if std::env::args_os().next().is_some_and(|a| {
        std::path::Path::new(&a).file_name() == Some(handoff::bundle::project::FRONT_NAME.as_ref())
    }) {
        return handoff_front::entry::main();
    }
    let args = Args::parse();
    let v = args.verbose;
    let command = match args.command {
        Command::ApplicationStop { hook, stop_service } => {
            return run_hook(
                "application-stop",
                v,
                lifecycle::application_stop(&hook, stop_service),
            );
        }
        Command::BeforeInstall(hook) => {
            return run_hook("before-install", v, lifecycle::before_install(&hook));
        }
        Command::ApplicationStart(hook) => {
            return run_hook("application-start", v, lifecycle::application_start(&hook));
        }
        Command::ValidateService(hook) => {
            return run_hook("validate-service", v, lifecycle::validate_service(&hook));
        }
        command => command,
    };
    handoff::cli::run("handoff", v, async move {
        let given = args.service.clone();
        let service = move || match &given {
            Some(s) => Ok(s.clone()),
            None => handoff::cli::infer_service(
                &std::env::current_dir()?,
                std::path::Path::new(handoff::units::UNIT_DIR),
            ),
        };
        match command {
            Command::ApplicationStop { .. }
            | Command::BeforeInstall(_)
            | Command::ApplicationStart(_)
            | Command::ValidateService(_) => unreachable!("the hooks are run above"),
            Command::Status { json } => {
                let report = handoff::status::gather(&service()?).await?;
                print!("{}", if json { report.json()? } else { report.text() });
                report.verdict()
            }
            Command::Rollback {
                to,
                dry_run,
                force,
                lock_wait,
            } => handoff::lifecycle::manual_rollback(&service()?, to, dry_run, force, lock_wait).await,
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(shell, &mut Args::command(), "handoff", &mut std::io::stdout());
                Ok(())
            }
            Command::Uninstall {
                keep_releases,
                no_restore,
                dry_run,
                lock_wait,
            } => {
                let options = handoff::uninstall::Options {
                    keep_releases,
                    restore: !no_restore,
                    dry_run,
                    lock_wait,
                };
                for line in handoff::uninstall::uninstall(&service()?, &options).await? {
                    println!("{line}");
                }
                Ok(())
            }
            Command::Init {
                command,
                args: app_args,
                listen,
                strategy,
                ready,
                needs,
                instance_header,
                force,
                dir,
            } => {
                let options = handoff::bundle::project::InitOptions {
                    service: match &args.service {
                        Some(s) => s.clone(),
                        None => handoff::bundle::project::service_for(&dir)?,
                    },
                    command,
                    args: app_args,
                    listen,
                    strategy,
                    ready,
                    needs,
                    instance_header,
                };
                for f in handoff::bundle::project::init(&dir, &options, force)? {
                    println!("wrote {}", f.display());
                }
                println!(
                    "next: make the app fit its mode (README \"Bring your own server\"), then: handoff bundle {}",
                    dir.display()
                );
                Ok(())
            }
            Command::Bundle {
                dir,
                output,
                hooks,
                arch,
            } => {
                let cfg = handoff::config::DeployConfig::load(&dir.join(handoff::config::FILE_NAME)).ok();
                let arch = arch
                    .or(cfg.as_ref().and_then(|c| c.arch))
                    .unwrap_or_else(handoff::arch::Arch::host);
                let hooks = match hooks {
                    Some(h) => h,
                    None => handoff::bundle::project::hooks_for(&std::env::current_exe()?, arch)?,
                };
                handoff::bundle::project::check_hooks_arch(&hooks, arch)?;
                let service = cfg.map(|c| c.service).unwrap_or_else(|| "bundle".into());
                let output = output.unwrap_or_else(|| PathBuf::from(format!("{service}.zip")));
                let done = handoff::bundle::project::bundle(&dir, &hooks, &output)?;
                eprint!("{}", done.summary);
                eprintln!("{}", done.report);
                if !done.written {
                    anyhow::bail!(handoff::fault::Fault::input(format!(
                        "{} was not written: the revision does not pass lint-bundle (above); fix the app folder and \
                         bundle again",
                        output.display()
                    )));
                }
                println!("{}", output.display());
                Ok(())
            }
        }
    })
}
