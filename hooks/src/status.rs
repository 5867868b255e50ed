//! `handoff status`: what serves a service and whether it serves healthy.
//!
//! [`gather`] reads the state, systemd's view and one health probe into a typed [`Report`];
//! [`Report::text`] renders it for a terminal, [`Report::json`] for tools (the schema is in the
//! README, next to `handoff status`), and [`Report::verdict`] turns it into the exit code
//! (through [`crate::fault`]): 0 only when the recorded release serves healthy.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::config::DeployConfig;
use crate::fault::{self, Fault, FaultKind};
use crate::release::{Event, ReleaseStore, State, Switching, Validating};
use crate::systemd::{Systemd, UnitStatus};

/// Everything `handoff status` shows; its JSON field names are stable.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub service: String,
    /// `/opt/<service>`.
    pub root: String,
    /// The version of the `handoff` that wrote this report.
    pub hooks_version: String,
    /// Why `state.json` could not be read (then the rest is systemd's view).
    pub state_error: Option<String>,
    /// The release the state records as serving.
    pub serving: Option<String>,
    /// The release that served before it (the default rollback target).
    pub previous: Option<String>,
    /// `handoff` (native), `restart` or `proxy`, from the serving (else the newest) release's
    /// deploy.yml.
    pub strategy: Option<String>,
    /// Why systemd could not be asked (exit 3).
    pub systemd_error: Option<String>,
    pub socket: Option<UnitReport>,
    /// The socket's addresses (deploy.yml `listen:`).
    pub listen: Vec<String>,
    pub holder: Option<UnitReport>,
    /// strategy: proxy: the fronts systemd runs.
    pub fronts: Vec<FrontReport>,
    /// The instances systemd runs (active, starting, stopping or failed).
    pub instances: Vec<InstanceReport>,
    /// strategy: proxy: where the fronts send requests (None: no route written yet).
    pub route: Option<RouteReport>,
    /// A switch that began and was neither committed nor undone.
    pub switching: Option<Switching>,
    /// A deployment that ApplicationStart switched and ValidateService has not judged yet.
    pub awaiting_validation: Option<Validating>,
    /// Listen addresses written to the socket unit, not applied yet.
    pub socket_pending: Option<String>,
    /// Kept releases, oldest first.
    pub releases: Vec<ReleaseReport>,
    pub last_deployment: Option<LastDeployment>,
    /// The last events of `events.log`, oldest first.
    pub recent_events: Vec<Event>,
    /// The health probe of the serving release (None when none was sent).
    pub probe: Option<ProbeReport>,
    /// The recorded release serves healthy: `problems` is empty.
    pub healthy: bool,
    /// Why it does not, one sentence each.
    pub problems: Vec<String>,
}

/// A unit as systemd sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UnitReport {
    pub unit: String,
    pub active_state: String,
    pub sub_state: String,
    /// Whether the unit file changed on disk since systemd loaded it.
    pub need_daemon_reload: bool,
    /// The one-line description the text output shows.
    pub summary: String,
}

impl UnitReport {
    fn from(st: &UnitStatus) -> Self {
        Self {
            unit: st.name.clone(),
            active_state: st.active_state.clone(),
            sub_state: st.sub_state.clone(),
            need_daemon_reload: st.need_daemon_reload,
            summary: st.describe(),
        }
    }
    fn is_active(&self) -> bool {
        self.active_state == "active"
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct InstanceReport {
    #[serde(flatten)]
    pub unit: UnitReport,
    pub release: String,
    /// The unit file state: "enabled" (it comes back at boot), "disabled", …
    pub enabled: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FrontReport {
    #[serde(flatten)]
    pub unit: UnitReport,
    pub id: String,
    pub enabled: String,
    /// The front the state records as holding the socket (others are stopped by the next hook).
    pub recorded: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteReport {
    pub release: String,
    pub upstream: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReleaseReport {
    pub release: String,
    /// "serving", "failed", "previous" (the rollback target) or "kept".
    pub mark: String,
    /// The hooks version that staged it ("unknown" for older hooks).
    pub hooks_version: String,
    /// Its instance's unit file state ("?" when systemd is unreachable).
    pub enabled: String,
}

/// The newest deployment in the event log and how it ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LastDeployment {
    pub deployment: String,
    /// "succeeded" (validated), "switched" (ApplicationStart done, no ValidateService recorded),
    /// "awaiting_validation", "failed", "unfinished" (a switch neither committed nor undone),
    /// "in_progress" (begun, not switched yet) or "unknown".
    pub outcome: String,
    /// Its last event: when (Unix seconds), which hook, what.
    pub at: u64,
    pub hook: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeReport {
    /// `GET http://<first listen address><health.path>`.
    pub url: String,
    pub healthy: bool,
    /// The HTTP status, when one came back.
    pub status: Option<u16>,
    /// The instance (native) or routed release (proxy) the answer named, if any.
    pub instance: Option<String>,
    pub error: Option<String>,
}

/// Reads what `handoff status` shows; fails only on what stops it from looking (systemd's
/// answers, an unreadable folder). A damaged `state.json` is reported, not fatal.
pub async fn gather(service: &str) -> Result<Report> {
    if !crate::config::is_safe_name(service, false) {
        bail!(Fault::input(format!("'{service}' is not a service name")));
    }
    let store = ReleaseStore::new(Path::new("/opt").join(service));
    let unit_dir = Path::new(crate::units::UNIT_DIR);
    if !store.root().exists() && !unit_dir.join(format!("{service}.socket")).exists() {
        bail!(Fault::input(format!(
            "no service {service} on this host (neither {} nor {}); deployed here: {}",
            store.root().display(),
            unit_dir.join(format!("{service}.socket")).display(),
            match crate::units::installed_services(unit_dir).join(", ") {
                s if s.is_empty() => "none".into(),
                s => s,
            }
        )));
    }
    let mut r = Report {
        service: service.into(),
        root: store.root().display().to_string(),
        hooks_version: crate::release::HOOKS_VERSION.into(),
        ..Report::default()
    };
    let state = match store.load_state() {
        Ok(s) => s,
        Err(e) if fault::kind_of(&e) == Some(FaultKind::Environment) => return Err(e),
        Err(e) => {
            r.state_error = Some(format!("{e:#}"));
            State::default()
        }
    };
    r.serving = state.serving.clone();
    r.previous = state.previous.clone();
    r.switching = state.switching.clone();
    r.awaiting_validation = state.validating.clone();
    r.socket_pending = state.socket_pending.clone();
    let releases = store.list()?;
    let cfg = state
        .serving
        .iter()
        .chain(releases.iter().rev())
        .find_map(|r| DeployConfig::load(&store.dir(r).join(crate::config::FILE_NAME)).ok());
    r.strategy = cfg.as_ref().map(|c| {
        match c.strategy {
            crate::config::Strategy::Handoff => "handoff",
            crate::config::Strategy::Restart => "restart",
            crate::config::Strategy::Proxy => "proxy",
        }
        .into()
    });
    r.listen = cfg.as_ref().map(|c| c.listen.clone()).unwrap_or_default();
    let systemd = match Systemd::connect(false).await {
        Ok(systemd) => Some(systemd),
        Err(e) => {
            r.systemd_error = Some(format!("{e:#}"));
            None
        }
    };
    if let Some(systemd) = &systemd {
        r.socket = Some(UnitReport::from(
            &systemd.status(&format!("{service}.socket")).await?,
        ));
        r.holder = Some(UnitReport::from(
            &systemd.status(&format!("{service}-hold.service")).await?,
        ));
        for unit in systemd.list_live(&format!("{service}-front@*.service")).await? {
            let st = systemd.status(&unit).await?;
            let id = between(&unit, "@", ".service");
            r.fronts.push(FrontReport {
                enabled: systemd.unit_file_state(&unit).await.unwrap_or_default(),
                recorded: state.front.as_deref() == Some(id.as_str()),
                id,
                unit: UnitReport::from(&st),
            });
        }
        for unit in systemd.list_live(&format!("{service}@*.service")).await? {
            let st = systemd.status(&unit).await?;
            r.instances.push(InstanceReport {
                release: between(&unit, "@", ".service"),
                enabled: systemd.unit_file_state(&unit).await.unwrap_or_default(),
                unit: UnitReport::from(&st),
            });
        }
    }
    if let Some(cfg) = cfg.as_ref().filter(|c| c.is_proxy()) {
        r.route = crate::switch::proxy::read_route(cfg).map(|route| RouteReport {
            release: route.release,
            upstream: route.upstream,
        });
    }
    if let Some(systemd) = &systemd {
        // The instance that must serve is shown even when systemd no longer runs it.
        let wanted = match &r.route {
            Some(route) => Some(route.release.clone()),
            None => state.serving.clone(),
        };
        let missing = wanted.filter(|w| !r.instances.iter().any(|i| &i.release == w));
        if let Some(release) = missing {
            let unit = format!("{service}@{release}.service");
            let st = systemd.status(&unit).await?;
            r.instances.push(InstanceReport {
                release: release.clone(),
                enabled: systemd.unit_file_state(&unit).await.unwrap_or_default(),
                unit: UnitReport::from(&st),
            });
        }
    }
    for name in &releases {
        let mark = if state.serving.as_deref() == Some(name) {
            "serving"
        } else if state.is_failed(name) {
            "failed"
        } else if state.previous.as_deref() == Some(name) {
            "previous"
        } else {
            "kept"
        };
        let enabled = match &systemd {
            Some(systemd) => systemd
                .unit_file_state(&format!("{service}@{name}.service"))
                .await
                .unwrap_or_default(),
            None => "?".into(),
        };
        r.releases.push(ReleaseReport {
            release: name.clone(),
            mark: mark.into(),
            hooks_version: store
                .meta(name)
                .map(|m| m.hooks_version)
                .unwrap_or_else(|| "unknown".into()),
            enabled,
        });
    }
    let events = store.recent_events(50);
    r.last_deployment = last_deployment(&events, &state);
    r.recent_events = events[events.len().saturating_sub(5)..].to_vec();
    // The probe uses the serving release's own deploy.yml: its health settings, its port.
    let serving_cfg = state
        .serving
        .as_ref()
        .and_then(|s| DeployConfig::load(&store.dir(s).join(crate::config::FILE_NAME)).ok());
    if let (Some(cfg), Some(_)) = (&serving_cfg, &systemd) {
        r.probe = Some(probe(cfg).await);
    }
    r.problems = problems(&r, &state, serving_cfg.is_some());
    r.healthy = r.problems.is_empty();
    Ok(r)
}

fn between(unit: &str, start: &str, end: &str) -> String {
    let rest = unit.split_once(start).map_or(unit, |(_, r)| r);
    rest.strip_suffix(end).unwrap_or(rest).to_string()
}

async fn probe(cfg: &DeployConfig) -> ProbeReport {
    let url = match cfg.probe_addrs().first() {
        Some(addr) => format!("http://{addr}{}", cfg.health.path),
        None => String::new(),
    };
    let outcome = match crate::health::Probe::new(cfg) {
        Ok(p) => p.once().await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(reply) => ProbeReport {
            url,
            healthy: true,
            status: Some(reply.status),
            instance: reply.instance,
            error: None,
        },
        Err(e) => ProbeReport {
            url,
            healthy: false,
            status: None,
            instance: None,
            error: Some(format!("{e:#}")),
        },
    }
}

/// The newest deployment named in `events` (oldest first) and its outcome: its events in
/// order, then what the state still says (a failed release, an unfinished switch, a
/// deployment awaiting its ValidateService).
fn last_deployment(events: &[Event], state: &State) -> Option<LastDeployment> {
    let last = events
        .iter()
        .rev()
        .find(|e| !e.deployment.is_empty() && e.deployment != "-")?;
    let id = &last.deployment;
    // "d-2 serves": the commit of a switch.
    let serves = |m: &str| m.strip_suffix(" serves").is_some_and(|r| !r.contains(' '));
    let mut outcome = "unknown";
    let mut release = None;
    for e in events.iter().filter(|e| &e.deployment == id) {
        let m = e.message.as_str();
        let validate = e.hook == "validate-service";
        if !validate && release.is_none() {
            release = m.strip_prefix("switching to ");
        }
        outcome = if m.contains("failed validation") || m.contains("did not take over") {
            "failed"
        } else if validate && (m.starts_with("switching to ") || serves(m)) {
            // ValidateService rolling back: its release was rejected.
            "failed"
        } else if validate && m.ends_with(" validated") {
            "succeeded"
        } else if serves(m) {
            "switched"
        } else if m.starts_with("switching to ") || m.contains(" begins") {
            "in_progress"
        } else {
            outcome
        };
    }
    if release.is_some_and(|r| state.is_failed(r)) {
        outcome = "failed";
    }
    if state.switching.as_ref().is_some_and(|s| &s.deployment == id) {
        outcome = "unfinished";
    } else if outcome == "switched" && state.validating.as_ref().is_some_and(|v| &v.deployment == id) {
        outcome = "awaiting_validation";
    }
    Some(LastDeployment {
        deployment: id.clone(),
        outcome: outcome.into(),
        at: last.at,
        hook: last.hook.clone(),
        message: last.message.clone(),
    })
}

/// Why the recorded release does not serve healthy (empty: it does).
fn problems(r: &Report, state: &State, has_config: bool) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(e) = &r.state_error {
        out.push(format!("state.json cannot be read: {e}"));
    }
    if let Some(e) = &r.systemd_error {
        out.push(format!("systemd is unreachable: {e}"));
    }
    let Some(serving) = &r.serving else {
        if r.state_error.is_none() {
            out.push("no release is recorded as serving".into());
        }
        return out;
    };
    if !has_config {
        out.push(format!(
            "the serving release {serving} has no readable deploy.yml in {}/releases/{serving}",
            r.root
        ));
    }
    if let Some(sw) = &r.switching {
        out.push(format!(
            "a switch to {} ({} of deployment {}) is unfinished",
            sw.to, sw.hook, sw.deployment
        ));
    }
    if r.systemd_error.is_none() {
        if let Some(socket) = r.socket.as_ref().filter(|s| !s.is_active()) {
            out.push(format!("the socket is not active: {}", socket.summary));
        }
        let instance_active = |release: &str| {
            r.instances
                .iter()
                .any(|i| i.release == release && i.unit.is_active())
        };
        let describe = |release: &str| {
            r.instances
                .iter()
                .find(|i| i.release == release)
                .map_or_else(|| "it does not run".to_string(), |i| i.unit.summary.clone())
        };
        if r.strategy.as_deref() == Some("proxy") {
            match &state.front {
                None => out.push("no front is recorded as holding the socket".into()),
                Some(id) if !r.fronts.iter().any(|f| &f.id == id && f.unit.is_active()) => {
                    out.push(format!("the recorded front {id} is not active"))
                }
                Some(_) => {}
            }
            match &r.route {
                None => out.push("no route is written for the front".into()),
                Some(route) if &route.release != serving => out.push(format!(
                    "the front routes to {}, but the state records {serving} as serving",
                    route.release
                )),
                Some(route) if !instance_active(&route.release) => out.push(format!(
                    "the routed instance of {} is not active: {}",
                    route.release,
                    describe(&route.release)
                )),
                Some(_) => {}
            }
        } else if !instance_active(serving) {
            out.push(format!(
                "the serving release's instance is not active: {}",
                describe(serving)
            ));
        }
    }
    if let Some(p) = r.probe.as_ref().filter(|p| !p.healthy) {
        out.push(format!(
            "the health probe failed: {}",
            p.error.as_deref().unwrap_or("no answer")
        ));
    }
    out
}

impl Report {
    /// The report as one JSON object (pretty, with a final newline).
    pub fn json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// The exit code's cause: systemd unreachable is a host fault (exit 3); a release that does
    /// not serve healthy exits 1; otherwise Ok (exit 0). See [`crate::fault`].
    pub fn verdict(&self) -> Result<()> {
        if let Some(e) = &self.systemd_error {
            bail!(Fault::environment(format!(
                "{} cannot be checked: {e}",
                self.service
            )));
        }
        if !self.healthy {
            bail!(Fault::new(
                FaultKind::Unhealthy,
                format!(
                    "{} does not serve healthy: {}",
                    self.service,
                    self.problems.join("; ")
                )
            ));
        }
        Ok(())
    }

    /// The report for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.write_text(&mut out).expect("writing to a String");
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        let stale = |u: &UnitReport| {
            if u.need_daemon_reload {
                " [unit file changed on disk since systemd loaded it: NeedDaemonReload]"
            } else {
                ""
            }
        };
        writeln!(
            out,
            "service {} ({}), hooks {}",
            self.service, self.root, self.hooks_version
        )?;
        if let Some(e) = &self.state_error {
            writeln!(
                out,
                "state     DAMAGED: {e}. What follows is systemd's view; the next deployment treats the running \
                 instance as serving"
            )?;
        }
        if let Some(e) = &self.systemd_error {
            writeln!(out, "systemd   unreachable: {e}")?;
        }
        if let Some(socket) = &self.socket {
            writeln!(
                out,
                "socket    {} on {}{}",
                socket.summary,
                self.listen.join(", "),
                stale(socket)
            )?;
        }
        if let Some(holder) = &self.holder {
            writeln!(out, "holder    {}{}", holder.summary, stale(holder))?;
        }
        for f in &self.fronts {
            let recorded = if f.recorded {
                ""
            } else {
                " (not the recorded front: the next hook stops it)"
            };
            writeln!(
                out,
                "front     {}, {}{recorded}{}",
                f.unit.summary,
                f.enabled,
                stale(&f.unit)
            )?;
        }
        for i in &self.instances {
            writeln!(
                out,
                "instance  {}, {}{}",
                i.unit.summary,
                i.enabled,
                stale(&i.unit)
            )?;
        }
        if self.strategy.as_deref() == Some("proxy") {
            match &self.route {
                Some(route) => writeln!(
                    out,
                    "route     strategy proxy: the front sends requests to {} at {}",
                    route.release, route.upstream
                )?,
                None => writeln!(out, "route     strategy proxy: no route written yet")?,
            }
        }
        if let Some(sw) = &self.switching {
            writeln!(
                out,
                "UNFINISHED switch to {} ({} of deployment {}): the next hook or `handoff rollback` undoes it",
                sw.to, sw.hook, sw.deployment
            )?;
        }
        if let Some(v) = &self.awaiting_validation {
            writeln!(
                out,
                "awaiting  ValidateService of deployment {} (release {})",
                v.deployment, v.release
            )?;
        }
        if let Some(r) = &self.socket_pending {
            writeln!(out, "UNFINISHED socket move for {r}: the next hook applies it")?;
        }
        writeln!(out, "releases (oldest first):")?;
        for r in &self.releases {
            let mark = match r.mark.as_str() {
                "previous" => "previous (rollback target)",
                m => m,
            };
            writeln!(
                out,
                "  {:<28} {mark:<28} hooks {:<8} {}",
                r.release, r.hooks_version, r.enabled
            )?;
        }
        if !self.recent_events.is_empty() {
            writeln!(out, "recent events:")?;
            for e in &self.recent_events {
                writeln!(out, "  {} {:<18} {} {}", e.at, e.hook, e.deployment, e.message)?;
            }
        }
        if let Some(d) = &self.last_deployment {
            writeln!(
                out,
                "last      deployment {}: {}",
                d.deployment,
                d.outcome.replace('_', " ")
            )?;
        }
        if let Some(p) = &self.probe {
            match (&p.status, &p.error) {
                (Some(status), _) => writeln!(out, "probe     GET {}: {status}", p.url)?,
                (None, Some(e)) => writeln!(out, "probe     {e}")?,
                (None, None) => {}
            }
        }
        if self.healthy {
            writeln!(out, "healthy   {} serves", self.serving.as_deref().unwrap_or("?"))?;
        } else {
            writeln!(out, "NOT HEALTHY:")?;
            for p in &self.problems {
                writeln!(out, "  - {p}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
