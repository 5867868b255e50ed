//! `handoff uninstall`: the way back. Stops and removes what the hooks installed for a
//! service, and starts the unit a takeover stopped (`state.json` `taken_over`).
//!
//! In order: every release instance and front is disabled and stopped (each drains), then the
//! holder and the socket. From that moment **the port is closed**: connections are refused
//! until the app's own unit listens again, which it can only do once the socket is gone (it
//! binds without SO_REUSEPORT). The unit files the hooks rendered (those that start with
//! [`crate::units::MARKER`]) are removed and systemd reloads; `/opt/<service>` (releases,
//! state, logs) goes unless `--keep-releases`. The app's own files stay: its unit and
//! whatever it keeps in its `StateDirectory=` and the other directories under /var.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::fault::Fault;
use crate::release::ReleaseStore;
use crate::systemd::Systemd;
use crate::units;

/// What `handoff uninstall` keeps or starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// Keep `/opt/<service>` (releases, state, logs).
    pub keep_releases: bool,
    /// Start the unit a takeover stopped (default), or leave the port closed.
    pub restore: bool,
    pub dry_run: bool,
    pub lock_wait: Duration,
}

/// Removes `service`; returns what it did, one line per step.
pub async fn uninstall(service: &str, o: &Options) -> Result<Vec<String>> {
    crate::lifecycle::require_root()?;
    if !crate::config::is_safe_name(service, false) {
        bail!(Fault::input(format!(
            "'{service}' is not a service name (deploy.yml service:)"
        )));
    }
    let store = ReleaseStore::new(Path::new("/opt").join(service));
    let unit_dir = PathBuf::from(units::UNIT_DIR);
    let ours: Vec<PathBuf> = [
        format!("{service}.socket"),
        format!("{service}-hold.service"),
        format!("{service}@.service"),
        format!("{service}-front@.service"),
    ]
    .iter()
    .map(|n| unit_dir.join(n))
    .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.starts_with(units::MARKER)))
    .collect();
    if ours.is_empty() && !store.root().exists() {
        bail!(Fault::input(format!(
            "no service {service} deployed by handoff here: neither {} nor its units in {} exist; \
             `handoff status -s <service>` shows one",
            store.root().display(),
            unit_dir.display()
        )));
    }
    let systemd = Systemd::connect(o.dry_run)
        .await
        .map_err(|e| Fault::environment(format!("{e:#}")))?;
    let _lock = if o.dry_run {
        None
    } else {
        Some(crate::lock::DeployLock::acquire(service, "handoff uninstall", o.lock_wait).await?)
    };
    let state = store.load_state().unwrap_or_default();
    let mut done = Vec::new();
    // Where the socket listens: the app's own unit must answer there again.
    let addresses: Vec<std::net::SocketAddr> = units::listen_lines(
        &std::fs::read_to_string(unit_dir.join(format!("{service}.socket"))).unwrap_or_default(),
    )
    .iter()
    .filter_map(|l| l.trim_start_matches("ListenStream=").parse().ok())
    .collect();

    // Fronts first: each drains its clients while the release still answers them.
    let mut instances = systemd.list_live(&format!("{service}-front@*.service")).await?;
    instances.extend(systemd.list_live(&format!("{service}@*.service")).await?);
    for unit in &instances {
        if systemd.unit_file_state(unit).await? == "enabled" {
            systemd.disable(&[unit]).await?;
        }
        let started = Instant::now();
        systemd.stop(unit, Duration::from_secs(600)).await?;
        systemd.reset_failed(unit).await?;
        done.push(format!(
            "stopped and disabled {unit} ({:.1} s drain)",
            started.elapsed().as_secs_f64()
        ));
    }
    let socket = format!("{service}.socket");
    let holder = format!("{service}-hold.service");
    for unit in [&holder, &socket] {
        systemd.stop(unit, Duration::from_secs(30)).await?;
        systemd.reset_failed(unit).await?;
    }
    let closed_at = Instant::now();
    if systemd.unit_file_state(&socket).await? == "enabled" {
        systemd.disable(&[&socket]).await?;
    }
    done.push(format!("stopped {socket}: the port is closed"));

    // The app's own unit first: every moment until it listens, connections are refused.
    if o.restore
        && let Some(unit) = &state.taken_over
    {
        systemd.enable(&[unit]).await?;
        systemd.start(unit, Duration::from_secs(300)).await.map_err(|e| {
            Fault::deployment(format!(
                "{e:#}; the port stays closed: start {unit} by hand once it is fixed (`systemctl start {unit}`)"
            ))
        })?;
        let listening = accepts_again(&addresses, Duration::from_secs(60)).await;
        done.push(match listening {
            true => format!(
                "enabled and started {unit} (taken over by the first deployment): the port was closed for {:.2} s, \
                 until it accepted connections",
                closed_at.elapsed().as_secs_f64()
            ),
            false => format!(
                "enabled and started {unit}, but it does not accept connections on {} after 60 s; \
                 see `journalctl -u {unit}`",
                addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            ),
        });
    } else if let Some(unit) = &state.taken_over {
        done.push(format!(
            "left {unit} stopped and disabled (--no-restore); nothing listens on the port"
        ));
    }

    // Instances enabled from earlier releases leave links in the .wants folders.
    let wants = unit_dir.join("multi-user.target.wants");
    if let Ok(entries) = std::fs::read_dir(&wants) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("{service}@")) || name.starts_with(&format!("{service}-front@")) {
                remove(&e.path(), o.dry_run, &mut done)?;
            }
        }
    }
    for path in &ours {
        remove(path, o.dry_run, &mut done)?;
    }
    systemd.reload().await?;

    if !o.keep_releases && store.root().exists() {
        if o.dry_run {
            done.push(format!("dry-run: would remove {}", store.root().display()));
        } else {
            std::fs::remove_dir_all(store.root())
                .map_err(|e| Fault::environment(format!("cannot remove {}: {e}", store.root().display())))?;
            done.push(format!(
                "removed {} (releases, state, logs)",
                store.root().display()
            ));
        }
    }
    let run = Path::new("/run/handoff").join(service);
    if run.exists() && !o.dry_run {
        let _ = std::fs::remove_dir_all(&run);
    }
    Ok(done)
}

/// Waits until every address accepts a connection (a wildcard is tried on loopback).
async fn accepts_again(addresses: &[std::net::SocketAddr], within: Duration) -> bool {
    let started = Instant::now();
    for addr in addresses {
        let mut target = *addr;
        if target.ip().is_unspecified() {
            target.set_ip(if target.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        while tokio::net::TcpStream::connect(target).await.is_err() {
            if started.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    true
}

fn remove(path: &Path, dry_run: bool, done: &mut Vec<String>) -> Result<()> {
    if dry_run {
        done.push(format!("dry-run: would remove {}", path.display()));
        return Ok(());
    }
    std::fs::remove_file(path)
        .map_err(|e| Fault::environment(format!("cannot remove {}: {e}", path.display())))?;
    done.push(format!("removed {}", path.display()));
    Ok(())
}
