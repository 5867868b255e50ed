//! The release switch: how traffic moves from one release to the next without a failed or a
//! stalled request, and how every way it can stop half-way is undone.
//!
//! ```text
//!   client ──► kernel queue of <service>.socket (never stopped by a switch)
//!                 │            │
//!                 ▼            ▼
//!     <service>@old.service   <service>@new.service      both accept() from the same socket
//! ```
//!
//! [`Deployer::deploy`] moves traffic to a release in these steps; `state.json` records where
//! it stands, so a hook killed at any instant leaves a state the next step can finish or undo:
//!
//! 1. **Intent.** `switching: {to, from}` is written (fsynced) before anything changes.
//! 2. **Units.** The new release's unit files are installed (each durably) and systemd is
//!    reloaded when a file changed *or* systemd says a loaded unit is stale
//!    (`NeedDaemonReload`, a hook killed between its write and its reload); every unit must
//!    then load. A change of the socket's addresses is **deferred** (step 6): the socket is
//!    never re-created while the old release depends on it.
//! 3. **Start beside.** The socket is listening; `<service>@<new>.service` starts while the old
//!    instance still serves, and its start job completes at READY=1. Probes through the real
//!    port must reach the new release and get 200; an unhealthy answer or probes that are
//!    accepted and never answered (a hung release) end it at once.
//! 4. **Commit.** The new instance is enabled (it comes back after a reboot), then one state
//!    write: `serving` is the new release, `previous` the old one, `switching` cleared.
//! 5. **Retire.** The old instance is disabled, then stopped (it drains). From the commit on,
//!    only the serving release is enabled, so a hook killed during the drain, or a power cut,
//!    never brings the old release back at boot beside the new one. Every recovery
//!    reconciles the instances with the state ([`Deployer::reconcile_instances`]), and the
//!    units carry a boot guard: an instance starts only if the state records it as serving
//!    (or the hooks are starting it now, a marker under `/run` that a boot clears), see
//!    [`crate::units::BOOT_GUARD`].
//! 6. **Move the socket** (only when the addresses changed): the socket is re-created on the new
//!    addresses and the new release restarted onto it — the one switch that costs a restart.
//!
//! If step 2 or 3 fails, or a later step finds `switching` left by a killed hook, the switch is
//! **undone**: the fronts are routed back, the new instance is stopped and the units of the
//! release that serves are rendered again from its own release folder and installed, so the
//! serving release keeps the `ExecStart=`, environment and hardening it was started with, at
//! its next restart and after a reboot too. The intent is cleared only once every step of the
//! undo succeeded; until then each next hook tries it again first.
//!
//! With `strategy: restart` the old instance is stopped before the new one starts: nothing is
//! refused (the socket queues), but clients wait for the drain and the start; an undo starts
//! the old release again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::{self, DeployConfig, Strategy};
use crate::fault::{self, Fault};
use crate::health::Probe;
use crate::release::{ReleaseStore, State, Switching};
use crate::systemd::{IDLE_HOLD_STATUS, Stopped, Systemd};
use crate::timing::{self, Wait};
use crate::units;

/// Test-only fault injection: `HANDOFF_KILL_AT=<step>` makes a hook kill itself (SIGKILL)
/// when it reaches that step, so tests interrupt a switch at a named point, not by timing.
/// Steps, in order: `after-intent`, `units-written` (before the reload), `after-units`,
/// `after-start` (the new release answers; not committed), `after-commit` (before the old
/// one drains), `retiring` (the old instance disabled, not yet stopped), `socket-written` (a socket move, before the socket is re-created),
/// `route-written` (strategy: proxy: the route file written, the fronts not yet told),
/// `front-started` (strategy: proxy: a new front confirmed beside the old one, not committed).
///
/// With `HANDOFF_KILL_SIGNAL=TERM` the hook sends itself SIGTERM there instead (the agent's
/// hook timeout): the step stops at its next await, and the hook settles the service.
pub async fn kill_point(step: &str) {
    if std::env::var("HANDOFF_KILL_AT").is_ok_and(|s| s == step) {
        use nix::sys::signal::{Signal, raise};
        let term = std::env::var("HANDOFF_KILL_SIGNAL").is_ok_and(|s| s == "TERM");
        let signal = if term { Signal::SIGTERM } else { Signal::SIGKILL };
        eprintln!("HANDOFF_KILL_AT={step}: sending this hook {signal} here (test fault injection)");
        let _ = raise(signal);
        if term {
            // The step goes no further: the signal handler ends it here.
            std::future::pending::<()>().await;
        }
    }
}

/// Everything a switch needs.
pub struct Deployer<'a> {
    pub cfg: &'a DeployConfig,
    pub systemd: &'a Systemd,
    pub store: &'a ReleaseStore,
    pub probe: Probe,
    pub unit_dir: PathBuf,
    /// A takeover under way (deploy.yml `takeover:`, the first deployment only).
    pub(crate) takeover: std::sync::Mutex<Option<crate::takeover::Held>>,
}

/// What a switch did.
#[derive(Debug, Default)]
pub struct Switch {
    pub from: Option<String>,
    pub stopped: Vec<String>,
    /// strategy: proxy: the front that serves the new release (recorded at the commit).
    pub front: Option<String>,
}

/// What an undo achieved: `complete` only when every step succeeded, so the intent it undid
/// may be cleared; `message` says what serves.
#[derive(Debug)]
pub struct Undo {
    pub complete: bool,
    pub message: String,
}

impl Undo {
    fn done(message: String) -> Self {
        Self {
            complete: true,
            message,
        }
    }
    fn unfinished(message: String) -> Self {
        Self {
            complete: false,
            message,
        }
    }
}

/// Units installed for a release, and the socket change left for after the switch.
#[derive(Debug, Default)]
pub struct Installed {
    pub changes: units::Changes,
    /// The socket unit with new addresses, written only once the new release serves.
    pub deferred_socket: Option<units::Rendered>,
}

impl<'a> Deployer<'a> {
    pub fn new(cfg: &'a DeployConfig, systemd: &'a Systemd, store: &'a ReleaseStore) -> Result<Self> {
        Ok(Self {
            cfg,
            systemd,
            store,
            probe: Probe::new(cfg)?,
            unit_dir: PathBuf::from(units::UNIT_DIR),
            takeover: Default::default(),
        })
    }

    /// Stop jobs wait for the drain; systemd's own TimeoutStopSec= (the drain budget) ends it.
    pub(crate) fn stop_deadline(&self) -> Duration {
        self.cfg.drain.budget + Duration::from_secs(10)
    }

    pub(crate) fn start_deadline(&self) -> Duration {
        self.cfg.deadlines.start + Duration::from_secs(5)
    }

    /// The whole switch to `release` (steps 1–6 of the module doc). `commit` adds to the
    /// state written at step 4. On failure the switch is undone, the release is recorded as
    /// failed (unless the host was at fault), and the error says what serves.
    pub async fn deploy(
        &self,
        release: &str,
        hook: &str,
        deployment: &str,
        commit: impl FnOnce(&mut State),
    ) -> Result<Switch> {
        let dry = self.systemd.dry_run();
        let state = self.store.load_state()?;
        // Without a record (state.json deleted), the one instance that runs is what serves.
        let from = match &state.serving {
            Some(r) if r == release => None,
            Some(r) => Some(r.clone()),
            None => match self.live_releases().await?.as_slice() {
                [only] if only != release => Some(only.clone()),
                _ => None,
            },
        };
        if !dry {
            self.store
                .update(hook, deployment, &format!("switching to {release}"), |s| {
                    s.switching = Some(Switching {
                        to: release.to_string(),
                        from: from.clone(),
                        hook: hook.to_string(),
                        deployment: deployment.to_string(),
                    })
                })?;
        }
        kill_point("after-intent").await;

        let started = async {
            // app.before_switch (and the host files it and the units need), before anything of
            // the new release starts or anything of the serving one stops.
            crate::before_switch::before_start(self, release, hook).await?;
            let installed = self.install_units(release).await?;
            kill_point("after-units").await;
            // While a socket move is deferred, the release starts and is probed on the
            // addresses the socket has now.
            let current;
            let on_socket = match &installed.deferred_socket {
                None => self,
                Some(_) => {
                    let mut cfg = self.cfg.clone();
                    cfg.listen = listen_addresses(&std::fs::read_to_string(
                        self.unit_dir.join(self.cfg.socket_unit()),
                    )?);
                    current = cfg;
                    &Deployer::new(&current, self.systemd, self.store)?
                }
            };
            on_socket.begin_takeover().await?;
            on_socket.ensure_socket().await?;
            let switch = if self.cfg.is_proxy() {
                on_socket.start_behind_front(release).await?
            } else {
                on_socket.start_beside(release).await?
            };
            kill_point("after-start").await;
            // Enabled before the commit: from the commit on, a reboot must bring the new
            // release back (an undo disables it again).
            let unit = self.cfg.instance_unit(release);
            if self.systemd.unit_file_state(&unit).await? != "enabled" {
                self.systemd.enable(&[&unit]).await?;
            }
            if !dry {
                self.store
                    .update(hook, deployment, &format!("{release} serves"), |s| {
                        if from.is_some() {
                            s.previous = from.clone();
                        }
                        s.serving = Some(release.to_string());
                        s.switching = None;
                        s.failed.retain(|r| r != release);
                        // The front that serves is recorded here, with the release: an undo
                        // before this point goes back to the front recorded before.
                        s.front = switch.front.clone();
                        commit(s);
                    })?;
                units::unmark_starting(self.cfg, units::GuardKey::Serving, release);
                if let Some(front) = &switch.front {
                    units::unmark_starting(self.cfg, units::GuardKey::Front, front);
                }
            }
            Ok::<_, anyhow::Error>((installed, switch))
        }
        .await;
        let (installed, mut switch) = match started {
            Ok(x) => x,
            Err(e) => {
                let unattributed = crate::health::is_unattributed(&e) && from.is_some();
                self.steer_takeover_back();
                let undone = self.undo(release, from.as_deref()).await;
                self.abort_takeover().await;
                let serving = undone.message.clone();
                if !dry {
                    // A release that did not take over failed; the host (exit 3) or a
                    // rollback target is not blamed for it.
                    // Nor is one whose verdict cannot be pinned on it (probes through a socket
                    // that the old instance shares got no answer: it may have accepted them).
                    let blame = fault::exit_code(&e) != 3 && hook == "application-start" && !unattributed;
                    let message = format!("{release} did not take over: {e:#}");
                    let saved = self.store.update(hook, deployment, &message, |s| {
                        // An undo that did not finish keeps the intent: the next step
                        // finishes it.
                        if undone.complete {
                            s.switching = None;
                        }
                        if blame {
                            s.mark_failed(release);
                        }
                    });
                    if let Err(save) = saved {
                        tracing::error!("{save:#}");
                    }
                }
                let kind = fault::kind_of(&e).unwrap_or(fault::FaultKind::Deployment);
                let kept = match (&from, unattributed) {
                    (Some(from), true) => format!(
                        ". {release} is not marked failed: the unanswered probes went through the socket that {from} \
                         shares, and may have been {from}'s"
                    ),
                    _ => String::new(),
                };
                bail!(Fault::new(
                    kind,
                    format!("release {release} did not take over: {e:#}. It was stopped; {serving}{kept}")
                ));
            }
        };
        kill_point("after-commit").await;
        switch.from = from;

        // After the commit the new release serves: nothing here undoes the switch.
        self.retire_others(release, &mut switch).await;
        self.finish_takeover(hook, deployment).await;
        if let Some(socket) = installed.deferred_socket {
            let moved = self.move_socket(release, &socket, hook, deployment).await;
            if let Err(e) = moved {
                if !dry {
                    let _ = self
                        .store
                        .update(hook, deployment, &format!("{e:#}"), |s| s.validating = None);
                }
                return Err(e);
            }
        }
        Ok(switch)
    }

    /// Undoes a switch to `release` that was not committed: routes the fronts back, stops its
    /// instance, puts the units of `serving` back, and makes sure `serving` runs. Says whether
    /// every step succeeded (only then may the intent be cleared) and what serves, for messages.
    pub async fn undo(&self, release: &str, serving: Option<&str>) -> Undo {
        if self.store.load_state().ok().and_then(|s| s.serving).as_deref() == Some(release) {
            // A re-run for the release that serves: there is nothing to undo, and stopping
            // it would take the service down.
            return Undo::done(format!("{release} keeps serving"));
        }
        // strategy: proxy (either side): the fronts send requests to `serving` again first.
        let routed = self.route_back(release, serving).await;
        let stopped = self.abandon(release).await;
        let Some(serving) = serving else {
            return Undo {
                complete: routed && stopped,
                message: "nothing served before it".into(),
            };
        };
        if let Err(e) = self.restore_units(serving).await {
            tracing::error!("could not restore the units of {serving}: {e:#}");
            return Undo::unfinished(format!(
                "{serving} keeps serving, but its units could not be restored ({e:#}); the next deployment step \
                 tries again, or run `handoff rollback --to {serving}`"
            ));
        }
        let unit = self.cfg.instance_unit(serving);
        let message = match self.systemd.status(&unit).await {
            Ok(st) if st.is_active() => format!("{serving} keeps serving, with its own units"),
            _ => match self.systemd.start(&unit, self.start_deadline()).await {
                Ok(()) => format!("{serving} serves again, with its own units"),
                Err(e) => {
                    tracing::error!("could not start {serving} again: {e:#}");
                    return Undo::unfinished(format!(
                        "{serving} could not be started again ({e:#}): nothing serves; roll back by hand \
                         (`handoff rollback`)"
                    ));
                }
            },
        };
        if routed && stopped {
            Undo::done(message)
        } else {
            Undo::unfinished(format!(
                "{message}, but {release} could not be {}; the next deployment step finishes the undo",
                if stopped { "routed away from" } else { "stopped" }
            ))
        }
    }

    /// Finishes what a killed hook left: undoes an uncommitted switch (the intent stays
    /// until the undo has succeeded), reconciles the instances, fronts and route with the
    /// state, and applies a socket change that was written but not applied. Run under the
    /// lock, before any new step.
    pub async fn recover(&self, hook: &str, deployment: &str) -> Result<()> {
        let state = self.store.load_state()?;
        if let Some(sw) = &state.switching {
            tracing::warn!(
                "a switch to {} ({} of deployment {}) was interrupted; undoing it first",
                sw.to,
                sw.hook,
                sw.deployment
            );
            let undone = self.undo(&sw.to, sw.from.as_deref()).await;
            if !self.systemd.dry_run() && undone.complete {
                self.store.update(
                    hook,
                    deployment,
                    &format!("undid the interrupted switch to {}: {}", sw.to, undone.message),
                    |s| s.switching = None,
                )?;
            }
            if !undone.complete {
                bail!(Fault::environment(format!(
                    "the interrupted switch to {} could not be undone completely: {}; it stays recorded, and \
                     the next step tries again (see `handoff status`)",
                    sw.to, undone.message
                )));
            }
            tracing::info!("undid the interrupted switch to {}: {}", sw.to, undone.message);
        }
        self.recover_takeover(hook, deployment).await;
        if let Some(serving) = state.serving.as_deref() {
            // Whether the serving release runs behind a front is decided from its release
            // folder (its port), never by parsing its deploy.yml: a config that this version
            // cannot read (an older or newer release's) must never stop the front.
            let proxied = self.runs_behind_front(serving);
            if proxied {
                self.reconcile_route(serving, hook, deployment).await;
            }
            if !self.live_fronts().await?.is_empty() {
                self.settle_fronts(proxied).await;
            }
            self.reconcile_instances(serving).await;
        }
        if let Some(serving) = state.socket_pending.as_deref()
            && state.serving.as_deref() == Some(serving)
        {
            tracing::warn!("the socket's new addresses were written but not applied; applying them now");
            let cfg = DeployConfig::load(&self.store.dir(serving).join(config::FILE_NAME))?;
            let deployer = Deployer::new(&cfg, self.systemd, self.store)?;
            let socket = units::render(&cfg, &self.store.dir(serving))?
                .into_iter()
                .find(|u| u.name == cfg.socket_unit())
                .context("no socket unit rendered")?;
            if let Err(e) = deployer.move_socket(serving, &socket, hook, deployment).await {
                tracing::warn!("{e:#}");
            }
        }
        Ok(())
    }

    /// After the commit only `serving`'s instance runs and is enabled: an instance left
    /// running or enabled by an interrupted retire (a hook killed during the old release's
    /// drain) is disabled and stopped, so a reboot never starts two releases on the socket.
    pub async fn reconcile_instances(&self, serving: &str) {
        let mut others: Vec<String> = self.live_releases().await.unwrap_or_default();
        for kept in self.store.list().unwrap_or_default() {
            if !others.contains(&kept) {
                others.push(kept);
            }
        }
        others.retain(|r| r != serving);
        for other in others {
            let unit = self.cfg.instance_unit(&other);
            let enabled = self
                .systemd
                .unit_file_state(&unit)
                .await
                .is_ok_and(|s| s == "enabled");
            let status = self.systemd.status(&unit).await.ok();
            let live = status.as_ref().is_some_and(|st| st.active_state != "inactive");
            if let Some(st) = &status
                && !enabled
                && st.active_state == "deactivating"
                && st.status_text.starts_with(IDLE_HOLD_STATUS)
            {
                // Retired already: systemd ends it once the balancer has let go of its idle
                // connections (drain.idle_hold).
                tracing::debug!(
                    "{unit} is retired and holds idle connections ({})",
                    st.status_text
                );
                continue;
            }
            if enabled || live {
                tracing::warn!(
                    "{unit} is {} although {serving} serves (a retire was interrupted); retiring it now",
                    match (enabled, live) {
                        (true, true) => "running and enabled",
                        (true, false) => "enabled",
                        _ => "running",
                    }
                );
                self.retire_unit(&unit, ": it drains").await;
            }
        }
        let unit = self.cfg.instance_unit(serving);
        if !self.systemd.dry_run()
            && self
                .systemd
                .unit_file_state(&unit)
                .await
                .is_ok_and(|s| s == "disabled")
            && let Err(e) = self.systemd.enable(&[&unit]).await
        {
            tracing::warn!("{unit} serves but is not enabled, and enabling it failed: {e:#}");
        }
    }

    /// Installs the units rendered from `release`'s own templates (a changed socket address
    /// is deferred while the socket serves); reloads systemd when a file changed or a loaded
    /// unit is stale; checks that every unit loads; enables the socket and the holder.
    pub async fn install_units(&self, release: &str) -> Result<Installed> {
        let mut rendered = units::render(self.cfg, &self.store.dir(release))?;
        self.check_ownership(&rendered).await?;
        if self.cfg.app.log_to_file && !self.systemd.dry_run() {
            let logs = self.store.root().join("logs");
            std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        }
        let socket_name = self.cfg.socket_unit();
        let mut deferred_socket = None;
        if self.systemd.status(&socket_name).await?.is_running_or_starting()
            && let Ok(installed) = std::fs::read_to_string(self.unit_dir.join(&socket_name))
            && let Some(at) = rendered.iter().position(|u| u.name == socket_name)
            && let Some(before) = units::listen_change(&installed, &rendered[at].text)
        {
            tracing::warn!(
                "the socket's addresses change from [{}] to [{}]: the new release starts on the current \
                 socket first; the socket moves once it serves (the release is restarted onto it)",
                before.join(", "),
                self.cfg.listen.join(", ")
            );
            deferred_socket = Some(rendered.remove(at));
        }
        let changes = units::install(&rendered, &self.unit_dir, self.systemd.dry_run())?;
        kill_point("units-written").await;
        let stale = self.stale_units(release).await?;
        if changes.any() || !stale.is_empty() {
            tracing::info!(
                "reloading systemd: {}",
                if changes.any() {
                    format!("unit files changed: {}", changes.written.join(", "))
                } else {
                    format!("systemd has not loaded the current files of {}", stale.join(", "))
                }
            );
            self.systemd.reload().await?;
        } else {
            tracing::debug!("unit files unchanged and loaded; no reload");
        }
        if let Err(e) = self.check_units_load(release).await {
            // Never leave units behind that systemd cannot use.
            tracing::error!("{e:#}; restoring the previous unit files");
            units::undo(&changes)?;
            self.systemd.reload().await?;
            return Err(e);
        }
        for unit in [self.cfg.socket_unit(), self.cfg.holder_unit()] {
            if self.systemd.unit_file_state(&unit).await? != "enabled" {
                self.systemd.enable(&[&unit]).await?;
            }
        }
        Ok(Installed {
            changes,
            deferred_socket,
        })
    }

    /// The units of `serving`, rendered again from its own release folder and deploy.yml,
    /// installed and loaded: what it was started with.
    pub async fn restore_units(&self, serving: &str) -> Result<()> {
        let cfg = DeployConfig::load(&self.store.dir(serving).join(config::FILE_NAME))
            .with_context(|| format!("cannot read the deploy.yml of {serving}"))?;
        let rendered = units::render(&cfg, &self.store.dir(serving))?;
        let changes = units::install(&rendered, &self.unit_dir, self.systemd.dry_run())?;
        let deployer = Deployer::new(&cfg, self.systemd, self.store)?;
        if changes.any() || !deployer.stale_units(serving).await?.is_empty() {
            tracing::info!(
                "restoring the units of {serving}{}",
                if changes.any() {
                    format!(": {}", changes.written.join(", "))
                } else {
                    String::new()
                }
            );
            self.systemd.reload().await?;
        }
        Ok(())
    }

    /// Units of the service that systemd loaded from files changed since (NeedDaemonReload).
    async fn stale_units(&self, release: &str) -> Result<Vec<String>> {
        if self.systemd.dry_run() {
            return Ok(Vec::new());
        }
        let mut stale = Vec::new();
        for unit in self.service_units(release) {
            if self.systemd.status(&unit).await?.need_daemon_reload {
                stale.push(unit);
            }
        }
        Ok(stale)
    }

    fn service_units(&self, release: &str) -> [String; 3] {
        [
            self.cfg.socket_unit(),
            self.cfg.holder_unit(),
            self.cfg.instance_unit(release),
        ]
    }

    /// Refuses a `service:` whose unit names belong to someone else.
    pub async fn check_ownership(&self, rendered: &[units::Rendered]) -> Result<()> {
        let mut fragments = Vec::new();
        for unit in rendered {
            // The template itself cannot be loaded; an instance of it shows its file.
            let probe = if unit.name.ends_with("@.service") {
                unit.name.replace("@.service", "@handoff-check.service")
            } else {
                unit.name.clone()
            };
            let st = self.systemd.status(&probe).await?;
            fragments.push((unit.name.clone(), st.fragment_path));
        }
        units::check_ownership(rendered, &self.unit_dir, &fragments)
    }

    /// Every unit of the service must load after a reload ("loaded", not "bad-setting").
    async fn check_units_load(&self, release: &str) -> Result<()> {
        if self.systemd.dry_run() {
            return Ok(());
        }
        for unit in self.service_units(release) {
            let st = self.systemd.status(&unit).await?;
            if st.load_state != "loaded" {
                bail!(Fault::input(format!(
                    "{unit} does not load ({}): the bundle's units/ template is invalid; check it with \
                     `lint-bundle` or `systemd-analyze verify` and see `journalctl -b -u {unit}` for the line",
                    st.load_state
                )));
            }
        }
        Ok(())
    }

    /// Makes sure the socket is listening and its holder active (a failed socket is recovered
    /// in the order systemd accepts: stop the holder, reset the socket, start both), and that
    /// every address accepts connections.
    pub async fn ensure_socket(&self) -> Result<()> {
        let socket = self.cfg.socket_unit();
        let holder = self.cfg.holder_unit();
        let deadline = Duration::from_secs(30);
        let st = self.systemd.status(&socket).await?;
        if st.load_state != "loaded" {
            bail!(Fault::input(format!(
                "{socket} cannot be loaded ({}); check the unit with `systemd-analyze verify {}/{socket}`",
                st.load_state,
                self.unit_dir.display()
            )));
        }
        if st.active_state == "failed" {
            tracing::warn!(
                "{socket} had failed (result {}); recovering it: stop {holder}, reset {socket}, start both",
                st.result
            );
            self.systemd.stop(&holder, deadline).await?;
            self.systemd.reset_failed(&socket).await?;
        }
        if !st.is_active() {
            self.start_socket().await?;
        }
        if !self.systemd.status(&holder).await?.is_active() {
            self.systemd.start(&holder, deadline).await?;
        }
        self.check_socket_accepts().await
    }

    async fn start_socket(&self) -> Result<()> {
        let socket = self.cfg.socket_unit();
        self.systemd
            .start(&socket, Duration::from_secs(30))
            .await
            .map_err(|e| {
                Fault::environment(format!(
                    "{e:#}; is another process listening on {}? (`ss -ltnp` shows who)",
                    self.cfg.listen.join(", ")
                ))
            })?;
        tracing::info!("{socket} is listening on {}", self.cfg.listen.join(", "));
        Ok(())
    }

    async fn check_socket_accepts(&self) -> Result<()> {
        if self.systemd.dry_run() {
            return Ok(());
        }
        // Refused means nothing listens. No answer within the timeout means a listener whose
        // accept queue is full (thousands of clients reconnecting): the SYN was dropped and
        // would be retried by the kernel; the socket is there, and the switch goes on.
        for addr in self.probe.addrs() {
            match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => {}
                Err(_) => tracing::warn!(
                    "{addr} did not answer a connection within 2 s: its accept queue is full (a burst of \
                     connections?); the socket listens, going on"
                ),
                Ok(Err(e)) => bail!(Fault::environment(format!(
                    "{} is active but {addr} does not accept connections ({e}); check `systemctl status {}`",
                    self.cfg.socket_unit(),
                    self.cfg.socket_unit()
                ))),
            }
        }
        Ok(())
    }

    /// Release ids of every instance that is not inactive (active, starting, stopping, failed).
    pub async fn live_releases(&self) -> Result<Vec<String>> {
        self.live_instances(&format!("{}@", self.cfg.service)).await
    }

    /// The instance names (`%i`) of every `<prefix><name>.service` that is not inactive.
    pub(crate) async fn live_instances(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .systemd
            .list_live(&format!("{prefix}*.service"))
            .await?
            .into_iter()
            .filter_map(|u| {
                u.strip_prefix(prefix)?
                    .strip_suffix(".service")
                    .map(str::to_string)
            })
            .collect())
    }

    /// Step 3: starts `release` beside the serving instances (after stopping them, with
    /// `strategy: restart`) and confirms it answers through the port. On failure it is
    /// stopped; the caller undoes the rest.
    async fn start_beside(&self, release: &str) -> Result<Switch> {
        if !self.store.is_complete(release) {
            bail!(Fault::input(format!(
                "release {release} is not in {} (or its copy is incomplete); deploy it again",
                self.store.releases_dir().display()
            )));
        }
        let unit = self.cfg.instance_unit(release);
        let others: Vec<String> = self
            .live_releases()
            .await?
            .into_iter()
            .filter(|r| r != release)
            .collect();
        let report = Switch {
            stopped: others.clone(),
            ..Default::default()
        };

        if self.cfg.strategy == Strategy::Restart {
            for other in &others {
                tracing::info!("strategy restart: stopping {other} before {release} starts");
                let _drain = timing::waiting(Wait::App);
                self.systemd
                    .stop(&self.cfg.instance_unit(other), self.stop_deadline())
                    .await?;
            }
        }

        self.finish_idle_hold(&unit).await?;
        self.systemd.reset_failed(&unit).await?;
        self.mark_starting(units::GuardKey::Serving, release)?;
        tracing::info!(
            "starting {unit}{}",
            if others.is_empty() {
                String::new()
            } else {
                format!(" beside {}", others.join(", "))
            }
        );
        let started = self.start_and_confirm(release).await;
        if let Err(e) = started {
            self.abandon(release).await;
            return Err(e);
        }
        if self.cfg.is_proxy() || self.cfg.instance_header().is_some() || report.stopped.is_empty() {
            tracing::info!("{release} answers through {}", self.describe_addrs());
        } else {
            tracing::warn!(
                "a probe through {} answered healthy, but without health.instance_header it may have been {}: {release} \
                 is not confirmed (instance_header: none)",
                self.describe_addrs(),
                report.stopped.join(", ")
            );
        }
        Ok(report)
    }

    /// Starts the release's instance (until READY=1, or until exec with `app.ready: probe`)
    /// and confirms it through the port, watching it meanwhile: a crash or an automatic
    /// restart ends the confirmation at once, not at `deadlines.start`.
    async fn start_and_confirm(&self, release: &str) -> Result<()> {
        let _waiting = timing::waiting(Wait::App);
        let unit = self.cfg.instance_unit(release);
        self.systemd.start(&unit, self.start_deadline()).await?;
        if self.systemd.dry_run() {
            return Ok(());
        }
        self.steer_takeover_to_socket()?;
        let confirm = async {
            self.probe
                .confirm_ready(release, self.cfg.deadlines.start)
                .await
                .context("the new release started but")
        };
        tokio::select! {
            r = confirm => r.map_err(|e| {
                // A release that never answered: what it printed names the cause (an EPERM,
                // a traceback), as it does for a crash.
                let tail = self.output_tail(&unit);
                if tail.is_empty() {
                    return e;
                }
                if crate::health::is_unattributed(&e) {
                    // The verdict stays one that is not pinned on the release.
                    return crate::health::Unattributed(format!("{e:#}{tail}")).into();
                }
                let kind = crate::fault::kind_of(&e).unwrap_or(crate::fault::FaultKind::Deployment);
                anyhow::Error::new(crate::fault::Fault::new(kind, format!("{e:#}{tail}")))
            }),
            r = self.crash_watch(&unit) => r,
        }
    }

    /// Step 5: every instance but the new one drains and is disabled. The switch is
    /// committed: a failure here is reported and left for the next step, never undone.
    async fn retire_others(&self, release: &str, report: &mut Switch) {
        // Fronts other than the one the commit recorded drain first (a native release serves
        // the socket itself, so then every front goes): they were told the new route, or
        // still send requests to the old release.
        self.settle_fronts(self.cfg.is_proxy()).await;
        let mut others = report.stopped.clone();
        match self.live_releases().await {
            Ok(live) => {
                for r in live {
                    if r != release && !others.contains(&r) {
                        others.push(r);
                    }
                }
            }
            Err(e) => tracing::warn!("{e:#}"),
        }
        for other in &others {
            let other_unit = self.cfg.instance_unit(other);
            // Disabled before it drains: a hook killed during the drain, or a power cut, must
            // never leave the old release to start again at boot beside the serving one.
            let disabled = async {
                if self.systemd.unit_file_state(&other_unit).await? == "enabled" {
                    self.systemd.disable(&[&other_unit]).await?;
                }
                Ok::<_, anyhow::Error>(())
            };
            if let Err(e) = disabled.await {
                tracing::warn!("{e:#}; the next deployment step disables {other_unit}");
            }
            kill_point("retiring").await;
            // strategy: proxy: the front has drained it, nothing is in flight to it.
            if self.cfg.strategy != Strategy::Restart {
                let _drain = timing::waiting(Wait::App);
                tracing::info!("stopping {other_unit}: it drains while {release} serves");
                match self
                    .systemd
                    .stop_draining(&other_unit, self.stop_deadline())
                    .await
                {
                    Ok(Stopped::Exited) => {}
                    // Idle keep-alive connections only, held for the balancer: systemd ends
                    // the stop after the hook (drain.idle_hold).
                    Ok(Stopped::HoldingIdle(status)) => {
                        tracing::info!(
                            "{other_unit} has nothing in flight ({status}); systemd ends it after the hold"
                        );
                        continue;
                    }
                    // The new release serves; a slow drain does not undo the switch.
                    Err(e) => tracing::warn!("{e:#}"),
                }
            }
            if let Err(e) = self.systemd.reset_failed(&other_unit).await {
                tracing::warn!("{e:#}");
            }
        }
        report.stopped = others;
    }

    /// Step 6: re-creates the socket on its new addresses and restarts `release` onto it.
    /// Clients of a new address queue while the release restarts; a removed address stops
    /// accepting when the release lets go of it. An address both old and new cannot be bound
    /// twice, so then the release lets go first, and what queues on that address meanwhile is
    /// reset when the socket closes (README: a listen change).
    async fn move_socket(
        &self,
        release: &str,
        socket: &units::Rendered,
        hook: &str,
        deployment: &str,
    ) -> Result<()> {
        let dry = self.systemd.dry_run();
        let path = self.unit_dir.join(&socket.name);
        let old_text = std::fs::read_to_string(&path).unwrap_or_default();
        // A move that a killed hook left (recovery): the unit file already has the new
        // addresses, so where the socket was comes from the state.
        let state = self.store.load_state()?;
        let before = if state.socket_pending.as_deref() == Some(release) && !state.socket_before.is_empty() {
            state.socket_before.clone()
        } else {
            listen_addresses(&old_text)
        };
        let kept = before
            .iter()
            .any(|a| self.cfg.listen.iter().any(|b| addresses_overlap(a, b)));
        if !dry {
            self.store.update(
                hook,
                deployment,
                &format!("moving the socket to [{}]", self.cfg.listen.join(", ")),
                |s| {
                    s.socket_pending = Some(release.to_string());
                    s.socket_before = before.clone();
                },
            )?;
        }
        let moved = async {
            units::install(std::slice::from_ref(socket), &self.unit_dir, dry)?;
            self.systemd.reload().await?;
            kill_point("socket-written").await;
            tracing::info!(
                "moving {} to {} and restarting {} onto it",
                self.cfg.socket_unit(),
                self.cfg.listen.join(", "),
                self.cfg.instance_unit(release)
            );
            self.recreate_socket(release, kept).await
        }
        .await;
        if let Err(e) = moved {
            tracing::error!("{e:#}; putting the socket back on [{}]", before.join(", "));
            let old = units::Rendered {
                name: socket.name.clone(),
                text: units::with_listen(&socket.text, &before),
            };
            let mut cfg = self.cfg.clone();
            cfg.listen = before.clone();
            let back = Deployer::new(&cfg, self.systemd, self.store)?;
            let reverted = async {
                units::install(std::slice::from_ref(&old), &self.unit_dir, dry)?;
                self.systemd.reload().await?;
                back.recreate_socket(release, true).await
            }
            .await;
            if !dry {
                self.store.update(hook, deployment, "socket move undone", |s| {
                    s.socket_pending = None;
                    s.socket_before.clear();
                })?;
            }
            return Err(match reverted {
                Ok(()) => Fault::deployment(format!(
                    "{e:#}. The socket is back on [{}] and {release} serves there; fix the new addresses and \
                     deploy again",
                    before.join(", ")
                ))
                .into(),
                Err(again) => Fault::deployment(format!(
                    "{e:#}. Putting the socket back on [{}] failed too: {again:#}. Nothing may serve: check \
                     `handoff status` and `ss -ltnp`, free the addresses and deploy again",
                    before.join(", ")
                ))
                .into(),
            });
        }
        if !dry {
            self.store.update(
                hook,
                deployment,
                &format!("the socket listens on [{}]", self.cfg.listen.join(", ")),
                |s| {
                    s.socket_pending = None;
                    s.socket_before.clear();
                },
            )?;
        }
        Ok(())
    }

    /// Re-creates the socket from its unit file and restarts `release` onto it. With
    /// `release_first` the release lets go of its sockets before the socket is re-created (an
    /// address it holds cannot be bound again).
    async fn recreate_socket(&self, release: &str, release_first: bool) -> Result<()> {
        let deadline = Duration::from_secs(30);
        let (holder, socket_unit) = (self.cfg.holder_unit(), self.cfg.socket_unit());
        let unit = self.cfg.instance_unit(release);
        self.systemd.stop(&holder, deadline).await?;
        if release_first {
            let _drain = timing::waiting(Wait::App);
            self.systemd.stop(&unit, self.stop_deadline()).await?;
        }
        self.systemd.stop(&socket_unit, deadline).await?;
        self.systemd.reset_failed(&socket_unit).await?;
        self.start_socket().await?;
        self.systemd.start(&holder, deadline).await?;
        if !release_first {
            let _drain = timing::waiting(Wait::App);
            self.systemd.stop(&unit, self.stop_deadline()).await?;
        }
        self.start_and_confirm(release).await.map_err(|e| {
            Fault::deployment(format!(
                "{release} did not come back on the socket's addresses [{}]: {e:#}",
                self.cfg.listen.join(", ")
            ))
        })?;
        self.check_socket_accepts().await
    }

    /// Stops a release that did not make it, leaving its unit inactive rather than failed and
    /// disabled. Never the release that serves. Says whether it is stopped and disabled.
    pub(crate) async fn abandon(&self, release: &str) -> bool {
        if self.store.load_state().ok().and_then(|s| s.serving).as_deref() == Some(release) {
            return true;
        }
        units::unmark_starting(self.cfg, units::GuardKey::Serving, release);
        self.stop_and_disable(&self.cfg.instance_unit(release), "").await
    }

    /// Disables `unit` (so no boot brings it back), stops it unless it is inactive (it
    /// drains), and leaves it inactive rather than failed. Failures are logged; says whether
    /// the unit ended up inactive and not enabled.
    pub(crate) async fn stop_and_disable(&self, unit: &str, why: &str) -> bool {
        self.disable_and_stop(unit, why, false).await
    }

    /// [`Deployer::stop_and_disable`] for a process that no longer serves (a retired release
    /// or front): the wait ends once its `STATUS=` says that only idle keep-alive
    /// connections are left, held for the balancer (`drain.idle_hold`); systemd finishes the
    /// stop after the hook.
    pub(crate) async fn retire_unit(&self, unit: &str, why: &str) -> bool {
        self.disable_and_stop(unit, why, true).await
    }

    async fn disable_and_stop(&self, unit: &str, why: &str, idle_hold: bool) -> bool {
        let mut done = true;
        if self
            .systemd
            .unit_file_state(unit)
            .await
            .is_ok_and(|s| s == "enabled")
            && let Err(e) = self.systemd.disable(&[unit]).await
        {
            tracing::warn!("could not disable {unit}: {e:#}");
            done = false;
        }
        if !matches!(self.systemd.status(unit).await, Ok(st) if st.active_state == "inactive") {
            tracing::info!("stopping {unit}{why}");
            let _drain = timing::waiting(Wait::App);
            let stopped = if idle_hold {
                self.systemd.stop_draining(unit, self.stop_deadline()).await
            } else {
                self.systemd
                    .stop(unit, self.stop_deadline())
                    .await
                    .map(|()| Stopped::Exited)
            };
            match stopped {
                Ok(Stopped::Exited) => {}
                Ok(Stopped::HoldingIdle(status)) => {
                    tracing::info!("{unit} has nothing in flight ({status}); systemd ends it after the hold");
                    return done;
                }
                Err(e) => {
                    tracing::warn!("could not stop {unit}: {e:#}");
                    done = false;
                }
            }
        }
        let _ = self.systemd.reset_failed(unit).await;
        done || self.systemd.dry_run()
    }

    /// Waits for what a previous deployment left: `unit` retired then, and still holds
    /// idle keep-alive connections for the balancer (`drain.idle_hold`). A unit is started
    /// again only once that stop has finished.
    pub(crate) async fn finish_idle_hold(&self, unit: &str) -> Result<()> {
        let st = self.systemd.status(unit).await?;
        if st.active_state != "deactivating" {
            return Ok(());
        }
        tracing::info!(
            "{unit} is still draining from an earlier switch ({}); waiting for it before starting it again",
            st.status_text
        );
        let _drain = timing::waiting(Wait::App);
        self.systemd
            .stop(unit, self.cfg.drain.stop_timeout() + Duration::from_secs(10))
            .await
    }

    /// Lets `id`'s boot guard pass before the state records it ([`units::mark_starting`]).
    pub(crate) fn mark_starting(&self, key: units::GuardKey, id: &str) -> Result<()> {
        if self.systemd.dry_run() {
            return Ok(());
        }
        units::mark_starting(self.cfg, key, id).map_err(|e| Fault::environment(format!("{e:#}")).into())
    }

    fn describe_addrs(&self) -> String {
        self.probe
            .addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The addresses of a socket unit's `ListenStream=` lines.
fn listen_addresses(unit_text: &str) -> Vec<String> {
    units::listen_lines(unit_text)
        .iter()
        .map(|l| l.trim_start_matches("ListenStream=").to_string())
        .collect()
}

/// Whether two listen addresses cannot both be bound: the same port, and the same IP or a
/// wildcard on either side (a bare port listens on every address).
fn addresses_overlap(a: &str, b: &str) -> bool {
    use std::net::SocketAddr;
    let port_only = |s: &str| s.parse::<u16>().ok();
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(x), Ok(y)) => {
            x.port() == y.port() && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
        }
        (Ok(x), Err(_)) => port_only(b) == Some(x.port()),
        (Err(_), Ok(y)) => port_only(a) == Some(y.port()),
        (Err(_), Err(_)) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_overlap_on_the_same_port_with_a_wildcard_or_the_same_ip() {
        assert!(addresses_overlap("127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(addresses_overlap("0.0.0.0:8080", "127.0.0.1:8080"));
        assert!(addresses_overlap("[::]:8080", "0.0.0.0:8080"));
        assert!(addresses_overlap("8080", "127.0.0.1:8080"));
        assert!(!addresses_overlap("127.0.0.1:8080", "127.0.0.2:8080"));
        assert!(!addresses_overlap("127.0.0.1:8080", "127.0.0.1:9090"));
        assert_eq!(
            listen_addresses("[Socket]\nListenStream=127.0.0.1:1\nListenStream=[::1]:2\n"),
            ["127.0.0.1:1", "[::1]:2"]
        );
    }
}
