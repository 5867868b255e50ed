//! Takeover: the first deployment moves the port from the unit that serves it today
//! (`takeover: myapp.service` in deploy.yml) to the service's socket, under load, without a
//! refused or reset connection.
//!
//! The old server bound its port without `SO_REUSEPORT`, so the socket unit cannot bind the
//! same address beside it, and stopping the old server first would refuse every connection
//! until the socket listens. Instead the hooks join the old server's **own listening socket**:
//!
//! 1. The unit's processes (systemd's `GetUnitProcesses`) are searched for listening sockets on
//!    the deploy's addresses (`/proc/<pid>/fd` against `/proc/net/tcp{,6}`).
//! 2. `pidfd_getfd(2)` gives the hooks a copy of each: the same socket, not a new one. On it
//!    they set `SO_REUSEPORT` and make it root's (`fchown`: the kernel puts sockets in one
//!    reuseport group only when they have the same owner, and systemd binds as root).
//! 3. A one-instruction classic BPF program on the group (`SO_ATTACH_REUSEPORT_CBPF`) sends
//!    every new connection to the old socket, index 0 of the group.
//! 4. `net.ipv4.tcp_migrate_req=1` (Linux ≥ 5.14): a listener of the group that closes hands
//!    the connections queued on it to another listener instead of resetting them.
//! 5. The socket unit starts with `ReusePort=yes` and joins the group; it gets no connection
//!    yet. The release (or, with `strategy: proxy`, the front) starts on it as in any
//!    deployment. Once its start job is done (READY=1), the program switches to the socket's
//!    index: every new connection goes to the new release, and the health checks through the
//!    port reach it.
//! 6. After the commit the hooks close their copies and stop the old unit (its own graceful
//!    stop drains what it accepted); its listener closes and whatever still queued on it
//!    moves to the socket. The unit is disabled, its files left in place, and `state.json`
//!    records it (`taken_over`): `handoff uninstall` starts it again.
//!
//! A deployment that fails sends connections back to the old socket and stops the socket
//! unit: what queued on it moves back to the old server, which never stopped serving.
//! Later deployments ignore the field (the state records a serving release).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::libc;

use crate::fault::Fault;
use crate::switch::Deployer;

const MIGRATE_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// One listening socket of the old unit, copied into the hooks.
#[derive(Debug)]
struct Copy {
    addr: SocketAddr,
    fd: OwnedFd,
    /// The socket unit's index in the reuseport group: the old server's sockets on this
    /// address come first (one, unless it already used SO_REUSEPORT itself).
    socket_index: u32,
}

/// A takeover under way: the old unit, the copies of its listeners, and the sysctl to put back.
#[derive(Debug)]
pub struct Held {
    pub unit: String,
    copies: Vec<Copy>,
    migrate_before: Option<String>,
}

impl Held {
    fn steer(&self, to_socket: bool) -> Result<()> {
        for c in &self.copies {
            steer(&c.fd, if to_socket { c.socket_index } else { 0 })
                .with_context(|| format!("cannot steer new connections on {}", c.addr))?;
        }
        Ok(())
    }

    /// Puts `net.ipv4.tcp_migrate_req` back as it was.
    fn restore_migrate(&mut self) {
        if let Some(before) = self.migrate_before.take()
            && let Err(e) = std::fs::write(MIGRATE_SYSCTL, &before)
        {
            tracing::warn!("could not set {MIGRATE_SYSCTL} back to {}: {e}", before.trim());
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.restore_migrate();
    }
}

/// Attaches `return index` as the reuseport group's program: the kernel gives each new
/// connection to the group's socket at `index` (one out of range falls back to the hash).
fn steer(fd: &OwnedFd, index: u32) -> std::io::Result<()> {
    let mut code = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: index,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `code`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A copy of file descriptor `fd` of process `pid` (`pidfd_getfd`, Linux ≥ 5.6).
fn copy_fd(pid: u32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain system calls; each returned descriptor is owned exactly once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(copy as i32))
    }
}

/// Listening TCP sockets of this network namespace: inode → address.
fn listening_inodes() -> HashMap<u64, SocketAddr> {
    let mut found = HashMap::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            if let (Some(addr), Ok(inode)) = (
                crate::switch::proxy::parse_proc_addr(cols[1], v6),
                cols[9].parse(),
            ) {
                found.insert(inode, addr);
            }
        }
    }
    found
}

/// Socket file descriptors of `pid`: (fd, inode).
fn socket_fds(pid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            let inode = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((fd, inode))
        })
        .collect()
}

/// A listener of the old unit: which process holds it under which fd, and where it listens.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub pid: u32,
    pub fd: i32,
    pub addr: SocketAddr,
}

/// The listeners that `pids` hold on the ports of `listen`, one per socket. A listener on one
/// of those ports but another address cannot share the port with the socket: refused, with
/// the `listen:` that would.
pub fn find_listeners(pids: &[u32], listen: &[String]) -> Result<Vec<Found>> {
    let wanted: Vec<SocketAddr> = listen.iter().filter_map(|a| a.parse().ok()).collect();
    let listening = listening_inodes();
    let mut seen = Vec::new();
    let mut found = Vec::new();
    for &pid in pids {
        for (fd, inode) in socket_fds(pid) {
            let Some(addr) = listening.get(&inode) else {
                continue;
            };
            if seen.contains(&inode) || !wanted.iter().any(|w| w.port() == addr.port()) {
                continue;
            }
            seen.push(inode);
            if !wanted.contains(addr) {
                let mapped = match addr {
                    SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some() => {
                        " (an IPv4 address in IPv6 form: a JVM binds so unless started with \
                         -Djava.net.preferIPv4Stack=true; add that to the old unit's java command line instead)"
                    }
                    _ => "",
                };
                bail!(Fault::input(format!(
                    "takeover: the old server listens on {addr}{mapped}, and deploy.yml listen has {}: the socket can \
                     take over only the same address. Set listen: [\"{addr}\"] for the first deployment (a later one \
                     can move it)",
                    listen.join(", ")
                )));
            }
            found.push(Found { pid, fd, addr: *addr });
        }
    }
    Ok(found)
}

/// Takes copies of `found`, makes each shareable and steers every new connection to it.
fn hold(unit: &str, found: &[Found]) -> Result<Held> {
    let mut copies: Vec<Copy> = Vec::new();
    for f in found {
        let fd = copy_fd(f.pid, f.fd).map_err(|e| {
            Fault::environment(format!(
                "takeover: cannot copy {unit}'s listening socket {} (pid {}, fd {}): {e}; the hooks need Linux ≥ 5.6 \
                 and root (pidfd_getfd)",
                f.addr, f.pid, f.fd
            ))
        })?;
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReusePort, &true)
            .with_context(|| format!("takeover: cannot set SO_REUSEPORT on {}", f.addr))?;
        nix::unistd::fchown(
            &fd,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(nix::unistd::Gid::from_raw(0)),
        )
        .with_context(|| format!("takeover: cannot make the socket on {} root's", f.addr))?;
        let before = copies.iter().filter(|c| c.addr == f.addr).count() as u32;
        copies.push(Copy {
            addr: f.addr,
            fd,
            socket_index: 0,
        });
        for c in copies.iter_mut().filter(|c| c.addr == f.addr) {
            c.socket_index = before + 1;
        }
    }
    let migrate_before = std::fs::read_to_string(MIGRATE_SYSCTL).map_err(|e| {
        Fault::environment(format!(
            "takeover: cannot read {MIGRATE_SYSCTL} ({e}); it needs Linux ≥ 5.14, or take the host out of the load \
             balancer and stop {unit} by hand before the first deployment"
        ))
    })?;
    std::fs::write(MIGRATE_SYSCTL, "1")
        .with_context(|| format!("takeover: cannot set {MIGRATE_SYSCTL} to 1"))?;
    let held = Held {
        unit: unit.to_string(),
        copies,
        migrate_before: Some(migrate_before),
    };
    // The kernel attaches a program to a reuseport group, and a socket that was listening
    // before it had SO_REUSEPORT is in none yet: a socket of the hooks' own joins it for a
    // moment, which makes the group. What reaches that socket before the program is attached
    // moves back to the old one when it closes (tcp_migrate_req).
    let mut addrs: Vec<SocketAddr> = held.copies.iter().map(|c| c.addr).collect();
    addrs.dedup();
    for addr in addrs {
        let _member =
            join(addr).with_context(|| format!("takeover: cannot join the listening socket on {addr}"))?;
        held.steer(false)?;
    }
    Ok(held)
}

/// A listening socket on `addr` with SO_REUSEPORT: a member of that address's group.
fn join(addr: SocketAddr) -> nix::Result<OwnedFd> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    // As systemd does for every socket unit: without it, the connections the old server has
    // accepted (bound to the same address) conflict with the bind.
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, socket::Backlog::new(16)?)?;
    Ok(fd)
}

/// BeforeInstall's check of a takeover to come: the kernel can do it, and the unit's
/// listeners are where `listen:` says. Nothing changes.
pub async fn preflight(
    cfg: &crate::config::DeployConfig,
    systemd: &crate::systemd::Systemd,
    store: &crate::release::ReleaseStore,
) -> Result<()> {
    let Some(unit) = &cfg.takeover else {
        return Ok(());
    };
    if store.load_state()?.serving.is_some() || !systemd.status(unit).await?.is_active() {
        return Ok(());
    }
    if !Path::new(MIGRATE_SYSCTL).exists() {
        bail!(Fault::environment(format!(
            "takeover: this kernel has no {MIGRATE_SYSCTL} (Linux ≥ 5.14 has it): the queued connections of {unit}              would be reset. Take the host out of the load balancer, stop {unit}, then deploy; or remove takeover:"
        )));
    }
    let found = find_listeners(&systemd.unit_processes(unit).await?, &cfg.listen)?;
    tracing::info!(
        "takeover: {unit} listens on {}; the first deployment takes that over",
        if found.is_empty() {
            "none of the deploy's addresses".to_string()
        } else {
            found
                .iter()
                .map(|f| f.addr.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    Ok(())
}

impl Deployer<'_> {
    /// Step 1–4 of the module doc, before the socket starts: a no-op unless deploy.yml names
    /// a `takeover:` unit that is active, no release serves yet and the socket is not active.
    pub(crate) async fn begin_takeover(&self) -> Result<()> {
        let Some(unit) = &self.cfg.takeover else {
            return Ok(());
        };
        if self.store.load_state()?.serving.is_some()
            || self.systemd.status(&self.cfg.socket_unit()).await?.is_active()
        {
            return Ok(());
        }
        let st = self.systemd.status(unit).await?;
        if st.load_state == "not-found" || !st.is_active() {
            tracing::info!(
                "takeover: {unit} does not run here ({}); nothing to take over",
                st.active_state
            );
            return Ok(());
        }
        if self.systemd.dry_run() {
            println!("dry-run: would take the listening sockets of {unit} over");
            return Ok(());
        }
        let pids = self.systemd.unit_processes(unit).await?;
        let found = find_listeners(&pids, &self.cfg.listen)?;
        if found.is_empty() {
            tracing::warn!(
                "takeover: {unit} runs but holds no listener on {}; it is stopped once the first release serves",
                self.cfg.listen.join(", ")
            );
        }
        let held = hold(unit, &found)?;
        tracing::info!(
            "takeover: joined {unit}'s listening sockets ({}); it takes every new connection until the first release \
             is ready",
            found
                .iter()
                .map(|f| f.addr.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        *self.takeover.lock().unwrap() = Some(held);
        Ok(())
    }

    /// Step 5: the socket's first server is ready, new connections go to the socket.
    pub(crate) fn steer_takeover_to_socket(&self) -> Result<()> {
        if let Some(held) = self.takeover.lock().unwrap().as_ref()
            && !held.copies.is_empty()
        {
            held.steer(true)?;
            tracing::info!("takeover: new connections go to {} now", self.cfg.socket_unit());
        }
        Ok(())
    }

    /// A failed first deployment, before the undo: new connections go back to the old server.
    pub(crate) fn steer_takeover_back(&self) {
        if let Some(held) = self.takeover.lock().unwrap().as_ref()
            && let Err(e) = held.steer(false)
        {
            tracing::warn!("{e:#}");
        }
    }

    /// A failed first deployment, after the undo: the fronts and the socket stop, and what
    /// queued on the socket moves back to the old server's listener.
    pub(crate) async fn abort_takeover(&self) {
        let Some(mut held) = self.takeover.lock().unwrap().take() else {
            return;
        };
        if let Err(e) = held.steer(false) {
            tracing::warn!("{e:#}");
        }
        for id in self.live_fronts().await.unwrap_or_default() {
            self.stop_front(&id).await;
        }
        // The socket before its holder: a socket with connections queued starts its Service=
        // again as soon as that stops, and a socket whose service runs cannot start later.
        for unit in [self.cfg.socket_unit(), self.cfg.holder_unit()] {
            if let Err(e) = self.systemd.stop(&unit, Duration::from_secs(30)).await {
                tracing::warn!(
                    "takeover: could not stop {unit}: {e:#}; {} still serves",
                    held.unit
                );
            }
        }
        held.copies.clear();
        held.restore_migrate();
        tracing::info!("takeover undone: {} serves the port as before", held.unit);
    }

    /// A takeover that a killed hook left, found by the next step's recovery (after the
    /// interrupted switch is undone). Before the commit, connections were already steered to
    /// the socket, where no release serves now: the socket stops, and what queued on it moves
    /// back to the old unit's listener, the only one left in the group (the program's index is
    /// then out of range: the kernel picks the old socket). After the commit, the old unit was
    /// not stopped yet: that is finished.
    pub(crate) async fn recover_takeover(&self, hook: &str, deployment: &str) {
        let Some(unit) = &self.cfg.takeover else {
            return;
        };
        let Ok(state) = self.store.load_state() else {
            return;
        };
        if state.taken_over.is_some() || !self.systemd.status(unit).await.is_ok_and(|st| st.is_active()) {
            return;
        }
        if state.serving.is_some() {
            tracing::warn!(
                "takeover: the first release serves but {unit} was not stopped (a hook was killed); now"
            );
            *self.takeover.lock().unwrap() = Some(Held {
                unit: unit.clone(),
                copies: Vec::new(),
                migrate_before: None,
            });
            self.finish_takeover(hook, deployment).await;
        } else if self
            .systemd
            .status(&self.cfg.socket_unit())
            .await
            .is_ok_and(|st| st.is_active())
        {
            tracing::warn!(
                "takeover: a first deployment was interrupted before its release served; giving the port back to {unit}"
            );
            *self.takeover.lock().unwrap() = Some(Held {
                unit: unit.clone(),
                copies: Vec::new(),
                migrate_before: None,
            });
            self.abort_takeover().await;
        }
    }

    /// Step 6, after the commit: stops and disables the old unit. The switch is committed,
    /// so a failure here is reported, never undone.
    pub(crate) async fn finish_takeover(&self, hook: &str, deployment: &str) {
        let Some(mut held) = self.takeover.lock().unwrap().take() else {
            return;
        };
        let unit = held.unit.clone();
        // Our copies would keep the old listener open after the old server exits.
        held.copies.clear();
        tracing::info!("takeover: stopping {unit}; it drains what it accepted while the new release serves");
        let stopped = {
            let _drain = crate::timing::waiting(crate::timing::Wait::App);
            self.systemd.stop(&unit, Duration::from_secs(600)).await
        };
        held.restore_migrate();
        // A server that exits with 143 on SIGTERM (a JVM) leaves its unit "failed": inactive it is.
        let _ = self.systemd.reset_failed(&unit).await;
        let disabled = self.systemd.disable(&[&unit]).await;
        let message = match (&stopped, &disabled) {
            (Ok(()), Ok(())) => {
                format!("took the port over from {unit}: stopped and disabled, its files left")
            }
            _ => format!(
                "took the port over from {unit}, but {}: run `systemctl disable --now {unit}`",
                [stopped.err(), disabled.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| format!("{e:#}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        tracing::info!("{message}");
        if let Err(e) = self
            .store
            .update(hook, deployment, &message, |s| s.taken_over = Some(unit.clone()))
        {
            tracing::warn!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole kernel side on loopback: a plain listener (no SO_REUSEPORT, as a server that
    /// knows nothing of us) is copied, joined by a new reuseport socket, steered, and closed
    /// with its queue migrated.
    #[test]
    fn a_plain_listener_is_joined_steered_and_its_queue_survives_its_close() {
        use std::net::{TcpListener, TcpStream};
        if nix::unistd::geteuid().as_raw() != 0 {
            eprintln!("skipped: needs root (pidfd_getfd, fchown, sysctl)");
            return;
        }
        let old = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = old.local_addr().unwrap();
        let pid = std::process::id();
        let found = find_listeners(&[pid], &[addr.to_string()]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].addr, addr);
        let held = hold("old.service", &found).unwrap();

        let new = join(addr).unwrap();
        let new = TcpListener::from(new);
        new.set_nonblocking(true).unwrap();
        old.set_nonblocking(true).unwrap();
        let accepted = |l: &TcpListener| std::iter::from_fn(|| l.accept().ok()).count();

        let queued: Vec<_> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            accepted(&new),
            0,
            "steered to the old listener, the new one gets nothing"
        );
        held.steer(true).unwrap();
        let more: Vec<_> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            accepted(&new),
            10,
            "steered to the socket, it gets every new connection"
        );
        // The old listener closes with 10 connections queued: they move, none is reset.
        let mut held = held;
        held.copies.clear();
        drop(old);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(accepted(&new), 10, "the old queue migrated to the socket");
        held.restore_migrate();
        drop((queued, more));
    }

    #[test]
    fn a_listener_on_another_address_of_the_port_is_refused_with_the_listen_to_write() {
        let old = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = old.local_addr().unwrap().port();
        let e = find_listeners(&[std::process::id()], &[format!("127.0.0.2:{port}")]).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains(&format!("listens on 127.0.0.1:{port}")), "{text}");
        assert!(
            text.contains(&format!("listen: [\"127.0.0.1:{port}\"]")),
            "{text}"
        );
        assert!(
            find_listeners(&[std::process::id()], &["127.0.0.1:1".into()])
                .unwrap()
                .is_empty()
        );
    }
}
