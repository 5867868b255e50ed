//! What every hook executable shares: its arguments (the CodeDeploy environment, as flags
//! too), logging to stderr without timestamps (the agent adds them), finding its revision,
//! and turning the outcome into an exit code.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::config::{self, DeployConfig};
use crate::fault::{self, Fault};

/// Arguments every hook takes. CodeDeploy passes them as environment variables; by hand,
/// pass them as flags.
#[derive(Debug, Clone, Args)]
pub struct HookArgs {
    /// The deployment id; it names the release (CodeDeploy sets DEPLOYMENT_ID).
    #[arg(long, env = "DEPLOYMENT_ID")]
    pub deployment_id: Option<String>,

    /// The lifecycle event being run (CodeDeploy sets LIFECYCLE_EVENT); for the logs.
    #[arg(long, env = "LIFECYCLE_EVENT", hide_env_values = true)]
    pub lifecycle_event: Option<String>,

    /// The CodeDeploy application (CodeDeploy sets APPLICATION_NAME); for the logs.
    #[arg(long, env = "APPLICATION_NAME", hide_env_values = true)]
    pub application_name: Option<String>,

    /// The deployment group (CodeDeploy sets DEPLOYMENT_GROUP_NAME); for the logs.
    #[arg(long, env = "DEPLOYMENT_GROUP_NAME", hide_env_values = true)]
    pub deployment_group_name: Option<String>,

    /// The revision folder holding deploy.yml (the agent's deployment-archive). Default: found
    /// from this executable's own path.
    #[arg(long, value_name = "DIR")]
    pub revision: Option<PathBuf>,

    /// Print the D-Bus operations and file writes this hook would make, and make none.
    #[arg(long)]
    pub dry_run: bool,

    /// How long to wait for another deployment step that holds the lock.
    #[arg(long, default_value = "60s", value_parser = config::parse_duration, value_name = "DURATION")]
    pub lock_wait: Duration,
}

impl HookArgs {
    /// The release this deployment installs: the deployment id.
    pub fn release(&self) -> Result<String> {
        let id = self.deployment_id.clone().ok_or_else(|| {
            Fault::input("no deployment id: CodeDeploy sets DEPLOYMENT_ID; by hand, pass --deployment-id ID")
        })?;
        if !config::is_safe_name(&id, false) {
            anyhow::bail!(Fault::input(format!(
                "deployment id '{id}' is not a usable release name; use letters, digits, '-' and '_'"
            )));
        }
        Ok(id)
    }

    pub fn deployment(&self) -> String {
        self.deployment_id.clone().unwrap_or_else(|| "-".into())
    }

    /// The revision folder: --revision, or the nearest folder above this executable that
    /// holds deploy.yml (the bundle puts hooks in `hooks/`).
    pub fn revision_dir(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.revision {
            if !dir.join(config::FILE_NAME).is_file() {
                anyhow::bail!(Fault::input(format!(
                    "--revision {}: no {} there; point it at the unpacked bundle",
                    dir.display(),
                    config::FILE_NAME
                )));
            }
            return Ok(dir.clone());
        }
        let exe = std::env::current_exe()?;
        find_revision(&exe).ok_or_else(|| {
            Fault::input(format!(
                "cannot find {} in any folder above {}; run the hook from its bundle or pass --revision DIR",
                config::FILE_NAME,
                exe.display()
            ))
            .into()
        })
    }

    pub fn config(&self) -> Result<(PathBuf, DeployConfig)> {
        let dir = self.revision_dir()?;
        let cfg =
            DeployConfig::load(&dir.join(config::FILE_NAME)).map_err(|e| Fault::input(format!("{e:#}")))?;
        Ok((dir, cfg))
    }
}

pub fn find_revision(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .skip(1)
        .take(3)
        .find(|d| d.join(config::FILE_NAME).is_file())
        .map(Path::to_path_buf)
}

/// Logs to stderr, no timestamps, no targets: the agent's scripts.log adds the time.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANDOFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,handoff={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

/// Runs a lifecycle hook to completion and decides its exit code; its last line says where
/// its time went (see [`crate::timing`]): the app, systemd, or its own work.
pub fn run_hook<F>(name: &str, verbose: u8, hook: F) -> ExitCode
where
    F: Future<Output = Result<()>>,
{
    crate::timing::start();
    let code = run(name, verbose, hook);
    tracing::info!("{name}: {}", crate::timing::split().describe());
    code
}

static SETTLES_ON_SIGTERM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says that the running hook handles SIGTERM itself (it settles the service, then ends): [`run`]
/// then waits for it instead of dropping it.
pub fn settles_on_sigterm() {
    SETTLES_ON_SIGTERM.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The release this process deploys and its service's folder (`/opt/<service>`), once known:
/// what SIGTERM's message and exit code are decided from ([`after_sigterm`]).
static DEPLOYING: std::sync::Mutex<Option<(PathBuf, String)>> = std::sync::Mutex::new(None);

/// Says that this process deploys `release` of the service whose folder is `root`: after its
/// commit (`state.serving` in `root/state.json`), a SIGTERM ends the hook with success.
pub fn deploying(root: &Path, release: &str) {
    *DEPLOYING.lock().unwrap_or_else(|e| e.into_inner()) = Some((root.to_path_buf(), release.to_string()));
}

/// Says that this process deploys nothing (anymore): ValidateService judges a release, and a
/// SIGTERM there never counts as success.
pub fn not_deploying() {
    *DEPLOYING.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

static TERMINATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a SIGTERM ended a step of this process ([`after_sigterm`]): a process that runs
/// several steps (Beanstalk's postdeploy) runs no more after one.
pub fn sigterm_received() -> bool {
    TERMINATED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The outcome of a hook that SIGTERM (the agent's hook timeout) ended, decided from the state
/// on disk, in one place: when the release this process deploys ([`deploying`]) serves (its
/// switch was committed: `state.serving`, and no `switching`), the hook succeeded (exit 0) and
/// the old release's drain goes on in systemd; otherwise it failed (exit 1) and the message
/// says what serves. `settled` is what [`crate::lifecycle`]'s settling did, if it ran.
pub fn after_sigterm(settled: Option<&str>) -> Result<()> {
    const INTERRUPTED: &str = "interrupted by SIGTERM (the agent's hook timeout?)";
    TERMINATED.store(true, std::sync::atomic::Ordering::SeqCst);
    let target = DEPLOYING.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let state = target
        .as_ref()
        .and_then(|(root, _)| crate::release::ReleaseStore::new(root).load_state().ok());
    let serves = |release: &str| {
        state
            .as_ref()
            .is_some_and(|s| s.serving.as_deref() == Some(release) && s.switching.is_none())
    };
    match (&target, settled) {
        (Some((_, release)), Some(what)) if serves(release) => {
            tracing::warn!(
                "{INTERRUPTED} and settled: {what}. {release} serves: its switch was committed before SIGTERM, \
                 so this step succeeded"
            );
            Ok(())
        }
        (Some((_, release)), None) if serves(release) => {
            tracing::warn!(
                "{INTERRUPTED} after {release}'s switch was committed: {release} serves. The old release's drain \
                 goes on in systemd, and the next hook (or deployment) retires whatever is left"
            );
            Ok(())
        }
        (_, Some(what)) => Err(Fault::deployment(format!("{INTERRUPTED} and settled: {what}. Deploy again")).into()),
        (Some((_, release)), None) => {
            let serving = match state.as_ref().and_then(|s| s.serving.clone()) {
                Some(s) => format!("{s} (the previous release) serves"),
                None => "no release is recorded as serving".into(),
            };
            Err(Fault::deployment(format!(
                "{INTERRUPTED} before {release}'s switch was committed: {release} does not serve; {serving}. \
                 systemd finishes the jobs already queued, and the next hook undoes what is left. Run the hook \
                 again or redeploy: every hook converges from where this one stopped"
            ))
            .into())
        }
        (None, None) => Err(Fault::deployment(format!(
            "{INTERRUPTED}; systemd finishes the jobs already queued. Run the hook again or redeploy: every hook \
             converges from where this one stopped"
        ))
        .into()),
    }
}

/// Runs a command to completion and decides its exit code. SIGTERM (the agent's timeout) ends
/// it with [`after_sigterm`]'s verdict (success when the release it deploys already serves),
/// unless the hook settles the service itself ([`settles_on_sigterm`]); jobs already queued in
/// systemd go on, and running the hook again converges.
pub fn run<F>(name: &str, verbose: u8, hook: F) -> ExitCode
where
    F: Future<Output = Result<()>>,
{
    init_logging(verbose);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start: {e}");
            return ExitCode::from(3);
        }
    };
    let outcome = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::pin!(hook);
        loop {
            tokio::select! {
                r = &mut hook => break r,
                _ = term.recv() => {
                    if SETTLES_ON_SIGTERM.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    break after_sigterm(None);
                }
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{name} failed: {e:#}");
            ExitCode::from(fault::exit_code(&e) as u8)
        }
    }
}

/// The service `handoff` works on when `--service` is not given: the one `deploy.yml` in the
/// working directory names, or the only one installed on this host (a socket unit the hooks
/// rendered in `unit_dir`). Never a silent default: otherwise the error lists what is there.
pub fn infer_service(cwd: &Path, unit_dir: &Path) -> Result<String> {
    if let Ok(cfg) = DeployConfig::load(&cwd.join(config::FILE_NAME)) {
        return Ok(cfg.service);
    }
    let installed = crate::units::installed_services(unit_dir);
    match installed.as_slice() {
        [only] => Ok(only.clone()),
        [] => anyhow::bail!(Fault::input(format!(
            "no service deployed by handoff on this host (no socket unit of ours in {}), and no deploy.yml here; \
             name one with --service",
            unit_dir.display()
        ))),
        many => anyhow::bail!(Fault::input(format!(
            "{} services are deployed here: {}; name one with --service",
            many.len(),
            many.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test that touches the DEPLOYING global (tests run in parallel).
    #[test]
    fn sigterm_succeeds_only_once_the_release_this_process_deploys_serves() {
        let root = std::env::temp_dir().join(format!("handoff-sigterm-{}", std::process::id()));
        let store = crate::release::ReleaseStore::new(&root);
        let save = |serving: &str, switching: Option<&str>| {
            store
                .save_state(&crate::release::State {
                    serving: Some(serving.into()),
                    switching: switching.map(|to| crate::release::Switching {
                        to: to.into(),
                        from: Some(serving.into()),
                        hook: "application-start".into(),
                        deployment: to.into(),
                    }),
                    ..Default::default()
                })
                .unwrap()
        };
        let code = |r: Result<()>| {
            r.map_or_else(
                |e| (fault::exit_code(&e), format!("{e:#}")),
                |()| (0, String::new()),
            )
        };

        not_deploying();
        let (c, e) = code(after_sigterm(None));
        assert_eq!(c, 1);
        assert!(e.contains("interrupted by SIGTERM"), "{e}");

        deploying(&root, "d-2");
        // Before the commit: the intent is recorded, d-1 serves.
        save("d-1", Some("d-2"));
        let (c, e) = code(after_sigterm(None));
        assert_eq!(c, 1);
        assert!(
            e.contains("before d-2's switch was committed")
                && e.contains("d-1 (the previous release) serves"),
            "{e}"
        );
        let (c, e) = code(after_sigterm(Some(
            "the uncommitted switch to d-2 was undone; d-1 serves",
        )));
        assert_eq!(c, 1);
        assert!(
            e.contains("and settled: the uncommitted switch to d-2 was undone"),
            "{e}"
        );
        // After the commit: d-2 serves, the old release's drain goes on.
        save("d-2", None);
        assert_eq!(code(after_sigterm(None)).0, 0);
        assert_eq!(
            code(after_sigterm(Some("d-2 serves (its switch was committed)"))).0,
            0
        );
        // ValidateService (or a rollback it makes) never succeeds by a SIGTERM.
        not_deploying();
        assert_eq!(
            code(after_sigterm(Some("d-2 serves (its switch was committed)"))).0,
            1
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn revision_is_found_above_the_hook() {
        let d = std::env::temp_dir().join(format!("handoff-cli-{}", std::process::id()));
        std::fs::create_dir_all(d.join("hooks")).unwrap();
        std::fs::write(d.join("deploy.yml"), "").unwrap();
        assert_eq!(find_revision(&d.join("hooks/application-start")), Some(d.clone()));
        assert_eq!(find_revision(Path::new("/nonexistent/a/b/c/d")), None);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn the_service_comes_from_deploy_yml_here_or_the_only_one_installed() {
        let base = std::env::temp_dir().join(format!("handoff-infer-{}", std::process::id()));
        let (cwd, units) = (base.join("cwd"), base.join("units"));
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::create_dir_all(&units).unwrap();
        let e = infer_service(&cwd, &units).unwrap_err().to_string();
        assert!(
            e.contains("no service deployed by handoff") && e.contains("--service"),
            "{e}"
        );
        std::fs::write(
            units.join("shop.socket"),
            format!("{}\n[Socket]\n", crate::units::MARKER),
        )
        .unwrap();
        std::fs::write(units.join("other.socket"), "[Socket]\n").unwrap();
        assert_eq!(infer_service(&cwd, &units).unwrap(), "shop");
        std::fs::write(
            units.join("api.socket"),
            format!("{}\n[Socket]\n", crate::units::MARKER),
        )
        .unwrap();
        let e = infer_service(&cwd, &units).unwrap_err().to_string();
        assert!(e.contains("2 services are deployed here: api, shop"), "{e}");
        std::fs::write(
            cwd.join("deploy.yml"),
            "service: web\nlisten: [\"127.0.0.1:8080\"]\napp:\n  command: bin/web\n",
        )
        .unwrap();
        assert_eq!(infer_service(&cwd, &units).unwrap(), "web");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
