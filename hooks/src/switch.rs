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
//! The parts, one file each: [`native`] (start beside, confirm, retire), [`proxy`] (the
//! switch of `strategy: proxy`), [`recovery`] (undo, recover, reconcile) and [`install`] (the
//! units and the socket).
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

pub mod before_switch;
pub mod install;
pub mod native;
pub mod proxy;
pub mod recovery;
pub mod takeover;

use install::listen_addresses;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::config::DeployConfig;
use crate::fault::{self, Fault};
use crate::health::Probe;
use crate::release::{ReleaseStore, State, Switching};
use crate::systemd::Systemd;
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
    pub(crate) takeover: std::sync::Mutex<Option<crate::switch::takeover::Held>>,
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
            crate::switch::before_switch::before_start(self, release, hook).await?;
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
}
