//! The native switch's moves on instances: a release started beside the serving one and
//! confirmed through the real port (with a watch for a crash and the app's last lines when it
//! fails), then the others retired: disabled, stopped and drained, an idle hold left to end
//! on its own.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Deployer, Switch, kill_point};
use crate::config::Strategy;
use crate::fault::Fault;
use crate::systemd::Stopped;
use crate::timing::{self, Wait};
use crate::units;

impl Deployer<'_> {
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
    pub(super) async fn start_beside(&self, release: &str) -> Result<Switch> {
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
    pub(super) async fn start_and_confirm(&self, release: &str) -> Result<()> {
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
    pub(super) async fn retire_others(&self, release: &str, report: &mut Switch) {
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

    pub(super) async fn disable_and_stop(&self, unit: &str, why: &str, idle_hold: bool) -> bool {
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
}

impl Deployer<'_> {
    /// Ends with an error as soon as `unit` crashes, restarts or stops.
    pub(crate) async fn crash_watch(&self, unit: &str) -> Result<()> {
        let started = self.systemd.status(unit).await?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let st = self.systemd.status(unit).await?;
            if st.has_crashed() || st.n_restarts > started.n_restarts || !st.is_running_or_starting() {
                bail!(
                    "{}; {}{}",
                    st.start_failure(),
                    crate::systemd::journal_hint(unit),
                    self.output_tail(unit)
                );
            }
        }
    }

    /// The last lines the app wrote (with `app.log_to_file`), and what an EPERM in them means.
    pub(crate) fn output_tail(&self, unit: &str) -> String {
        let Some(release) = unit
            .strip_prefix(&format!("{}@", self.cfg.service))
            .and_then(|r| r.strip_suffix(".service"))
        else {
            return String::new();
        };
        if !self.cfg.app.log_to_file {
            return String::new();
        }
        let log = self.store.root().join("logs").join(format!("{release}.log"));
        let (Ok(text), Some(tail)) = (std::fs::read_to_string(&log), last_lines(&log, 6)) else {
            return String::new();
        };
        let eperm = if text.contains("Operation not permitted") {
            ". \"Operation not permitted\" (EPERM) at start: a system call the unit refuses \
             (SystemCallFilter=, SystemCallErrorNumber=EPERM) or a right it lacks (no capabilities, read-only \
             file system); find the call in the output: setuid()/setgid() (a server that forks workers, like \
             gunicorn) is allowed by `needs: [setuid]` under app: in deploy.yml, anything else in the bundle's \
             units/ template"
        } else {
            ""
        };
        format!(
            "\nlast lines of {}:\n  {}{eperm}",
            log.display(),
            tail.join("\n  ")
        )
    }
}

/// The last `n` lines of a file (None when it cannot be read or is empty).
pub(crate) fn last_lines(path: &Path, n: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<String> = text.lines().rev().take(n).map(str::to_string).collect();
    (!lines.is_empty()).then(|| lines.into_iter().rev().collect())
}
