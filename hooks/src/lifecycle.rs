//! The four CodeDeploy lifecycle hooks, and the operator's rollback (status: [`crate::status`]).
//!
//! | hook | runs from | does |
//! |---|---|---|
//! | ApplicationStop | the **previous** revision | checks and records; never interrupts service (unless `--stop-service`) |
//! | BeforeInstall | the new revision | preflight: rights, config, units, systemd, disk, lock; changes nothing |
//! | ApplicationStart | the new revision | copies the release, installs units, switches traffic to it |
//! | ValidateService | the new revision | health through the port, stable; else rolls back in place |
//!
//! Every hook is idempotent: run again after a crash or a timeout, it converges. Each hook
//! that changes the service first takes the lock, then finishes or undoes what a killed step
//! left ([`Deployer::recover`]). One deployment spans two hooks: ApplicationStart records the
//! switch it made (`validating`), ValidateService judges it, and a manual rollback in between
//! is refused unless forced, so neither acts on a state the other changed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cli::HookArgs;
use crate::config::DeployConfig;
use crate::fault::Fault;
use crate::lock::DeployLock;
use crate::release::{ReleaseStore, State, Validating};
use crate::switch::Deployer;
use crate::systemd::Systemd;
use crate::units;

pub(crate) fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(Fault::environment(
            "the hooks manage systemd units and /opt, so they must run as root; CodeDeploy runs hooks as root \
             unless appspec.yml says `runas:` — remove it, or run by hand with sudo"
        ));
    }
    Ok(())
}

async fn connect(args: &HookArgs) -> Result<Systemd> {
    Systemd::connect(args.dry_run)
        .await
        .map_err(|e| Fault::environment(format!("{e:#}")).into())
}

async fn lock(cfg: &DeployConfig, hook: &str, args: &HookArgs) -> Result<Option<DeployLock>> {
    if args.dry_run {
        return Ok(None);
    }
    DeployLock::acquire(
        &cfg.service,
        &format!("{hook} {}", args.deployment()),
        args.lock_wait,
    )
    .await
    .map(Some)
}

/// What a hook that changes the service holds while it runs: root checked, its release and
/// config read, systemd connected, the deploy lock taken.
struct Session {
    release: String,
    revision: std::path::PathBuf,
    cfg: DeployConfig,
    systemd: Systemd,
    store: ReleaseStore,
    _lock: Option<DeployLock>,
}

impl Session {
    /// Opens the session and finishes or undoes what a killed step left.
    async fn open(args: &HookArgs, hook: &str) -> Result<Self> {
        require_root()?;
        let release = args.release()?;
        let (revision, cfg) = args.config()?;
        let systemd = connect(args).await?;
        let _lock = lock(&cfg, hook, args).await?;
        let store = ReleaseStore::for_config(&cfg);
        Deployer::new(&cfg, &systemd, &store)?
            .recover(hook, &args.deployment())
            .await?;
        Ok(Self {
            release,
            revision,
            cfg,
            systemd,
            store,
            _lock,
        })
    }
}

/// ApplicationStop: runs the *previous* revision's hook, with the *new* deployment's id. It
/// must never interrupt service: the new release takes over in ApplicationStart. It reports
/// what serves and records that the deployment began. Its command line stays stable across
/// versions, because any older or newer revision may be the one that runs it.
pub async fn application_stop(args: &HookArgs, stop_service: bool) -> Result<()> {
    let (_, cfg) = args.config()?;
    let store = ReleaseStore::for_config(&cfg);
    if stop_service {
        require_root()?;
        let systemd = connect(args).await?;
        let _lock = lock(&cfg, "application-stop", args).await?;
        return stop_service_now(&cfg, &systemd, &store, args).await;
    }
    let state = store.load_state().unwrap_or_else(|e| {
        tracing::warn!("{e:#}");
        State::default()
    });
    match &state.serving {
        Some(r) => tracing::info!(
            "{} serves release {r}; it keeps serving until the new release has taken over",
            cfg.service
        ),
        None => tracing::info!(
            "{} has no serving release recorded; nothing to leave running",
            cfg.service
        ),
    }
    // Checks that cannot fail the deployment: a broken old release is what a deploy fixes.
    match Systemd::connect(false).await {
        Ok(systemd) => {
            for unit in [cfg.socket_unit()]
                .into_iter()
                .chain(state.serving.iter().map(|r| cfg.instance_unit(r)))
            {
                match systemd.status(&unit).await {
                    Ok(st) if st.is_active() => tracing::info!("{}", st.describe()),
                    Ok(st) => tracing::warn!("{} (the new release will take over anyway)", st.describe()),
                    Err(e) => tracing::warn!("{e:#}"),
                }
            }
        }
        Err(e) => tracing::warn!("{e:#}"),
    }
    if !args.dry_run && store.root().exists() {
        let message = format!(
            "deployment {} begins; serving {}",
            args.deployment(),
            state.serving.as_deref().unwrap_or("nothing")
        );
        if let Err(e) = store.record("application-stop", &args.deployment(), &message) {
            tracing::warn!("cannot record the event: {e:#}");
        }
    }
    tracing::info!(
        "application-stop: nothing stopped (pass --stop-service to really stop {})",
        cfg.service
    );
    Ok(())
}

/// Really stops the service: every instance drains, then the holder and the socket stop.
async fn stop_service_now(
    cfg: &DeployConfig,
    systemd: &Systemd,
    store: &ReleaseStore,
    args: &HookArgs,
) -> Result<()> {
    let deployer = Deployer::new(cfg, systemd, store)?;
    deployer.recover("application-stop", &args.deployment()).await?;
    let deadline = cfg.drain.budget + Duration::from_secs(10);
    // The fronts first (strategy: proxy): they drain the releases they send requests to.
    for id in deployer.live_fronts().await? {
        deployer.stop_front(&id).await;
    }
    for r in deployer.live_releases().await? {
        let unit = cfg.instance_unit(&r);
        tracing::info!("stopping {unit} (it drains)");
        let drain = crate::timing::waiting(crate::timing::Wait::App);
        systemd.stop(&unit, deadline).await?;
        drop(drain);
        systemd.disable(&[&unit]).await?;
    }
    for unit in [cfg.holder_unit(), cfg.socket_unit()] {
        tracing::info!("stopping {unit}");
        systemd.stop(&unit, Duration::from_secs(30)).await?;
        systemd.disable(&[&unit]).await?;
    }
    if !args.dry_run {
        store.update(
            "application-stop",
            &args.deployment(),
            "service stopped on request",
            |s| s.serving = None,
        )?;
    }
    tracing::info!(
        "{} is stopped: the port is closed; the next ApplicationStart brings it back",
        cfg.service
    );
    Ok(())
}

/// BeforeInstall: everything that can be checked before anything changes.
pub async fn before_install(args: &HookArgs) -> Result<()> {
    require_root()?;
    let release = args.release()?;
    let (revision, cfg) = args.config()?;
    let rendered = units::render(&cfg, &revision).map_err(|e| Fault::input(format!("{e:#}")))?;
    let command = revision.join(&cfg.app.command);
    if std::path::Path::new(&cfg.app.command).is_absolute() {
        if !crate::bundle::appspec::is_executable(&command) {
            bail!(Fault::input(format!(
                "app.command {} is not an executable program on this host; install it on every host (e.g. from the \
                 distribution's package) or ship the app in the bundle with a command relative to it",
                cfg.app.command
            )));
        }
    } else if !command.is_file() {
        bail!(Fault::input(format!(
            "app.command {} is not in the bundle ({}); build the bundle with the app inside",
            cfg.app.command,
            command.display()
        )));
    }
    crate::arch::check_arch(&revision, cfg.arch, &cfg.app.command).map_err(Fault::input)?;
    // A virtualenv's interpreter (any absolute symlink's target) must be on this host.
    crate::links::check_absolute_links(&revision)?;
    cfg.check_instance_confirmation()
        .map_err(|e| Fault::input(format!("{e:#}")))?;
    crate::config::app_env::check_host(&cfg, crate::config::app_env::on_beanstalk())?;
    if cfg.strategy == crate::config::Strategy::Handoff && cfg.instance_header().is_none() {
        tracing::warn!(
            "health.instance_header: none: the hooks cannot tell the new release's answers from the old one's, so a \
             broken release can be confirmed by the old one's answers and take its share of requests until \
             validate-service rolls it back"
        );
    }
    if cfg.is_proxy() {
        crate::switch::proxy::check_front(&cfg, &revision)?;
    }
    let systemd = connect(args).await?;
    let version = match std::env::var(crate::platform::TEST_VERSION_ENV) {
        // Test fault injection (a host's older systemd), never set in production.
        Ok(v) => crate::systemd::major_version(&v).context("HANDOFF_TEST_SYSTEMD_VERSION")?,
        Err(_) => systemd.version().await?,
    };
    crate::platform::check(version, &rendered).map_err(Fault::environment)?;
    let store = ReleaseStore::for_config(&cfg);
    check_disk_space(&revision, store.root())?;
    let _lock = lock(&cfg, "before-install", args).await?;
    Deployer::new(&cfg, &systemd, &store)?
        .check_ownership(&rendered)
        .await?;
    crate::switch::takeover::preflight(&cfg, &systemd, &store).await?;
    if let Some(warning) = crate::bundle::timeouts::warning_for(&revision, &cfg) {
        tracing::warn!("{warning}");
    }
    let socket = systemd.status(&cfg.socket_unit()).await?;
    tracing::info!(
        "preflight passed for release {release} of {}: config, units, systemd {version}, disk space, lock; socket {}",
        cfg.service,
        if socket.load_state == "loaded" {
            socket.active_state
        } else {
            "not installed yet".into()
        }
    );
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn check_disk_space(revision: &Path, root: &Path) -> Result<()> {
    // The copy, and as much again for headroom (logs, the next release).
    let need = dir_size(revision) * 2 + 4 * 1024 * 1024;
    let existing = root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let st = nix::sys::statvfs::statvfs(existing)
        .with_context(|| format!("cannot stat {}", existing.display()))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    if free < need {
        bail!(Fault::environment(format!(
            "{} has {} MiB free; the release needs {} MiB; free space (or lower releases.keep) and retry",
            existing.display(),
            free >> 20,
            need >> 20
        )));
    }
    Ok(())
}

/// Runs a step that changes the service so that SIGTERM (the agent's hook timeout) ends it at
/// a consistent point: the step stops at its next await, then, under the lock again, the
/// recovery that a killed hook would leave to the next one runs now (an uncommitted switch is
/// undone, a committed one finishes its retire), and [`crate::cli::after_sigterm`] decides:
/// success when the release this hook deploys serves, else a failure that says what serves.
async fn settle_on_sigterm(
    args: &HookArgs,
    hook: &str,
    step: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    crate::cli::settles_on_sigterm();
    tokio::select! {
        r = step => r,
        _ = term.recv() => {
            tracing::warn!("{hook}: SIGTERM (the agent's hook timeout?): stopping this step and settling the service first");
            match settle(args, hook).await {
                Ok(what) => crate::cli::after_sigterm(Some(&what)),
                Err(e) => bail!(Fault::deployment(format!(
                    "interrupted by SIGTERM (the agent's hook timeout?); settling failed: {e:#}. The next deployment \
                     step finishes it (every hook converges from where this one stopped); see `handoff status`"
                ))),
            }
        }
    }
}

/// What [`settle_on_sigterm`] does after the step stopped; says what serves.
async fn settle(args: &HookArgs, hook: &str) -> Result<String> {
    if args.dry_run {
        return Ok("a dry run changed nothing".into());
    }
    let release = args.release()?;
    let (_, cfg) = args.config()?;
    let systemd = connect(args).await?;
    // The stopped step let go of the lock. If another step holds it now (or held it all along,
    // and this one was still waiting), that step recovers first: nothing here to wait for.
    let _lock = match DeployLock::acquire(
        &cfg.service,
        &format!("{hook} {} (settling)", args.deployment()),
        Duration::ZERO,
    )
    .await
    {
        Ok(lock) => lock,
        Err(_) => {
            return Ok(
                "another deployment step holds the lock; it finishes or undoes what this one left".into(),
            );
        }
    };
    let store = ReleaseStore::for_config(&cfg);
    let before = store.load_state()?;
    Deployer::new(&cfg, &systemd, &store)?
        .recover(hook, &args.deployment())
        .await?;
    let state = store.load_state()?;
    let undone = before.switching.as_ref().map(|s| s.to.clone());
    Ok(match (state.serving, undone) {
        (Some(s), Some(to)) => format!("the uncommitted switch to {to} was undone; {s} serves"),
        (Some(s), None) if s == release => format!("{s} serves (its switch was committed)"),
        (Some(s), None) => format!("{s} serves; {release} does not"),
        (None, _) => "nothing serves".into(),
    })
}

/// ApplicationStart: copy the release, install its units, switch traffic to it.
pub async fn application_start(args: &HookArgs) -> Result<()> {
    settle_on_sigterm(args, "application-start", application_start_step(args)).await
}

async fn application_start_step(args: &HookArgs) -> Result<()> {
    let session = Session::open(args, "application-start").await?;
    let Session {
        release,
        revision,
        cfg,
        systemd,
        store,
        ..
    } = &session;
    let release = release.clone();
    let deployer = Deployer::new(cfg, systemd, store)?;
    if !args.dry_run {
        crate::cli::deploying(store.root(), &release);
    }

    if args.dry_run {
        println!(
            "dry-run: would copy {} to {}",
            revision.display(),
            store.dir(&release).display()
        );
        if !store.is_complete(&release) {
            println!("dry-run: (release not staged yet: the rest of the plan uses the revision's own units)");
            let rendered = units::render(cfg, revision)?;
            units::install(&rendered, Path::new(units::UNIT_DIR), true)?;
            println!(
                "dry-run: would start {} and stop {:?}",
                cfg.instance_unit(&release),
                deployer.live_releases().await?
            );
            return Ok(());
        }
    } else {
        let t = Instant::now();
        if store.stage(revision, &release, cfg)? {
            tracing::info!(
                "release {release} copied to {} in {:.0} ms (every file synced to disk: after a power loss the \
                 release that serves must still be whole)",
                store.dir(&release).display(),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    let deployment = args.deployment();
    let switch = deployer
        .deploy(&release, "application-start", &deployment, |s| {
            s.validating = Some(Validating {
                deployment: deployment.clone(),
                release: release.clone(),
            })
        })
        .await?;
    if !args.dry_run {
        // Housekeeping after a good switch: it never fails the hook.
        let after = store.load_state().unwrap_or_default();
        let previous = after.previous.clone();
        let protect: Vec<&str> = [
            Some(release.as_str()),
            switch.from.as_deref(),
            previous.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        match store.prune(cfg.releases.keep, &protect, &after.failed) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!("removed old releases: {}", removed.join(", "))
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("could not remove old releases: {e:#}; the next deployment tries again"),
        }
        crate::switch::proxy::prune_release_routes(cfg, &store.list().unwrap_or_default());
        match deployer.prune_fronts().await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!("removed front builds no longer running: {}", removed.join(", "))
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("could not remove old front builds: {e:#}"),
        }
    }
    tracing::info!(
        "release {release} serves{}",
        switch.from.map(|b| format!(" (was {b})")).unwrap_or_default(),
    );
    Ok(())
}

/// ValidateService: the new release must answer healthy through the real port and stay up;
/// otherwise the previous release serves again (in place, without a failed request) and the
/// hook fails so CodeDeploy marks the deployment failed.
pub async fn validate_service(args: &HookArgs) -> Result<()> {
    settle_on_sigterm(args, "validate-service", validate_service_step(args)).await
}

async fn validate_service_step(args: &HookArgs) -> Result<()> {
    let t0 = Instant::now();
    // ValidateService judges the release: a SIGTERM here never counts as its success (after
    // Beanstalk's postdeploy ran ApplicationStart in this same process).
    crate::cli::not_deploying();
    let session = Session::open(args, "validate-service").await?;
    let Session {
        release,
        cfg,
        systemd,
        store,
        ..
    } = &session;
    let release = release.clone();
    let deployment = args.deployment();
    let deployer = Deployer::new(cfg, systemd, store)?;
    let state = store.load_state()?;
    if state.serving.as_deref() != Some(release.as_str()) {
        let why = if state.is_failed(&release) {
            format!("{release} is marked failed (see `handoff status` and its recent events)")
        } else {
            let last = store
                .recent_events(20)
                .into_iter()
                .rev()
                .find(|e| e.hook == "rollback" || e.hook == "validate-service")
                .map(|e| format!(" (last switch: {} at {} by {})", e.message, e.at, e.hook))
                .unwrap_or_default();
            format!(
                "{} serves instead: something switched after ApplicationStart{last}",
                state.serving.as_deref().unwrap_or("nothing")
            )
        };
        bail!(Fault::deployment(format!(
            "release {release} does not serve, so there is nothing to validate: {why}. Deploy again to serve a new \
             release"
        )));
    }

    let verdict = validate(cfg, systemd, &deployer, &release).await;
    let Err(problem) = verdict else {
        if !args.dry_run {
            store.update(
                "validate-service",
                &deployment,
                &format!("{release} validated"),
                |s| s.validating = None,
            )?;
        }
        tracing::info!(
            "release {release} is healthy and stable; validated in {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        return Ok(());
    };
    tracing::error!("release {release} failed validation: {problem:#}");
    if args.dry_run {
        println!("dry-run: would roll back to {:?}", state.previous);
        return Err(problem);
    }
    let target = state
        .previous
        .clone()
        .filter(|p| p != &release && !state.is_failed(p));
    let fail = |message: String| {
        store.update("validate-service", &deployment, &message, |s| {
            s.mark_failed(&release);
            s.validating = None;
        })
    };
    if let Some(gone) = target.as_ref().filter(|p| !store.is_complete(p)) {
        fail(format!("{release} failed validation; {gone} is gone"))?;
        bail!(Fault::deployment(format!(
            "release {release} failed validation: {problem:#}. Cannot roll back: the previous release {gone} is no \
             longer in {} (deleted by hand?). {release} is left serving; deploy a fixed release",
            store.releases_dir().display()
        )));
    }
    let Some(target) = target else {
        fail(format!("{release} failed validation; nothing to roll back to"))?;
        bail!(Fault::deployment(format!(
            "release {release} failed validation: {problem:#}. There is no previous release to roll back to \
             (first deployment); fix the release and deploy again"
        )));
    };
    tracing::info!("rolling back in place: {target} serves again, then {release} stops");
    if let Err(e) = rollback_to(
        systemd,
        store,
        &target,
        Some(&release),
        "validate-service",
        &deployment,
    )
    .await
    {
        fail(format!(
            "{release} failed validation; the rollback to {target} failed: {e:#}"
        ))?;
        return Err(e.context(format!("release {release} failed validation: {problem:#}")));
    }
    bail!(Fault::deployment(format!(
        "release {release} failed validation: {problem:#}. Rolled back: {target} serves again. \
         Fix the release and deploy again ({})",
        crate::systemd::journal_hint(&cfg.instance_unit(&release))
    )))
}

async fn validate(
    cfg: &DeployConfig,
    systemd: &Systemd,
    deployer: &Deployer<'_>,
    release: &str,
) -> Result<()> {
    let unit = cfg.instance_unit(release);
    let st = systemd.status(&unit).await?;
    if !st.is_active() {
        bail!("{}; was ApplicationStart run for this deployment?", st.describe());
    }
    deployer.probe.wait_for(release, cfg.deadlines.validate).await?;
    // Stable: same process, no restart, for health.stable_for.
    let _waiting = crate::timing::waiting(crate::timing::Wait::App);
    let pid = st.main_pid;
    let until = Instant::now() + cfg.health.stable_for;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = systemd.status(&unit).await?;
        if !now.is_active() || now.main_pid != pid || now.n_restarts > 0 {
            bail!(
                "{} within {:.1} s of validation (was pid {pid})",
                now.describe(),
                cfg.health.stable_for.as_secs_f64()
            );
        }
    }
    deployer.probe.wait_for(release, Duration::from_secs(1)).await?;
    Ok(())
}

/// Switches back to a kept release and records it. `failed` is the release it replaces
/// because it failed (None for a manual rollback). The target is started, probed and
/// described by its own deploy.yml and unit templates, as it was deployed.
async fn rollback_to(
    systemd: &Systemd,
    store: &ReleaseStore,
    target: &str,
    failed: Option<&str>,
    hook: &str,
    deployment: &str,
) -> Result<()> {
    let cfg = DeployConfig::load(&store.dir(target).join(crate::config::FILE_NAME))
        .map_err(|e| Fault::deployment(format!("cannot roll back to {target}: {e:#}")))?;
    let deployer = Deployer::new(&cfg, systemd, store)?;
    // After an automatic rollback the rejected release is no rollback target: `previous`
    // becomes the newest other kept release that did not fail.
    let kept = store.list().unwrap_or_default();
    deployer
        .deploy(target, hook, deployment, |s| {
            s.validating = None;
            if let Some(f) = failed {
                s.mark_failed(f);
                s.previous = kept
                    .iter()
                    .rev()
                    .find(|r| r.as_str() != target && !s.is_failed(r))
                    .cloned();
            }
        })
        .await
        .map_err(|e| {
            Fault::deployment(format!(
                "rollback to {target} failed: {e:#}; see `handoff status --service {}`",
                cfg.service
            ))
        })?;
    Ok(())
}

/// `handoff rollback`: serve a kept release again (default: the previous one), zero downtime.
/// Refused while a deployment waits for its ValidateService, unless `force`.
pub async fn manual_rollback(
    service: &str,
    to: Option<String>,
    dry_run: bool,
    force: bool,
    lock_wait: Duration,
) -> Result<()> {
    require_root()?;
    let store = ReleaseStore::new(Path::new("/opt").join(service));
    let systemd = Systemd::connect(dry_run)
        .await
        .map_err(|e| Fault::environment(format!("{e:#}")))?;
    let _lock = if dry_run {
        None
    } else {
        Some(DeployLock::acquire(service, "handoff rollback", lock_wait).await?)
    };
    // Read under the lock: a hook that ran while we waited has changed it.
    let state = store.load_state()?;
    if let Some(v) = &state.validating
        && !force
    {
        bail!(Fault::input(format!(
            "deployment {} switched to {} and its ValidateService has not run yet; a rollback now would make \
             it fail for the wrong reason. Wait for it (or stop the deployment in CodeDeploy), or pass --force",
            v.deployment, v.release
        )));
    }
    let explicit = to.is_some();
    let kept = store.list()?;
    // The default: the previous release, or else the newest kept release that did not fail
    // (the fault table, docs/faults.md): after an automatic rollback `previous` may be unset.
    let fallback = || {
        kept.iter()
            .rev()
            .find(|r| state.serving.as_ref() != Some(*r) && !state.is_failed(r))
            .cloned()
    };
    let target = match to
        .or(state.previous.clone().filter(|p| !state.is_failed(p)))
        .or_else(fallback)
    {
        Some(t) => t,
        None => bail!(Fault::input(format!(
            "{service} has no kept release to roll back to that did not fail; name one with --to (kept: {})",
            kept.join(", ")
        ))),
    };
    if !store.is_complete(&target) {
        bail!(Fault::input(format!(
            "release {target} is not kept (kept: {}); pick one of those",
            store.list()?.join(", ")
        )));
    }
    if state.is_failed(&target) {
        if !explicit {
            bail!(Fault::input(format!(
                "the previous release {target} failed its deployment; name a release with --to (kept: {})",
                store.list()?.join(", ")
            )));
        }
        tracing::warn!("{target} failed its deployment; serving it again because --to names it");
    }
    if state.serving.as_deref() == Some(target.as_str()) {
        tracing::info!("{target} already serves {service}; nothing to do");
        return Ok(());
    }
    if let Ok(cfg) = DeployConfig::load(&store.dir(&target).join(crate::config::FILE_NAME)) {
        Deployer::new(&cfg, &systemd, &store)?
            .recover("rollback", "-")
            .await?;
    }
    if !dry_run {
        crate::cli::deploying(store.root(), &target);
    }
    rollback_to(&systemd, &store, &target, None, "rollback", "-").await?;
    tracing::info!("{target} serves {service}");
    Ok(())
}
