//! Recovery: a switch that stopped half-way (a failed step, a killed hook, a reboot) is
//! undone or finished from what `state.json` records, and the instances and fronts are made to
//! match it ([`Deployer::undo`], [`Deployer::recover`], [`Deployer::reconcile_instances`]).

use anyhow::{Context, Result, bail};

use super::{Deployer, Undo};
use crate::config::{self, DeployConfig};
use crate::fault::Fault;
use crate::systemd::IDLE_HOLD_STATUS;
use crate::units;

impl Deployer<'_> {
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
}
