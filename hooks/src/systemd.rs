//! A typed client for systemd's manager, over the system bus (never by running `systemctl`).
//!
//! Every state-changing call waits for its **job result**: the client subscribes to
//! `JobRemoved` *before* it queues the job, so a job that finishes at once is never missed,
//! then waits for the signal that names the job's object path. The result string ("done",
//! "failed", "timeout", "canceled", "dependency", "skipped") becomes an error that names the
//! unit, the result and where to look next.
//!
//! Starting a service that crashes while its start job is pending is detected early: with
//! `Restart=` the job would stay queued through every automatic restart, so the wait also
//! watches the unit and gives up as soon as it has failed or is scheduled to restart.
//!
//! With `dry_run`, reads still go to systemd, but every call that would change something is
//! printed instead of made.
//!
//! A one-off command (deploy.yml `app.before_switch`) runs as a **transient** service
//! ([`Systemd::run_transient`], `StartTransientUnit`): its settings are [`Directive`]s, written
//! as the unit-file lines they stand for and sent as the D-Bus properties systemd takes for
//! them (this module is the only place that knows those names and types).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use zbus::{Connection, proxy};
use zbus::{OwnedObjectPath, OwnedVariant as OwnedValue, Variant};

use crate::timing::{self, Wait};

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[allow(clippy::type_complexity)]
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Variant<'_>)],
        aux: &[(&str, &[(&str, Variant<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn reload(&self) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    fn get_unit_processes(&self, name: &str) -> zbus::Result<Vec<(String, u32, String)>>;
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;
    /// The manager's version string, e.g. "252.38-1~deb12u1" or "219".
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

/// What systemd reports about one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitStatus {
    pub name: String,
    /// "loaded", "not-found", "bad-setting", "error", "masked".
    pub load_state: String,
    /// "active", "activating", "deactivating", "inactive", "failed", "reloading".
    pub active_state: String,
    pub sub_state: String,
    /// Whether the unit file changed on disk since systemd loaded it.
    pub need_daemon_reload: bool,
    /// Services only: 0 when no main process runs.
    pub main_pid: u32,
    /// Services only: automatic restarts since the unit was last started by hand.
    pub n_restarts: u32,
    /// Services and sockets: "success", "exit-code", "signal", "timeout", "start-limit-hit", …
    pub result: String,
    /// Services only: the exit status of the main process's last run.
    pub exec_main_status: i32,
    /// Services only: the STATUS= the service last sent.
    pub status_text: String,
    /// The unit file systemd loaded ("" when none).
    pub fragment_path: String,
}

impl UnitStatus {
    pub fn is_active(&self) -> bool {
        self.active_state == "active"
    }
    pub fn is_running_or_starting(&self) -> bool {
        matches!(self.active_state.as_str(), "active" | "activating" | "reloading")
    }
    /// Failed, or scheduled for an automatic restart after a crash.
    pub fn has_crashed(&self) -> bool {
        self.active_state == "failed" || self.sub_state == "auto-restart"
    }
    /// Why a start failed, in the words an operator can act on.
    pub fn start_failure(&self) -> String {
        let unit = &self.name;
        if self.result == "timeout" {
            format!(
                "{unit} did not report ready within its start timeout (TimeoutStartSec=, from deploy.yml \
                 deadlines.start): a Type=notify service must send READY=1 once it serves the socket \
                 (sd_notify; see sample-app/README.md), or it needs more time: raise deadlines.start. {}",
                self.describe()
            )
        } else if self.result == "signal" || self.result == "core-dump" {
            format!(
                "{unit} was killed by signal {} while starting: {}{}",
                signal_name(self.exec_main_status),
                self.describe(),
                signal_hint(self.exec_main_status)
            )
        } else {
            format!("{unit} crashed while starting: {}", self.describe())
        }
    }
    /// One line for logs and error messages.
    pub fn describe(&self) -> String {
        let mut s = format!("{} is {} ({})", self.name, self.active_state, self.sub_state);
        if self.main_pid != 0 {
            s.push_str(&format!(", main pid {}", self.main_pid));
        }
        if !self.result.is_empty() && self.result != "success" {
            s.push_str(&format!(", result {}", self.result));
            if self.exec_main_status != 0 {
                if self.result == "signal" || self.result == "core-dump" {
                    s.push_str(&format!(" ({})", signal_name(self.exec_main_status)));
                } else {
                    s.push_str(&format!(" (exit status {})", self.exec_main_status));
                }
            }
        }
        if self.n_restarts > 0 {
            s.push_str(&format!(", restarted {} times", self.n_restarts));
        }
        s
    }
}

/// The systemd manager on the system bus.
pub struct Systemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
    dry_run: bool,
}

/// The major version in systemd's version string: "252.38-1~deb12u1" → 252, "219" → 219.
pub fn major_version(text: &str) -> Option<u32> {
    let digits: String = text
        .trim()
        .trim_start_matches('v')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The next step an operator can take for a unit that misbehaves.
pub fn journal_hint(unit: &str) -> String {
    format!("see `journalctl -u {unit} -n 50` and `systemctl status {unit}`")
}

impl Systemd {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` overrides its address).
    pub async fn connect(dry_run: bool) -> Result<Self> {
        Self::connect_to(None, dry_run).await
    }

    /// Connects to the system bus at `address` (a D-Bus address), or the default one.
    pub async fn connect_to(address: Option<&str>, dry_run: bool) -> Result<Self> {
        let _waiting = timing::waiting(Wait::Systemd);
        let builder = match address {
            Some(a) => zbus::conn::Builder::address(a),
            None => zbus::conn::Builder::system(),
        };
        let conn = builder.build().await.map_err(|e| {
            anyhow!(
                "cannot reach systemd over the system bus: {e}; is this a systemd host with dbus running \
                 (`systemctl status dbus.socket`)? DBUS_SYSTEM_BUS_ADDRESS overrides the bus address"
            )
        })?;
        let manager = ManagerProxy::new(&conn)
            .await
            .context("cannot create a proxy for org.freedesktop.systemd1")?;
        // Without Subscribe(), systemd sends no JobRemoved signals to this client.
        manager
            .subscribe()
            .await
            .map_err(|e| anyhow!("systemd did not answer on the system bus: {e}; is systemd PID 1 here?"))?;
        Ok(Self {
            conn,
            manager,
            dry_run,
        })
    }

    /// systemd's major version (`Manager.Version`: "252.38-1~deb12u1" → 252).
    pub async fn version(&self) -> Result<u32> {
        let _waiting = timing::waiting(Wait::Systemd);
        let text = self
            .manager
            .version()
            .await
            .map_err(|e| anyhow!("cannot read systemd's version over the system bus: {e}"))?;
        major_version(&text).with_context(|| format!("systemd reports a version this cannot read: {text:?}"))
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    fn planned(&self, op: &str) {
        println!("dry-run: would call {op}");
    }

    /// Makes systemd read changed unit files (`daemon-reload`).
    pub async fn reload(&self) -> Result<()> {
        let _waiting = timing::waiting(Wait::Systemd);
        if self.dry_run {
            self.planned("Manager.Reload()");
            return Ok(());
        }
        tracing::debug!("D-Bus Manager.Reload()");
        self.manager
            .reload()
            .await
            .map_err(|e| denied_or(e, "reload systemd's unit files"))
    }

    /// Starts a unit and waits (up to `deadline`) for its start job: for a `Type=notify`
    /// service, until it sent READY=1.
    pub async fn start(&self, unit: &str, deadline: Duration) -> Result<()> {
        self.run_job("StartUnit", unit, deadline, Watch::Crash)
            .await
            .map(drop)
    }

    /// Stops a unit and waits for its stop job: for a service, until it has drained and exited.
    pub async fn stop(&self, unit: &str, deadline: Duration) -> Result<()> {
        self.run_job("StopUnit", unit, deadline, Watch::Nothing)
            .await
            .map(drop)
    }

    /// Stops a draining service and waits until it has exited, or until its `STATUS=` line
    /// says that only idle keep-alive connections are left ([`IDLE_HOLD_STATUS`]): those
    /// are held for the load balancer (deploy.yml `drain.idle_hold`), and systemd finishes
    /// the stop job after the hook.
    pub async fn stop_draining(&self, unit: &str, deadline: Duration) -> Result<Stopped> {
        self.run_job("StopUnit", unit, deadline, Watch::IdleHold).await
    }

    pub async fn reset_failed(&self, unit: &str) -> Result<()> {
        let _waiting = timing::waiting(Wait::Systemd);
        if self.dry_run {
            self.planned(&format!("Manager.ResetFailedUnit({unit})"));
            return Ok(());
        }
        tracing::debug!("D-Bus Manager.ResetFailedUnit({unit})");
        match self.manager.reset_failed_unit(unit).await {
            Ok(()) => Ok(()),
            // Not loaded, or nothing to reset: both fine.
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("NoSuchUnit") => Ok(()),
            Err(e) => Err(denied_or(e, &format!("reset the failed state of {unit}"))),
        }
    }

    /// Enables unit files (their `[Install]` symlinks), so they come back after a reboot.
    pub async fn enable(&self, units: &[&str]) -> Result<()> {
        let _waiting = timing::waiting(Wait::Systemd);
        if self.dry_run {
            self.planned(&format!(
                "Manager.EnableUnitFiles({units:?}, runtime=false, force=true)"
            ));
            return Ok(());
        }
        tracing::debug!("D-Bus Manager.EnableUnitFiles({units:?})");
        self.manager
            .enable_unit_files(units, false, true)
            .await
            .map(|_| ())
            .map_err(|e| denied_or(e, &format!("enable {units:?}")))
    }

    pub async fn disable(&self, units: &[&str]) -> Result<()> {
        let _waiting = timing::waiting(Wait::Systemd);
        if self.dry_run {
            self.planned(&format!("Manager.DisableUnitFiles({units:?}, runtime=false)"));
            return Ok(());
        }
        tracing::debug!("D-Bus Manager.DisableUnitFiles({units:?})");
        self.manager
            .disable_unit_files(units, false)
            .await
            .map(|_| ())
            .map_err(|e| denied_or(e, &format!("disable {units:?}")))
    }

    /// "enabled", "disabled", "static", … or "not-found".
    pub async fn unit_file_state(&self, unit: &str) -> Result<String> {
        let _waiting = timing::waiting(Wait::Systemd);
        tracing::debug!("D-Bus Manager.GetUnitFileState({unit})");
        match self.manager.get_unit_file_state(unit).await {
            Ok(s) => Ok(s),
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("NoSuchUnit") => {
                Ok("not-found".into())
            }
            Err(e) => Err(crate::fault::Fault::environment(format!(
                "cannot read the unit file state of {unit} over D-Bus: {e}"
            ))
            .into()),
        }
    }

    /// The processes of a running unit (its cgroup), by PID.
    pub async fn unit_processes(&self, unit: &str) -> Result<Vec<u32>> {
        let _waiting = timing::waiting(Wait::Systemd);
        tracing::debug!("D-Bus Manager.GetUnitProcesses({unit})");
        let procs = self.manager.get_unit_processes(unit).await.map_err(|e| {
            crate::fault::Fault::environment(format!("cannot list the processes of {unit} over D-Bus: {e}"))
        })?;
        Ok(procs.into_iter().map(|p| p.1).collect())
    }

    /// Names of loaded units matching a glob (e.g. `app@*.service`) that are not inactive.
    pub async fn list_live(&self, pattern: &str) -> Result<Vec<String>> {
        let _waiting = timing::waiting(Wait::Systemd);
        tracing::debug!("D-Bus Manager.ListUnitsByPatterns({pattern})");
        let units = self
            .manager
            .list_units_by_patterns(
                &["active", "activating", "deactivating", "reloading", "failed"],
                &[pattern],
            )
            .await
            .map_err(|e| {
                crate::fault::Fault::environment(format!(
                    "cannot list units matching {pattern} over D-Bus: {e}"
                ))
            })?;
        let mut names: Vec<String> = units.into_iter().map(|u| u.0).collect();
        names.sort();
        Ok(names)
    }

    /// Loads (if needed) and reads a unit's state.
    pub async fn status(&self, unit: &str) -> Result<UnitStatus> {
        let _waiting = timing::waiting(Wait::Systemd);
        let started = Instant::now();
        let st = self.read_status(unit).await?;
        tracing::debug!(
            "D-Bus Manager.LoadUnit({unit}) + Properties.GetAll: {} ({:.2} ms)",
            st.active_state,
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(st)
    }

    async fn read_status(&self, unit: &str) -> Result<UnitStatus> {
        let path =
            self.manager.load_unit(unit).await.map_err(|e| {
                crate::fault::Fault::environment(format!("systemd cannot load unit {unit}: {e}"))
            })?;
        let props = self.properties(&path, "org.freedesktop.systemd1.Unit").await?;
        let mut st = UnitStatus {
            name: unit.to_string(),
            load_state: string(&props, "LoadState"),
            active_state: string(&props, "ActiveState"),
            sub_state: string(&props, "SubState"),
            need_daemon_reload: boolean(&props, "NeedDaemonReload"),
            fragment_path: string(&props, "FragmentPath"),
            ..Default::default()
        };
        let iface = if unit.ends_with(".service") {
            Some("org.freedesktop.systemd1.Service")
        } else if unit.ends_with(".socket") {
            Some("org.freedesktop.systemd1.Socket")
        } else {
            None
        };
        if let Some(iface) = iface.filter(|_| st.load_state == "loaded") {
            let props = self.properties(&path, iface).await?;
            st.result = string(&props, "Result");
            st.main_pid = u32_of(&props, "MainPID");
            st.n_restarts = u32_of(&props, "NRestarts");
            st.exec_main_status = props
                .get("ExecMainStatus")
                .and_then(|v| i32::try_from(v).ok())
                .unwrap_or(0);
            st.status_text = string(&props, "StatusText");
        }
        Ok(st)
    }

    async fn properties(&self, path: &OwnedObjectPath, iface: &str) -> Result<HashMap<String, OwnedValue>> {
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .path(path.as_ref())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let iface = zbus::names::InterfaceName::try_from(iface)?;
        // A bus that does not answer is the host's fault (exit 3), never the release's.
        props.get_all(iface).await.map_err(|e| {
            crate::fault::Fault::environment(format!("cannot read properties of {}: {e}", path.as_str()))
                .into()
        })
    }

    /// Queues a start or stop job and waits for it to be removed, with its result.
    async fn run_job(&self, method: &str, unit: &str, deadline: Duration, watch: Watch) -> Result<Stopped> {
        let _waiting = timing::waiting(Wait::Systemd);
        if self.dry_run {
            self.planned(&format!(
                "Manager.{method}({unit}, \"replace\") and wait for JobRemoved"
            ));
            return Ok(Stopped::Exited);
        }
        let watch_crash = watch == Watch::Crash;
        let started = Instant::now();
        // Subscribe before queueing the job, so its JobRemoved cannot slip past.
        let mut removed = self.manager.receive_job_removed().await?;
        tracing::debug!("D-Bus Manager.{method}({unit}, \"replace\")");
        let job = match method {
            "StartUnit" => self.manager.start_unit(unit, "replace").await,
            "StopUnit" => self.manager.stop_unit(unit, "replace").await,
            "RestartUnit" => self.manager.restart_unit(unit, "replace").await,
            other => bail!("unknown job method {other}"),
        }
        .map_err(|e| denied_or(e, &format!("{method} {unit}")))?;

        let wait_for_removal = async {
            while let Some(signal) = removed.next().await {
                let args = signal.args()?;
                if args.job.as_str() == job.as_str() {
                    return Ok::<String, anyhow::Error>(args.result.to_string());
                }
            }
            Err(anyhow!(
                "the system bus connection closed while waiting for {unit}"
            ))
        };
        let watch = async {
            if watch == Watch::Nothing {
                return std::future::pending::<Result<JobOutcome>>().await;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let st = self.read_status(unit).await?;
                if watch == Watch::Crash && st.has_crashed() {
                    return Ok(JobOutcome::Crashed(st));
                }
                if watch == Watch::IdleHold && st.status_text.starts_with(IDLE_HOLD_STATUS) {
                    return Ok(JobOutcome::IdleHold(st.status_text));
                }
            }
        };
        let outcome = tokio::select! {
            r = wait_for_removal => JobOutcome::Removed(r?),
            o = watch => o?,
            _ = tokio::time::sleep(deadline) => JobOutcome::TimedOut,
        };
        let took = started.elapsed();
        match outcome {
            JobOutcome::Removed(result) if result == "done" => {
                tracing::debug!("{method} {unit}: done in {:.1} ms", took.as_secs_f64() * 1e3);
                Ok(Stopped::Exited)
            }
            JobOutcome::IdleHold(status) => {
                tracing::debug!("{method} {unit}: {status} ({:.1} ms)", took.as_secs_f64() * 1e3);
                Ok(Stopped::HoldingIdle(status))
            }
            JobOutcome::Removed(result) => {
                let st = self.status(unit).await.unwrap_or_default();
                if watch_crash && st.has_crashed() {
                    bail!("{}; {}", st.start_failure(), journal_hint(unit));
                }
                bail!(
                    "{method} {unit} ended with job result \"{result}\" after {:.1} s: {}; {}",
                    took.as_secs_f64(),
                    st.describe(),
                    journal_hint(unit)
                )
            }
            JobOutcome::Crashed(st) => bail!("{}; {}", st.start_failure(), journal_hint(unit)),
            JobOutcome::TimedOut => {
                let st = self.status(unit).await.unwrap_or_default();
                bail!(
                    "{method} {unit} did not finish within {} s: {}; {}",
                    deadline.as_secs_f64(),
                    st.describe(),
                    journal_hint(unit)
                )
            }
        }
    }

    /// Runs a transient `Type=oneshot` service made of `directives` and waits until its
    /// command has exited, or `deadline` (then it is stopped). Returns its status: `result`
    /// "success", or why it failed ("exit-code", "signal", "timeout", …) with the exit status
    /// or signal in `exec_main_status`. A failed unit stays loaded (so its result can be read)
    /// until this resets it; a successful one is collected by systemd when it goes inactive.
    pub async fn run_transient(
        &self,
        unit: &str,
        directives: &[Directive],
        deadline: Duration,
    ) -> Result<UnitStatus> {
        let _waiting = timing::waiting(Wait::App);
        if self.dry_run {
            let lines: Vec<String> = directives.iter().flat_map(Directive::lines).collect();
            self.planned(&format!(
                "Manager.StartTransientUnit({unit}, \"fail\") with\n  {}\nand wait for it to finish",
                lines.join("\n  ")
            ));
            return Ok(UnitStatus {
                name: unit.to_string(),
                result: "success".into(),
                ..Default::default()
            });
        }
        // A failed run of the same name (a hook killed before it reset it) would block the name.
        self.reset_failed(unit).await?;
        let properties: Vec<(&str, Variant<'_>)> =
            directives.iter().flat_map(Directive::properties).collect();
        let mut removed = self.manager.receive_job_removed().await?;
        tracing::debug!(
            "D-Bus Manager.StartTransientUnit({unit}, \"fail\", {} properties)",
            properties.len()
        );
        let job = self
            .manager
            .start_transient_unit(unit, "fail", &properties, &[])
            .await
            .map_err(|e| match &e {
                zbus::Error::MethodError(name, _, _) if name.as_str().ends_with("UnitExists") => {
                    anyhow::Error::new(crate::fault::Fault::environment(format!(
                        "{unit} exists already: an earlier run still runs; wait for it, or stop it \
                         (`systemctl stop {unit}`), then deploy again"
                    )))
                }
                _ => denied_or(e, &format!("start the transient unit {unit}")),
            })?;
        let wait_for_removal = async {
            while let Some(signal) = removed.next().await {
                let args = signal.args()?;
                if args.job.as_str() == job.as_str() {
                    return Ok::<String, anyhow::Error>(args.result.to_string());
                }
            }
            Err(anyhow!(
                "the system bus connection closed while waiting for {unit}"
            ))
        };
        let outcome = tokio::select! {
            r = wait_for_removal => Some(r?),
            _ = tokio::time::sleep(deadline) => None,
        };
        match outcome {
            Some(result) if result == "done" => Ok(UnitStatus {
                name: unit.to_string(),
                active_state: "inactive".into(),
                sub_state: "dead".into(),
                result: "success".into(),
                ..Default::default()
            }),
            Some(_) => {
                let st = self.read_status(unit).await?;
                let _ = self.reset_failed(unit).await;
                Ok(st)
            }
            None => {
                tracing::warn!(
                    "{unit} still runs after {} s; stopping it",
                    deadline.as_secs_f64()
                );
                let stopped = self.stop(unit, Duration::from_secs(30)).await;
                let mut st = self.read_status(unit).await.unwrap_or_default();
                st.name = unit.to_string();
                st.result = "timeout".into();
                if let Err(e) = stopped {
                    tracing::error!("{e:#}");
                }
                let _ = self.reset_failed(unit).await;
                Ok(st)
            }
        }
    }
}

enum JobOutcome {
    Removed(String),
    Crashed(UnitStatus),
    IdleHold(String),
    TimedOut,
}

/// What a job's wait watches besides its JobRemoved signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    Nothing,
    /// A start: the unit crashing (a restart loop never removes the job).
    Crash,
    /// A drain: the `STATUS=` line announcing the idle hold.
    IdleHold,
}

/// The prefix of the `STATUS=` line of a draining process that holds only idle keep-alive
/// connections (the contract in sample-app/README.md, drain step 5).
pub const IDLE_HOLD_STATUS: &str = "idle hold:";

/// How [`Systemd::stop_draining`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The process exited: the unit is inactive (or failed).
    Exited,
    /// The process holds only idle keep-alive connections (its `STATUS=` line); systemd
    /// finishes the stop when the balancer has reused or closed them.
    HoldingIdle(String),
}

/// Turns an access-denied error into one that says what rights are missing.
fn denied_or(e: zbus::Error, what: &str) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("AccessDenied") || text.contains("InteractiveAuthorizationRequired") {
        anyhow::Error::new(crate::fault::Fault::environment(format!(
            "not allowed to {what}: {text}; the hooks manage systemd units and must run as root \
             (CodeDeploy's default; remove `runas:` from appspec.yml or run with sudo)"
        )))
    } else {
        anyhow!("systemd refused to {what}: {text}")
    }
}

/// The likely cause of a death by signal at start, among the unit's hardening directives.
fn signal_hint(n: i32) -> &'static str {
    match n {
        // SIGILL, SIGTRAP, SIGSEGV: what V8, the JVM and other JITs die of when they cannot
        // map memory writable and executable.
        4 | 5 | 11 => {
            ". If the app runs a JIT (Node, Java, PyPy, .NET, Ruby's YJIT), the likely cause is the unit's \
             MemoryDenyWriteExecute=yes: add `needs: [jit]` under app: in deploy.yml"
        }
        // SIGSYS: a system call refused by seccomp with the default action.
        31 => {
            ". A system call was refused by the unit's SystemCallFilter=: find it with `journalctl -k | grep audit` \
             or strace, then allow its group in the bundle's units/ template (setuid()/setgid(): `needs: [setuid]` \
             under app: in deploy.yml)"
        }
        _ => "",
    }
}

/// "SIGTRAP (5)" for 5.
fn signal_name(n: i32) -> String {
    match nix::sys::signal::Signal::try_from(n) {
        Ok(sig) => format!("{} ({n})", sig.as_str()),
        Err(_) => format!("signal {n}"),
    }
}

fn string(props: &HashMap<String, OwnedValue>, key: &str) -> String {
    props
        .get(key)
        .and_then(|v| <&str>::try_from(v).ok().map(str::to_string))
        .unwrap_or_default()
}

fn boolean(props: &HashMap<String, OwnedValue>, key: &str) -> bool {
    props
        .get(key)
        .and_then(|v| bool::try_from(v).ok())
        .unwrap_or(false)
}

fn u32_of(props: &HashMap<String, OwnedValue>, key: &str) -> u32 {
    props.get(key).and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

mod directive;
#[cfg(test)]
mod tests;

pub use directive::Directive;
