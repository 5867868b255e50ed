//! The units and the socket: a release's unit files installed durably (systemd reloaded only
//! when needed, each unit made to load), the serving release's units restored, ownership of the
//! service's names checked, the socket started and proven to accept, and a change of its
//! addresses moved after the switch (the one switch that costs a restart).

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Deployer, Installed, kill_point};
use crate::config::{self, DeployConfig};
use crate::fault::Fault;
use crate::timing::{self, Wait};
use crate::units;

impl Deployer<'_> {
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
    pub(super) async fn stale_units(&self, release: &str) -> Result<Vec<String>> {
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

    pub(super) fn service_units(&self, release: &str) -> [String; 3] {
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
    pub(super) async fn check_units_load(&self, release: &str) -> Result<()> {
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

    pub(super) async fn start_socket(&self) -> Result<()> {
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

    pub(super) async fn check_socket_accepts(&self) -> Result<()> {
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

    /// Step 6: re-creates the socket on its new addresses and restarts `release` onto it.
    /// Clients of a new address queue while the release restarts; a removed address stops
    /// accepting when the release lets go of it. An address both old and new cannot be bound
    /// twice, so then the release lets go first, and what queues on that address meanwhile is
    /// reset when the socket closes (README: a listen change).
    pub(super) async fn move_socket(
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
    pub(super) async fn recreate_socket(&self, release: &str, release_first: bool) -> Result<()> {
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

    /// Lets `id`'s boot guard pass before the state records it ([`units::mark_starting`]).
    pub(crate) fn mark_starting(&self, key: units::GuardKey, id: &str) -> Result<()> {
        if self.systemd.dry_run() {
            return Ok(());
        }
        units::mark_starting(self.cfg, key, id).map_err(|e| Fault::environment(format!("{e:#}")).into())
    }

    pub(super) fn describe_addrs(&self) -> String {
        self.probe
            .addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The addresses of a socket unit's `ListenStream=` lines.
pub(super) fn listen_addresses(unit_text: &str) -> Vec<String> {
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
