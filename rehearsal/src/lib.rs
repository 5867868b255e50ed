//! `deploy-local` (handoff-rehearsal): the CodeDeploy agent's in-place deployment, reproduced on
//! one host to rehearse a revision (see shared/notes/codedeploy-agent.md for what the agent does).
//!
//! ```text
//! <root>/<group-id>/<deployment-id>/deployment-archive/      the unpacked revision
//! <root>/<group-id>/<deployment-id>/logs/scripts.log         every line the scripts printed
//! <root>/deployment-instructions/<group-id>_last_successful_install   that archive's path
//! <root>/deployment-instructions/<group-id>-cleanup          what Install created, a path a line
//! ```
//!
//! Order: BeforeBlockTraffic, AfterBlockTraffic, ApplicationStop (the last successful
//! install's scripts, with the new deployment's id; none on a first deployment),
//! DownloadBundle, BeforeInstall, Install (the last successful install is recorded right
//! after it), AfterInstall, ApplicationStart, ValidateService, BeforeAllowTraffic,
//! AfterAllowTraffic. Each script runs as the agent runs it: from the archive, with the
//! agent's environment, in `/`, stdin closed, in its own process group, under its timeout
//! (one SIGTERM to the group on expiry, never SIGKILL). The first failure ends the deployment.
//!
//! The crate's parts:
//!
//! - the crate root: [`Options`], the agent's folders ([`Layout`]) and [`run`], the lifecycle in order;
//! - [`ids`]: new deployment ids like the agent's, and scripts.log's time stamps;
//! - [`archive`]: DownloadBundle — the revision into `deployment-archive`, old archives pruned;
//! - [`install`]: Install — the previous install cleaned up, the appspec's `files:` copied;
//! - [`script`]: one lifecycle script run as the agent runs it, under its timeout;
//! - [`script_log`]: `logs/scripts.log`, every line a script printed;
//! - [`summary`]: what each event did and how long it took, printed on success.
//!
//! `deploy-local` (src/main.rs) only parses its arguments, calls [`run`] and maps the
//! [`Fault`] to an exit code.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use handoff::bundle::appspec::{self, AppSpec, IN_PLACE_ORDER, Runs};
use handoff::config::is_safe_name;
use handoff::fault::Fault;

pub mod archive;
pub mod ids;
pub mod install;
pub mod script;
pub mod script_log;
pub mod summary;

pub use archive::KEEP_ARCHIVES;
pub use ids::{new_deployment_id, timestamp};
pub use install::{clean_previous_install, install_files};
pub use script::{Identity, ScriptFailure, run_script};
pub use script_log::{ScriptLog, Stream};
pub use summary::{Outcome, Step, Summary};

use archive::{copy_bundle, prune_archives};
use install::write_atomic;

/// What to deploy, and as which deployment.
#[derive(Debug, Clone)]
pub struct Options {
    /// A revision zip or an unpacked bundle folder.
    pub bundle: PathBuf,
    /// None: a new id like the agent's (`d-` and 9 letters or digits).
    pub deployment_id: Option<String>,
    pub root: PathBuf,
    pub group_id: String,
    pub application: String,
    pub group: String,
    pub verbose: u8,
}

/// The agent's folders for one deployment.
#[derive(Debug, Clone)]
pub struct Layout {
    pub deployment_dir: PathBuf,
    pub archive: PathBuf,
    pub scripts_log: PathBuf,
    pub instructions: PathBuf,
    pub last_install_file: PathBuf,
    pub cleanup_file: PathBuf,
}

impl Layout {
    pub fn new(root: &Path, group_id: &str, deployment_id: &str) -> Self {
        let deployment_dir = root.join(group_id).join(deployment_id);
        let instructions = root.join("deployment-instructions");
        Self {
            archive: deployment_dir.join("deployment-archive"),
            scripts_log: deployment_dir.join("logs").join("scripts.log"),
            last_install_file: instructions.join(format!("{group_id}_last_successful_install")),
            cleanup_file: instructions.join(format!("{group_id}-cleanup")),
            instructions,
            deployment_dir,
        }
    }
}

/// The last successful install: its archive and appspec (None when the appspec is unreadable).
struct Previous {
    archive: PathBuf,
    spec: std::result::Result<AppSpec, String>,
}

fn previous_install(layout: &Layout) -> Option<Previous> {
    let text = std::fs::read_to_string(&layout.last_install_file).ok()?;
    let archive = PathBuf::from(text.trim());
    if !archive.is_dir() {
        eprintln!(
            "deploy-local: the last successful install's archive {} is gone (see {}); no ApplicationStop runs",
            archive.display(),
            layout.last_install_file.display()
        );
        return None;
    }
    let spec = std::fs::read_to_string(archive.join(appspec::FILE_NAME))
        .map_err(|e| format!("cannot read {}: {e}", archive.join(appspec::FILE_NAME).display()))
        .and_then(|text| {
            appspec::check_text(&text, appspec::FILE_NAME).0.ok_or_else(|| {
                format!(
                    "{} is not a readable appspec",
                    archive.join(appspec::FILE_NAME).display()
                )
            })
        });
    Some(Previous { archive, spec })
}

fn lock_group(layout: &Layout, group_id: &str) -> Result<nix::fcntl::Flock<File>> {
    std::fs::create_dir_all(&layout.instructions)
        .with_context(|| format!("cannot create {}", layout.instructions.display()))?;
    let path = layout.instructions.join(format!(".{group_id}.lock"));
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Fault::environment(format!(
            "another deploy-local is deploying to group {group_id} ({} is locked); wait for it",
            path.display()
        ))
        .into()
    })
}

/// Where the revision comes from.
enum Source {
    Folder(PathBuf),
    /// Unpacked into this folder beside the archive, renamed into place by DownloadBundle.
    Unpacked(PathBuf),
}

/// Runs a deployment. Errors carry a [`Fault`]: input (the agent would refuse the bundle,
/// exit 2), deployment (a lifecycle event failed, exit 1), environment (exit 3).
pub fn run(opts: &Options) -> Result<Summary> {
    let id = match &opts.deployment_id {
        Some(id) => id.clone(),
        None => new_deployment_id()?,
    };
    for (what, value) in [("deployment id", &id), ("deployment group id", &opts.group_id)] {
        if !is_safe_name(value, false) {
            bail!(Fault::input(format!(
                "{what} '{value}' cannot name a folder; use letters, digits, '-' and '_' (like d-AB12CD34E)"
            )));
        }
    }
    let layout = Layout::new(&opts.root, &opts.group_id, &id);
    let _lock = lock_group(&layout, &opts.group_id).map_err(|e| Fault::environment(format!("{e:#}")))?;
    if layout.deployment_dir.exists() {
        bail!(Fault::input(format!(
            "deployment {id} exists already ({}); every deployment has a new id: omit --deployment-id",
            layout.deployment_dir.display()
        )));
    }
    if !opts.bundle.exists() {
        bail!(Fault::input(format!(
            "{}: no such file or folder; pass a revision zip or an unpacked bundle",
            opts.bundle.display()
        )));
    }
    std::fs::create_dir_all(&layout.deployment_dir)
        .with_context(|| format!("cannot create {}", layout.deployment_dir.display()))
        .map_err(|e| Fault::environment(format!("{e:#}")))?;

    // Refuse what the agent would refuse, before anything runs.
    let (source, checked) = if opts.bundle.is_dir() {
        (Source::Folder(opts.bundle.clone()), opts.bundle.clone())
    } else {
        let staged = layout.deployment_dir.join(".bundle");
        let problems = handoff::bundle::lint::unpack_zip(&opts.bundle, &staged).map_err(|e| {
            let _ = std::fs::remove_dir_all(&layout.deployment_dir);
            Fault::input(format!("{e:#}"))
        })?;
        if !problems.is_empty() {
            let _ = std::fs::remove_dir_all(&layout.deployment_dir);
            bail!(Fault::input(refusal(&opts.bundle, &problems)));
        }
        (Source::Unpacked(staged.clone()), staged)
    };
    let (spec, problems) = appspec::check_appspec(&checked);
    for p in problems.iter().filter(|p| !p.is_error()) {
        eprintln!("deploy-local: {p}");
    }
    let spec = match spec {
        Some(spec) if !problems.iter().any(|p| p.is_error()) => spec,
        _ => {
            let _ = std::fs::remove_dir_all(&layout.deployment_dir);
            let errors: Vec<_> = problems.into_iter().filter(|p| p.is_error()).collect();
            bail!(Fault::input(refusal(&opts.bundle, &errors)));
        }
    };

    if spec.permissions.as_ref().is_some_and(|p| !p.is_empty()) {
        eprintln!(
            "deploy-local: warning: appspec.yml permissions: are not rehearsed (Install copies files with their \
             own modes); check their `mode:` values with lint-bundle"
        );
    }
    let who = Identity {
        deployment_id: id.clone(),
        application: opts.application.clone(),
        group: opts.group.clone(),
        group_id: opts.group_id.clone(),
    };
    let previous = previous_install(&layout);
    let mut log = ScriptLog::open(&layout.scripts_log).map_err(|e| Fault::environment(format!("{e:#}")))?;
    eprintln!(
        "deploy-local: deployment {id} of {} to {} (group id {}){}",
        opts.bundle.display(),
        opts.group,
        opts.group_id,
        match &previous {
            Some(p) => format!("; previous revision {}", p.archive.display()),
            None => "; first deployment of the group".into(),
        }
    );
    let mut steps = Vec::new();
    for (event, runs) in IN_PLACE_ORDER {
        let t0 = Instant::now();
        let result = match runs {
            Runs::Previous => match &previous {
                None => Ok(if event == "ApplicationStop" {
                    Outcome::FirstDeployment
                } else {
                    Outcome::NoScripts
                }),
                Some(Previous { spec: Err(e), .. }) => Err(StepFailure::plain(format!(
                    "the last successful install's appspec cannot be read ({e}); the agent fails here too. \
                     Delete {} to start over without it",
                    layout.last_install_file.display()
                ))),
                Some(Previous {
                    archive,
                    spec: Ok(prev),
                }) => run_event(event, archive, prev, &who, &mut log, opts.verbose),
            },
            Runs::Agent if event == "DownloadBundle" => {
                download(&source, &layout, &opts.root, &opts.group_id, previous.as_ref())
            }
            Runs::Agent => install(&spec, &layout),
            Runs::New => run_event(event, &layout.archive, &spec, &who, &mut log, opts.verbose),
        };
        match result {
            Ok(outcome) => {
                let step = Step {
                    event,
                    outcome,
                    took: t0.elapsed(),
                };
                if opts.verbose > 0 || matches!(step.outcome, Outcome::Ran(_) | Outcome::Done(_)) {
                    eprintln!("deploy-local: {}", step.to_string().trim_end());
                }
                steps.push(step);
            }
            Err(f) => bail!(Fault::deployment(f.explain(&id, event, &layout))),
        }
    }
    Ok(Summary {
        deployment_id: id,
        layout,
        steps,
    })
}

fn refusal(bundle: &Path, problems: &[appspec::Problem]) -> String {
    let mut text = format!("the agent would refuse {} (nothing ran):", bundle.display());
    for p in problems {
        text.push_str(&format!("\n  {p}"));
    }
    text.push_str(&format!(
        "\nfix these, then check with: lint-bundle {}",
        bundle.display()
    ));
    text
}

/// A failed event: why, and the script's last lines.
struct StepFailure {
    message: String,
    tail: Vec<String>,
}

impl StepFailure {
    fn plain(message: String) -> Self {
        Self {
            message,
            tail: Vec::new(),
        }
    }

    fn explain(&self, id: &str, event: &str, layout: &Layout) -> String {
        let mut text = format!(
            "deployment {id} failed at {event}: {}. Later lifecycle events did not run.",
            self.message
        );
        if !self.tail.is_empty() {
            text.push_str(&format!("\nlast output of {event}:"));
            for l in &self.tail {
                text.push_str(&format!("\n  {l}"));
            }
        }
        text.push_str(&format!("\nfull log: {}", layout.scripts_log.display()));
        text
    }
}

fn run_event(
    event: &str,
    archive: &Path,
    spec: &AppSpec,
    who: &Identity,
    log: &mut ScriptLog,
    verbose: u8,
) -> std::result::Result<Outcome, StepFailure> {
    let scripts = spec.scripts(event);
    if scripts.is_empty() {
        return Ok(Outcome::NoScripts);
    }
    log.event(event);
    for entry in scripts {
        run_script(event, archive, entry, who, log, verbose).map_err(|f| StepFailure {
            message: f.message,
            tail: f.tail,
        })?;
    }
    Ok(Outcome::Ran(scripts.len()))
}

fn download(
    source: &Source,
    layout: &Layout,
    root: &Path,
    group_id: &str,
    previous: Option<&Previous>,
) -> std::result::Result<Outcome, StepFailure> {
    let what = match source {
        Source::Folder(dir) => {
            copy_bundle(dir, &layout.archive).map_err(|e| StepFailure::plain(format!("{e:#}")))?;
            format!("copied {}", dir.display())
        }
        Source::Unpacked(dir) => {
            std::fs::rename(dir, &layout.archive)
                .map_err(|e| StepFailure::plain(format!("cannot move {} into place: {e}", dir.display())))?;
            "unpacked the zip".to_string()
        }
    };
    let mut keep = vec![layout.deployment_dir.as_path()];
    if let Some(p) = previous {
        keep.push(p.archive.as_path());
    }
    let removed = prune_archives(&root.join(group_id), &keep);
    let pruned = if removed.is_empty() {
        String::new()
    } else {
        format!("; removed {} old archive(s)", removed.len())
    };
    Ok(Outcome::Done(format!("{what} into deployment-archive{pruned}")))
}

fn install(spec: &AppSpec, layout: &Layout) -> std::result::Result<Outcome, StepFailure> {
    let step = || -> Result<String> {
        let removed = clean_previous_install(&layout.cleanup_file)?;
        let created = install_files(spec, &layout.archive)?;
        let list: String = created.iter().map(|p| format!("{}\n", p.display())).collect();
        write_atomic(&layout.cleanup_file, &list)?;
        // The agent records the last successful install right after Install.
        write_atomic(
            &layout.last_install_file,
            &format!("{}\n", layout.archive.display()),
        )?;
        Ok(format!(
            "{} path(s) from the previous install removed, {} installed",
            removed,
            created.len()
        ))
    };
    step()
        .map(Outcome::Done)
        .map_err(|e| StepFailure::plain(format!("{e:#}")))
}

#[cfg(test)]
mod tests;
