//! The switch of `strategy: proxy`: any app, unchanged, behind a front of ours.
//!
//! ```text
//!   client ──► kernel queue of <service>.socket (never stopped by a switch)
//!                 │
//!                 ▼
//!     <service>-front@<id>.service        holds the client connections; reads routes.json
//!          │ 127.0.0.1:$PORT(old)    │ 127.0.0.1:$PORT(new)
//!          ▼                         ▼
//!     <service>@old.service      <service>@new.service     listen on loopback only
//! ```
//!
//! The app only listens on `127.0.0.1:$PORT` and answers its health path. The steps, inside
//! step 3 of [`crate::switch`] (the intent record, units, commit and retire are the same):
//!
//! 1. **Port.** The release gets a free loopback port from `front.ports` (kept across
//!    restarts and rollbacks in its `port.env`), unless another kept release holds it.
//! 2. **Start and probe directly.** `<service>@<new>.service` starts (`Type=exec`) and is
//!    probed on `127.0.0.1:$PORT` until it answers its health path with 200, within
//!    `deadlines.start`, with a crash watch. It takes no traffic meanwhile: a release that
//!    never gets healthy is stopped and costs nothing. It must listen on loopback only.
//! 3. **Route.** `routes.json` (`{release, upstream}`) is written durably: a front that
//!    (re)starts reads it. Then each running front is told over its control channel (a unix
//!    socket under `/run/<service>-front/<id>/`, mode 0600 in a 0700 directory: root only)
//!    to send new requests to the new release; the front drains the old release itself
//!    (requests in flight finish, its pooled connections close, WebSockets to it are closed
//!    with 1012 to the client) and answers only then. The old release has nothing left when
//!    the hooks stop it, so an app that dies at once on SIGTERM loses nothing.
//! 4. **A new front**, when the release ships another front binary or `front:` settings
//!    (the id is a hash of both): `<service>-front@<new id>` starts on the shared socket beside
//!    the old front (it reads the new route) and is confirmed through the public port by its
//!    `X-Handoff-Front` answer. Both serve until the commit, which records the new front with
//!    the new release; the retire step then stops the old front: it drains with the native
//!    contract (lame duck, first-request grace, in-flight finished, WebSockets closed 1012).
//! 5. **Confirm** through the public port: probes carry `X-Handoff-Probe`, and the front
//!    names the release it routed them to in `X-Handoff-Release`.
//!
//! An undo routes back to the release that serves (file, then fronts) and stops a front
//! this switch started, so the old release is served through its own front and settings.
//! Every recovery leaves only the recorded front and sets the route to the serving release;
//! whether that release runs behind a front is read from its release folder (`port.env`),
//! never from its deploy.yml. A front that starts reads `routes.json`, unless `state.json`
//! records another release as serving: then that release's own `routes/<release>.json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Deployer, Switch, kill_point};
use crate::bundle::project::{FRONT_BINARY, FRONT_NAME, front_binary};
use crate::config::DeployConfig;
use crate::durable::{write_durably, write_durably_mode};
use crate::fault::Fault;
use crate::health::Probe;
use crate::timing::{self, Wait};

/// Where the front sends requests: `<root>/routes.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub release: String,
    pub upstream: String,
}

/// A front build: its binary and settings, and their id.
#[derive(Debug, Clone)]
pub struct FrontBuild {
    pub id: String,
    binary: PathBuf,
    env: String,
}

/// What a front answered to a `route` request: the drain of the release it left.
#[derive(Debug, Default, Deserialize)]
pub struct Drained {
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub requests_left: u64,
    #[serde(default)]
    pub websockets_closed: u64,
}

/// The front's settings from `deploy.yml` (`HANDOFF_FRONT_*`, its environment file).
pub fn front_env(cfg: &DeployConfig) -> Result<String> {
    let f = &cfg.front;
    // The front's own drain ends before systemd's TimeoutStopSec= (drain.budget) would kill it.
    let drain = cfg
        .drain
        .budget
        .saturating_sub(Duration::from_secs(2))
        .max(Duration::from_secs(1));
    let mut env = format!(
        "# written by the deploy hooks from deploy.yml front:\n\
         HANDOFF_FRONT_HEADER_READ_TIMEOUT_MS={}\n\
         HANDOFF_FRONT_IDLE_TIMEOUT_MS={}\n\
         HANDOFF_FRONT_CONNECT_TIMEOUT_MS={}\n\
         HANDOFF_FRONT_MAX_CONNECTIONS={}\n\
         HANDOFF_FRONT_MAX_HEADER_BYTES={}\n\
         HANDOFF_FRONT_DRAIN_TIMEOUT_MS={}\n\
         HANDOFF_FRONT_IDLE_HOLD_MS={}\n",
        f.header_read_timeout.as_millis(),
        f.idle_timeout.as_millis(),
        f.connect_timeout.as_millis(),
        f.max_connections,
        f.max_header_bytes,
        drain.as_millis(),
        cfg.drain.idle_hold.as_millis()
    );
    // Only when set (or, for the access log, when off): the settings of a front without them
    // keep their id.
    let trusted = f.trusted_proxies_env()?;
    if !trusted.is_empty() {
        env.push_str(&format!("HANDOFF_FRONT_TRUSTED_PROXIES={trusted}\n"));
    }
    if let Some(addr) = f.metrics_addr(&cfg.listen)? {
        env.push_str(&format!("HANDOFF_FRONT_METRICS={addr}\n"));
    }
    if !f.access_log {
        env.push_str("HANDOFF_FRONT_ACCESS_LOG=false\n");
    }
    if f.upstream == crate::config::Upstream::H2c {
        env.push_str("HANDOFF_FRONT_UPSTREAM=h2c\n");
    }
    Ok(env)
}

/// BeforeInstall's check of what [`front_build`] will need: the front executable is there and
/// the `front:` settings render, without reading and hashing the executable (7 MB) in every
/// preflight.
pub fn check_front(cfg: &DeployConfig, release_dir: &Path) -> Result<()> {
    let binary = front_binary(release_dir);
    std::fs::File::open(&binary).map_err(|e| unreadable_front(&binary, e))?;
    front_env(cfg)?;
    Ok(())
}

fn unreadable_front(binary: &Path, e: std::io::Error) -> anyhow::Error {
    Fault::input(format!(
        "strategy: proxy runs the front from the bundle's hooks/{} (or {FRONT_BINARY}), but {} cannot be \
         read ({e}); build the bundle with `make bundle` or `handoff bundle`, which ship it",
        crate::bundle::project::HOOK_BINARY,
        binary.display()
    ))
    .into()
}

/// The front build a release ships, with its id: the first 12 hex digits of the SHA-256 of
/// its binary and settings.
pub fn front_build(cfg: &DeployConfig, release_dir: &Path) -> Result<FrontBuild> {
    let binary = front_binary(release_dir);
    let bytes = std::fs::read(&binary).map_err(|e| unreadable_front(&binary, e))?;
    let env = front_env(cfg)?;
    let mut hash = Sha256::new();
    hash.update(&bytes);
    hash.update(env.as_bytes());
    let id: String = hash
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FrontBuild { id, binary, env })
}

fn fronts_dir(cfg: &DeployConfig) -> PathBuf {
    cfg.root().join("fronts")
}

fn routes_path(cfg: &DeployConfig) -> PathBuf {
    cfg.root().join("routes.json")
}

/// The control socket of a front instance (`%t/<service>-front/%i/control.sock`).
pub fn control_path(cfg: &DeployConfig, id: &str) -> PathBuf {
    Path::new("/run")
        .join(format!("{}-front", cfg.service))
        .join(id)
        .join("control.sock")
}

/// Copies a front build into `<root>/fronts/<id>/` (durably), unless it is there.
fn install_front(cfg: &DeployConfig, build: &FrontBuild) -> Result<()> {
    let dir = fronts_dir(cfg).join(&build.id);
    let (bin, env) = (dir.join(FRONT_NAME), dir.join("front.env"));
    if bin.is_file() && std::fs::read_to_string(&env).is_ok_and(|t| t == build.env) {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = std::fs::read(&build.binary)?;
    write_durably(&bin, &bytes)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    write_durably(&env, build.env.as_bytes())?;
    Ok(())
}

/// The route the fronts read, if any.
pub fn read_route(cfg: &DeployConfig) -> Option<Route> {
    let text = std::fs::read_to_string(routes_path(cfg)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_route(cfg: &DeployConfig, route: &Route) -> Result<()> {
    let path = routes_path(cfg);
    let text = serde_json::to_string(route)? + "\n";
    // Readable by the front's dynamic user, written by root only: the mode is set on the
    // temporary file, so under any umask a front that (re)starts can read what was renamed.
    write_durably_mode(&path, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Each release's own route, `<root>/routes/<release>.json`: a front that starts routes to the
/// release the state records as serving from here when `routes.json` names another (a switch
/// cut before its commit).
fn release_route_path(cfg: &DeployConfig, release: &str) -> PathBuf {
    cfg.root().join("routes").join(format!("{release}.json"))
}

fn write_release_route(cfg: &DeployConfig, route: &Route) -> Result<()> {
    let path = release_route_path(cfg, &route.release);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let text = serde_json::to_string(route)? + "\n";
    write_durably_mode(&path, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Removes the route files of releases that are no longer kept.
pub fn prune_release_routes(cfg: &DeployConfig, kept: &[String]) {
    let Ok(entries) = std::fs::read_dir(cfg.root().join("routes")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(release) = name.strip_suffix(".json")
            && !kept.iter().any(|k| k == release)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn port_env(dir: &Path) -> PathBuf {
    dir.join("port.env")
}

/// The private port recorded for a release.
pub fn port_of(cfg: &DeployConfig, release_dir: &Path) -> Option<u16> {
    let _ = cfg;
    let text = std::fs::read_to_string(port_env(release_dir)).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("PORT="))
        .and_then(|p| p.trim().parse().ok())
}

fn can_bind(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Addresses listening on `port` in this network namespace (`/proc/net/tcp{,6}`).
pub fn listeners_on(port: u16) -> Vec<SocketAddr> {
    let mut found = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 || cols[3] != "0A" {
                continue;
            }
            if let Some(addr) = parse_proc_addr(cols[1], v6)
                && addr.port() == port
            {
                found.push(addr);
            }
        }
    }
    found
}

/// `0100007F:1F90` (IPv4, little-endian words) or the 32-digit IPv6 form.
pub(crate) fn parse_proc_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !v6 {
        let n = u32::from_str_radix(ip, 16).ok()?;
        return Some(SocketAddr::from((n.to_le_bytes(), port)));
    }
    if ip.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for w in 0..4 {
        let word = u32::from_str_radix(&ip[w * 8..w * 8 + 8], 16).ok()?;
        bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    Some(SocketAddr::from((std::net::Ipv6Addr::from(bytes), port)))
}

fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// One request over a front's control channel; the answer must say `"ok": true`.
pub async fn control(
    cfg: &DeployConfig,
    id: &str,
    request: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let path = control_path(cfg, id);
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(&path)
            .await
            .with_context(|| format!("cannot connect to the control channel {}", path.display()))?;
        stream.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        let answer: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("the front answered {line:?}, not JSON"))?;
        if answer["ok"] != serde_json::Value::Bool(true) {
            bail!("the front refused: {}", answer["error"]);
        }
        Ok(answer)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("the front did not answer within {:.0} s", timeout.as_secs_f64()))?
        .with_context(|| format!("front {id}"))
}

impl Deployer<'_> {
    /// Ids of the front instances that are not inactive.
    pub async fn live_fronts(&self) -> Result<Vec<String>> {
        self.live_instances(&format!("{}-front@", self.cfg.service)).await
    }

    /// Steps 1–5 of the module doc for `release`: the proxy counterpart of starting beside.
    pub(crate) async fn start_behind_front(&self, release: &str) -> Result<Switch> {
        let unit = self.cfg.instance_unit(release);
        let others: Vec<String> = self
            .live_releases()
            .await?
            .into_iter()
            .filter(|r| r != release)
            .collect();
        let mut report = Switch {
            stopped: others,
            ..Default::default()
        };
        let dry = self.systemd.dry_run();
        let port = self.assign_port(release).await?;
        if dry {
            println!("dry-run: would start {unit} on 127.0.0.1:{port} and route the front to it");
            return Ok(report);
        }
        write_release_route(
            self.cfg,
            &Route {
                release: release.to_string(),
                upstream: format!("127.0.0.1:{port}"),
            },
        )?;
        self.systemd.reset_failed(&unit).await?;
        self.mark_starting(crate::units::GuardKey::Serving, release)?;
        tracing::info!("starting {unit} on 127.0.0.1:{port} (it takes no traffic until it answers healthy)");
        let started = self.start_and_probe_directly(release, port).await;
        if let Err(e) = started {
            self.abandon(release).await;
            return Err(e);
        }
        // A crash while the fronts move to it ends the switch too (the undo routes back).
        let routed = tokio::select! {
            r = self.route_to(release, port) => r,
            r = self.crash_watch(&unit).map(|r| r.map(|()| String::new())) => r,
        };
        report.front = Some(routed?);
        Ok(report)
    }

    /// A free loopback port for `release`: the one it had, when it is still free (or its own
    /// instance holds it) and no other kept release records it; else the first free one.
    async fn assign_port(&self, release: &str) -> Result<u16> {
        let range = self.cfg.front.port_range()?;
        let dir = self.store.dir(release);
        let kept = self.store.list().unwrap_or_default();
        let taken: Vec<u16> = kept
            .iter()
            .filter(|r| r.as_str() != release)
            .filter_map(|r| port_of(self.cfg, &self.store.dir(r)))
            .collect();
        let running = self
            .systemd
            .status(&self.cfg.instance_unit(release))
            .await?
            .is_running_or_starting();
        if let Some(p) = port_of(self.cfg, &dir)
            && range.contains(&p)
            && !taken.contains(&p)
            && (running || can_bind(p))
        {
            return Ok(p);
        }
        let live = self.live_releases().await?;
        let live_ports: Vec<u16> = live
            .iter()
            .filter_map(|r| port_of(self.cfg, &self.store.dir(r)))
            .collect();
        // Ports of kept releases that do not run are taken last, so a rollback keeps its port.
        let port = range
            .clone()
            .find(|p| !taken.contains(p) && can_bind(*p))
            .or_else(|| range.clone().find(|p| !live_ports.contains(p) && can_bind(*p)))
            .ok_or_else(|| {
                Fault::environment(format!(
                    "no free loopback port in front.ports {}: widen the range in deploy.yml (`ss -ltn` shows what \
                     listens there)",
                    self.cfg.front.ports
                ))
            })?;
        if !self.systemd.dry_run() {
            write_durably(
                &port_env(&dir),
                format!(
                    "# the release's private port, chosen by the deploy hooks (front.ports)\nPORT={port}\n"
                )
                .as_bytes(),
            )?;
        }
        Ok(port)
    }

    /// Starts the release and probes it on its own port until healthy; a crash, an automatic
    /// restart or a listener on a public address ends it.
    async fn start_and_probe_directly(&self, release: &str, port: u16) -> Result<()> {
        let _waiting = timing::waiting(Wait::App);
        let unit = self.cfg.instance_unit(release);
        self.systemd.start(&unit, self.start_deadline()).await?;
        let probe = Probe::direct(self.cfg, port)?;
        let confirm = async {
            probe.wait_for(release, self.cfg.deadlines.start).await.map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}. The app must listen on 127.0.0.1:$PORT (the hooks set PORT={port} for this release) and \
                     answer GET {} with 200",
                    self.cfg.health.path
                )
            })
        };
        tokio::select! {
            r = confirm => r?,
            r = self.crash_watch(&unit) => r?,
        }
        let public: Vec<String> = listeners_on(port)
            .iter()
            .filter(|a| !is_loopback(a))
            .map(|a| a.to_string())
            .collect();
        if !public.is_empty() {
            bail!(Fault::input(format!(
                "{release} listens on {} (not loopback only): clients could reach it past the front. Bind \
                 127.0.0.1:$PORT (e.g. gunicorn --bind 127.0.0.1:${{PORT}}, node server.listen(process.env.PORT, \
                 '127.0.0.1'))",
                public.join(", ")
            )));
        }
        tracing::info!("{release} answers healthy on 127.0.0.1:{port}");
        Ok(())
    }

    /// Step 3 (and 4): routes the fronts to `release` and waits for their drain; starts a new
    /// front first when the release ships another build. Returns the id of the front that
    /// serves `release`: the commit records it, and the retire step stops the others.
    async fn route_to(&self, release: &str, port: u16) -> Result<String> {
        let route = Route {
            release: release.to_string(),
            upstream: format!("127.0.0.1:{port}"),
        };
        write_route(self.cfg, &route)?;
        kill_point("route-written").await;
        let build = front_build(self.cfg, &self.store.dir(release))?;
        let live = self.live_fronts().await?;
        if !live.contains(&build.id) {
            self.replace_front(&build, &live).await?;
            kill_point("front-started").await;
        }
        for id in self.live_fronts().await? {
            // The front answers once it has drained the old release's requests.
            let _drain = timing::waiting(Wait::App);
            self.tell_route(&id, &route).await?;
        }
        // The release takes every request now: its first unhealthy answer through the front
        // ends the switch at once (the undo routes back), rather than after 10 s of them.
        Probe::new(self.cfg)?
            .confirm_ready(release, Duration::from_secs(10))
            .await
            .context("routed, but the public port")?;
        tracing::info!("the front sends requests to {release} ({})", route.upstream);
        Ok(build.id)
    }

    async fn tell_route(&self, id: &str, route: &Route) -> Result<()> {
        let budget = self.cfg.drain.budget;
        let request = serde_json::json!({
            "op": "route",
            "release": route.release,
            "upstream": route.upstream,
            "drain_ms": budget.as_millis() as u64,
        });
        let answer = control(self.cfg, id, &request, budget + Duration::from_secs(10))
            .await
            .map_err(|e| {
                Fault::deployment(format!("{e:#}; see `journalctl -u {}`", self.cfg.front_unit(id)))
            })?;
        let drained: Vec<Drained> = serde_json::from_value(answer["drained"].clone()).unwrap_or_default();
        for d in drained {
            if d.requests_left > 0 {
                tracing::warn!(
                    "front {id}: {} requests to {} were still in flight after drain.budget ({:.0} s); they are cut \
                     when {} stops",
                    d.requests_left,
                    d.release,
                    budget.as_secs_f64(),
                    d.release
                );
            } else {
                tracing::info!(
                    "front {id} drained {}: nothing in flight, {} WebSockets closed with 1012",
                    d.release,
                    d.websockets_closed
                );
            }
        }
        Ok(())
    }

    /// Starts the front `build` beside the live ones on the shared socket and confirms it
    /// through the public port. The old fronts keep serving beside it until the commit: an
    /// undo goes back to the recorded front, a commit records this one and the retire step
    /// stops the others (they drain natively).
    async fn replace_front(&self, build: &FrontBuild, old: &[String]) -> Result<()> {
        install_front(self.cfg, build)?;
        let unit = self.cfg.front_unit(&build.id);
        self.finish_idle_hold(&unit).await?;
        self.systemd.reset_failed(&unit).await?;
        self.mark_starting(crate::units::GuardKey::Front, &build.id)?;
        tracing::info!(
            "starting front {}{}",
            build.id,
            if old.is_empty() {
                String::new()
            } else {
                format!(" beside {} (the front changed)", old.join(", "))
            }
        );
        let started = async {
            self.systemd.start(&unit, Duration::from_secs(35)).await?;
            self.steer_takeover_to_socket()?;
            let probe = Probe::front(self.cfg)?;
            tokio::select! {
                r = probe.confirm_ready(&build.id, Duration::from_secs(30)) => r.context("the new front started but")?,
                r = self.crash_watch(&unit) => r?,
            }
            self.systemd.enable(&[&unit]).await?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = started {
            self.stop_front(&build.id).await;
            return Err(e);
        }
        Ok(())
    }

    /// Removes front builds from `<root>/fronts` that do not run and are not the recorded one
    /// (a rollback installs its release's front again from the release folder).
    pub async fn prune_fronts(&self) -> Result<Vec<String>> {
        let dir = fronts_dir(self.cfg);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let live = self.live_fronts().await?;
        let recorded = self.store.load_state()?.front;
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().to_string();
            if live.contains(&id) || recorded.as_deref() == Some(id.as_str()) {
                continue;
            }
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            removed.push(id);
        }
        Ok(removed)
    }

    /// Stops a front (it drains: lame duck, in-flight finished, WebSockets closed 1012) and
    /// disables it.
    pub(crate) async fn stop_front(&self, id: &str) -> bool {
        crate::units::unmark_starting(self.cfg, crate::units::GuardKey::Front, id);
        self.stop_and_disable(&self.cfg.front_unit(id), ": it drains")
            .await
    }

    /// Whether `release` runs behind a front: it was given a private port (`port.env` in its
    /// release folder), which only `strategy: proxy` does. Read from the release folder, not
    /// from its deploy.yml, which a hook of another version may fail to parse.
    pub fn runs_behind_front(&self, release: &str) -> bool {
        port_of(self.cfg, &self.store.dir(release)).is_some()
    }

    /// The route to `release`, from its recorded port.
    fn route_of(&self, release: &str) -> Option<Route> {
        let port = port_of(self.cfg, &self.store.dir(release))?;
        Some(Route {
            release: release.to_string(),
            upstream: format!("127.0.0.1:{port}"),
        })
    }

    /// Part of an undo: routes back to `serving` (file, then every live front) unless the
    /// route already names it, and stops fronts other than the recorded one (all of them
    /// when `serving` runs natively). Says whether every step succeeded.
    pub(crate) async fn route_back(&self, release: &str, serving: Option<&str>) -> bool {
        let Some(serving) = serving else {
            // Nothing served before: no front may stay for a release that did not make it.
            return self.settle_fronts(false).await;
        };
        let serving_proxied = self.runs_behind_front(serving);
        let mut ok = true;
        if serving_proxied && read_route(self.cfg).is_none_or(|r| r.release != serving) {
            tracing::info!("routing the front back to {serving} (from {release})");
            ok &= self.reroute(serving).await;
        }
        self.settle_fronts(serving_proxied).await && ok
    }

    /// Every recovery: the route file and every live front send requests to `serving`.
    pub(crate) async fn reconcile_route(&self, serving: &str, hook: &str, deployment: &str) {
        if read_route(self.cfg).is_some_and(|r| r.release == serving) {
            return;
        }
        tracing::warn!("the route does not name {serving}, which serves; routing the front to it");
        if self.reroute(serving).await {
            let _ = self
                .store
                .record(hook, deployment, &format!("the route set back to {serving}"));
        }
    }

    /// Writes the route to `serving` and tells every live front; says whether all of it worked.
    async fn reroute(&self, serving: &str) -> bool {
        let Some(route) = self.route_of(serving) else {
            tracing::error!("{serving} has no recorded port (port.env); cannot route the front to it");
            return false;
        };
        if self.systemd.dry_run() {
            println!("dry-run: would route the front to {serving} ({})", route.upstream);
            return true;
        }
        let mut ok = true;
        if let Err(e) = write_route(self.cfg, &route) {
            tracing::error!("{e:#}");
            ok = false;
        }
        for id in self.live_fronts().await.unwrap_or_default() {
            if let Err(e) = self.tell_route(&id, &route).await {
                tracing::warn!("{e:#}");
                ok = false;
            }
        }
        ok
    }

    /// Leaves at most the recorded front running (none when the service runs natively).
    /// Says whether every other front stopped.
    pub(crate) async fn settle_fronts(&self, proxied: bool) -> bool {
        let recorded = self.store.load_state().ok().and_then(|s| s.front);
        let live = self.live_fronts().await.unwrap_or_default();
        let keep = recorded.filter(|r| proxied && live.contains(r));
        // Without a record, a lone live front keeps serving.
        let keep = keep.or_else(|| (proxied && live.len() == 1).then(|| live[0].clone()));
        let mut ok = true;
        for id in live.iter().filter(|id| Some(*id) != keep.as_ref()) {
            crate::units::unmark_starting(self.cfg, crate::units::GuardKey::Front, id);
            ok &= self.retire_unit(&self.cfg.front_unit(id), ": it drains").await;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90", false),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000:0050", false),
            Some("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050", true),
            Some("[::1]:80".parse().unwrap())
        );
        assert!(is_loopback(&"127.0.0.2:1".parse().unwrap()));
        assert!(is_loopback(&"[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback(&"0.0.0.0:1".parse().unwrap()));
        assert!(!is_loopback(&"[::]:1".parse().unwrap()));
    }

    #[test]
    fn front_id_follows_binary_and_settings() {
        let dir = std::env::temp_dir().join(format!("front-id-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("front")).unwrap();
        std::fs::write(dir.join(FRONT_BINARY), b"binary one").unwrap();
        let yaml = "service: s\nlisten: [\"127.0.0.1:1\"]\nstrategy: proxy\napp:\n  command: x\n";
        let cfg = DeployConfig::parse(yaml).unwrap();
        let a = front_build(&cfg, &dir).unwrap();
        assert_eq!(a.id.len(), 12);
        assert_eq!(a.id, front_build(&cfg, &dir).unwrap().id);
        let slower = DeployConfig::parse(&format!("{yaml}front:\n  idle_timeout: 5s\n")).unwrap();
        assert_ne!(a.id, front_build(&slower, &dir).unwrap().id);
        std::fs::write(dir.join(FRONT_BINARY), b"binary two").unwrap();
        assert_ne!(a.id, front_build(&cfg, &dir).unwrap().id);
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = front_build(&cfg, Path::new("/nonexistent")).unwrap_err();
        assert!(format!("{missing:#}").contains("make bundle"), "{missing:#}");
        let missing = check_front(&cfg, Path::new("/nonexistent")).unwrap_err();
        assert!(format!("{missing:#}").contains("make bundle"), "{missing:#}");
    }
}
