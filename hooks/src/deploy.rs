//! The release switch: how traffic moves from one release to the next without a failed or a
//! stalled request.
//!
//! ```text
//!   client ──► kernel queue of <service>.socket (never stopped by a deploy)
//!                 │            │
//!                 ▼            ▼
//!     <service>@old.service   <service>@new.service      both accept() from the same socket
//! ```
//!
//! 1. The socket is listening (a failed socket is recovered in the order systemd accepts:
//!    stop the holder, reset the socket, start the socket, start the holder).
//! 2. `<service>@<new>.service` starts while the old instance still serves; its start job
//!    completes at READY=1. A crash or a missed deadline stops the new instance: the old one
//!    never stopped serving.
//! 3. Probes through the real port, one new connection each, must reach the new release and
//!    get 200 (the app names its instance in a header, so a probe answered by the old one
//!    does not count).
//! 4. Only then is the old instance stopped: it stops accepting at once and drains; the new
//!    instance takes everything queued on the shared socket.
//! 5. The new instance is enabled (it comes back after a reboot), the old one disabled.
//!
//! With `strategy: restart` the old instance is stopped before the new one starts: nothing is
//! refused (the socket queues), but clients wait for the drain and the start.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::{DeployConfig, Strategy};
use crate::fault::Fault;
use crate::health::Probe;
use crate::release::ReleaseStore;
use crate::systemd::Systemd;
use crate::units;

/// Everything a switch needs.
pub struct Deployer<'a> {
    pub cfg: &'a DeployConfig,
    pub systemd: &'a Systemd,
    pub store: &'a ReleaseStore,
    pub probe: Probe,
    pub unit_dir: PathBuf,
}

/// What a switch did, and how long it waited on the app (start, probes, drain).
#[derive(Debug, Default)]
pub struct Switch {
    pub stopped: Vec<String>,
    pub waited_on_app: Duration,
}

impl<'a> Deployer<'a> {
    pub fn new(cfg: &'a DeployConfig, systemd: &'a Systemd, store: &'a ReleaseStore) -> Result<Self> {
        Ok(Self {
            cfg,
            systemd,
            store,
            probe: Probe::new(cfg)?,
            unit_dir: PathBuf::from(units::UNIT_DIR),
        })
    }

    /// Stop jobs wait for the drain; systemd's own TimeoutStopSec= (the drain budget) ends it.
    fn stop_deadline(&self) -> Duration {
        self.cfg.drain.budget + Duration::from_secs(10)
    }

    fn start_deadline(&self) -> Duration {
        self.cfg.deadlines.start + Duration::from_secs(5)
    }

    /// Installs the units rendered from `release`'s own templates; reloads systemd only when
    /// a file changed; enables the socket and the holder so they come back after a reboot.
    pub async fn install_units(&self, release: &str) -> Result<units::Changes> {
        let rendered = units::render(self.cfg, &self.store.dir(release))?;
        if self.cfg.app.log_to_file && !self.systemd.dry_run() {
            let logs = self.store.root().join("logs");
            std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        }
        let changes = units::install(&rendered, &self.unit_dir, self.systemd.dry_run())?;
        if changes.any() {
            tracing::info!(
                "unit files changed: {}; reloading systemd",
                changes.written.join(", ")
            );
            self.systemd.reload().await?;
            if let Err(e) = self.check_units_load(release).await {
                // Never leave units behind that systemd cannot use: the serving release
                // must still be stoppable, and the next deployment must start from good units.
                tracing::error!("{e:#}; restoring the previous unit files");
                units::undo(&changes)?;
                self.systemd.reload().await?;
                return Err(e);
            }
        } else {
            tracing::debug!("unit files unchanged; no reload");
        }
        if let Some(before) = &changes.listen_before {
            tracing::warn!(
                "the socket's addresses change from [{}] to [{}]: the socket is re-created; the old \
                 address stops accepting new connections now, the old release serves what it has \
                 accepted until it is stopped",
                before.join(", "),
                self.cfg.listen.join(", ")
            );
        }
        for unit in [self.cfg.socket_unit(), self.cfg.holder_unit()] {
            if self.systemd.unit_file_state(&unit).await? != "enabled" {
                self.systemd.enable(&[&unit]).await?;
            }
        }
        Ok(changes)
    }

    /// Every unit of the service must load after a reload ("loaded", not "bad-setting").
    async fn check_units_load(&self, release: &str) -> Result<()> {
        if self.systemd.dry_run() {
            return Ok(());
        }
        for unit in [
            self.cfg.socket_unit(),
            self.cfg.holder_unit(),
            self.cfg.instance_unit(release),
        ] {
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

    /// Makes sure the socket is listening and its holder active; re-creates the socket when
    /// asked (changed addresses). Verifies that every address accepts connections.
    pub async fn ensure_socket(&self, recreate: bool) -> Result<()> {
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
        if recreate && st.is_running_or_starting() {
            tracing::info!("re-creating {socket} for its new addresses");
            self.systemd.stop(&holder, deadline).await?;
            self.systemd.stop(&socket, deadline).await?;
        } else if st.active_state == "failed" {
            tracing::warn!(
                "{socket} had failed (result {}); recovering it: stop {holder}, reset {socket}, start both",
                st.result
            );
            self.systemd.stop(&holder, deadline).await?;
            self.systemd.reset_failed(&socket).await?;
        }
        if recreate || !st.is_active() {
            self.systemd.start(&socket, deadline).await.map_err(|e| {
                Fault::environment(format!(
                    "{e:#}; is another process listening on {}? (`ss -ltnp` shows who)",
                    self.cfg.listen.join(", ")
                ))
            })?;
            tracing::info!("{socket} is listening on {}", self.cfg.listen.join(", "));
        }
        if !self.systemd.status(&holder).await?.is_active() {
            self.systemd.start(&holder, deadline).await?;
        }
        if !self.systemd.dry_run() {
            for addr in self.probe.addrs() {
                let ok =
                    tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await;
                if !matches!(ok, Ok(Ok(_))) {
                    bail!(Fault::environment(format!(
                        "{socket} is active but {addr} does not accept connections; check `systemctl status {socket}`"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Release ids of every instance that is not inactive (active, starting, stopping, failed).
    pub async fn live_releases(&self) -> Result<Vec<String>> {
        let prefix = format!("{}@", self.cfg.service);
        Ok(self
            .systemd
            .list_live(&self.cfg.instance_pattern())
            .await?
            .into_iter()
            .filter_map(|u| {
                u.strip_prefix(&prefix)?
                    .strip_suffix(".service")
                    .map(str::to_string)
            })
            .collect())
    }

    /// Moves traffic to `release`: start it beside the serving one, confirm it answers
    /// through the port, then drain and stop every other instance.
    pub async fn switch_to(&self, release: &str) -> Result<Switch> {
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
        let mut report = Switch::default();

        if self.cfg.strategy == Strategy::Restart {
            for other in &others {
                tracing::info!("strategy restart: stopping {other} before {release} starts");
                let t = Instant::now();
                self.systemd
                    .stop(&self.cfg.instance_unit(other), self.stop_deadline())
                    .await?;
                report.waited_on_app += t.elapsed();
            }
        }

        self.systemd.reset_failed(&unit).await?;
        tracing::info!(
            "starting {unit}{}",
            if others.is_empty() {
                String::new()
            } else {
                format!(" beside {}", others.join(", "))
            }
        );
        let t = Instant::now();
        let started = self.systemd.start(&unit, self.start_deadline()).await;
        let started = match started {
            Ok(()) if self.systemd.dry_run() => Ok(()),
            Ok(()) => self
                .probe
                .confirm_ready(release, self.cfg.deadlines.start)
                .await
                .context("the new release started but"),
            Err(e) => Err(e),
        };
        report.waited_on_app += t.elapsed();
        if let Err(e) = started {
            self.abandon(release).await;
            let serving = if self.cfg.strategy == Strategy::Restart {
                self.restore(&others).await
            } else if others.is_empty() {
                "nothing served before it".to_string()
            } else {
                format!("{} keeps serving", others.join(", "))
            };
            bail!(Fault::deployment(format!(
                "release {release} did not take over: {e:#}. It was stopped; {serving}"
            )));
        }
        tracing::info!(
            "{release} answers through {}; stopping the previous instance",
            self.describe_addrs()
        );

        for other in &others {
            let other_unit = self.cfg.instance_unit(other);
            let t = Instant::now();
            if self.cfg.strategy == Strategy::Handoff {
                tracing::info!("stopping {other_unit}: it drains while {release} serves");
                if let Err(e) = self.systemd.stop(&other_unit, self.stop_deadline()).await {
                    // The new release serves; a slow drain does not undo the switch.
                    tracing::warn!("{e:#}");
                }
            }
            report.waited_on_app += t.elapsed();
            self.systemd.reset_failed(&other_unit).await?;
            if self.systemd.unit_file_state(&other_unit).await? == "enabled" {
                self.systemd.disable(&[&other_unit]).await?;
            }
            report.stopped.push(other.clone());
        }
        if self.systemd.unit_file_state(&unit).await? != "enabled" {
            self.systemd.enable(&[&unit]).await?;
        }
        Ok(report)
    }

    /// Stops a release that did not make it, leaving its unit inactive rather than failed.
    async fn abandon(&self, release: &str) {
        let unit = self.cfg.instance_unit(release);
        tracing::info!("stopping {unit}");
        if let Err(e) = self.systemd.stop(&unit, self.stop_deadline()).await {
            tracing::warn!("could not stop {unit}: {e:#}");
        }
        let _ = self.systemd.reset_failed(&unit).await;
    }

    /// Restart strategy: the old instances were stopped first; start them again.
    async fn restore(&self, releases: &[String]) -> String {
        let mut back = Vec::new();
        for r in releases {
            match self
                .systemd
                .start(&self.cfg.instance_unit(r), self.start_deadline())
                .await
            {
                Ok(()) => back.push(r.clone()),
                Err(e) => tracing::error!("could not start {r} again: {e:#}"),
            }
        }
        if back.is_empty() {
            "no release could be started again: nothing serves; roll back by hand (`handoff rollback`)".into()
        } else {
            format!("{} serves again", back.join(", "))
        }
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
