//! The deploy config: `deploy.yml` at the root of the revision bundle.
//!
//! ```yaml
//! service: sample              # unit names: sample.socket, sample-hold.service, sample@<release>.service
//! listen: ["127.0.0.1:8080"]   # the socket unit's ListenStream= addresses
//! strategy: handoff            # or "restart", or "proxy" (any app: our front holds the socket)
//! front:                       # strategy: proxy only; every field optional
//!   ports: "20000-20999"       # each release gets a free loopback port from here, in $PORT
//!   header_read_timeout: 10s   # a client's request head must arrive within this
//!   idle_timeout: 75s          # a keep-alive client connection idle this long is closed (above the ALB's 60 s)
//!   connect_timeout: 2s        # connecting to the release
//!   max_connections: 16384     # client connections; more wait in the socket's queue
//!   max_header_bytes: 16384    # larger request heads get 431
//!   trusted_proxies: []        # e.g. [10.0.0.0/24, 10.0.1.0/24]: the ALB's subnets; their X-Forwarded-* count
//!   metrics: 127.0.0.1:9101    # Prometheus metrics at GET /metrics; none when absent
//!   access_log: true           # one JSON line per request to the journal
//!   upstream: http1            # or h2c: HTTP/2 to the release (gRPC)
//! app:
//!   command: bin/sample-app    # relative to the release directory, or a host program: /usr/bin/gunicorn
//!   args: ["-v"]
//!   environment: { RUST_LOG: info }
//!   ready: notify              # or "probe": the app cannot send READY=1 (the unit is Type=exec)
//!   needs: []                  # hardening relaxations: jit (V8, JVM, PyPy), setuid (gunicorn's workers),
//!                              # proc (systemd before 247: ProtectProc= and ProcSubset= left out)
//!   environment_files: [/etc/sample/env, -/etc/sample/optional.env]  # host files, after app.env; - optional
//!   credentials: { db_password: /etc/sample/db_password }  # $CREDENTIALS_DIRECTORY/db_password (systemd >= 247)
//!   state_directory: sample    # /var/lib/sample for every release ($STATE_DIRECTORY); also cache_directory,
//!   runtime_directory: sample  # logs_directory; /run/sample ($RUNTIME_DIRECTORY), kept while releases switch
//!   before_switch:             # runs once per host in the new release, before it starts (migrations)
//!     command: .venv/bin/python  # relative to the release directory, or absolute
//!     args: [manage.py, migrate, --noinput]
//!     timeout: 5min
//! health:
//!   path: /healthz
//!   instance_header: X-Instance  # the app echoes its INSTANCE (the release id) here; "none": not confirmed
//!   stable_for: 2s               # validate-service watches the instance this long
//!   timeout: 2s                  # one probe's wait for its answer (raise it for a lazy first request)
//!   host: shop.example           # the probes' Host header (default: the address probed)
//!   expect: [200]                # the statuses that count as healthy
//!   protocol: http               # or grpc: grpc.health.v1.Health/Check over h2c, SERVING is healthy
//! deadlines:
//!   start: 60s                   # READY=1 within this, or the new release is stopped
//!   validate: 30s                # health checks retry until this
//! drain:
//!   budget: 30s                  # the unit's TimeoutStopSec=; keep above the app's own deadline
//!   idle_hold: 60s               # idle keep-alive connections kept for the balancer (its idle timeout)
//! releases:
//!   keep: 3
//! takeover: myapp.service      # the unit that serves the port today: the first deployment takes
//!                              # its socket over under load, then stops and disables it
//! ```
//!
//! Parsed with serde-saphyr under a resource budget, then validated; every error names the
//! field, what is wrong with it and what to write instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer};

pub mod app_env;
pub mod before_switch;
mod front;
pub use front::{Front, Upstream};

/// The name of the deploy config in a revision bundle and in every release directory.
pub const FILE_NAME: &str = "deploy.yml";

/// `health.instance_header: none`: the app names no instance, deliberately.
pub const NO_INSTANCE_HEADER: &str = "none";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Base name of the systemd units. Letters, digits, `-` and `_`.
    pub service: String,
    /// Addresses of the listening socket (IP:port). At least one.
    pub listen: Vec<String>,
    /// How a release replaces the serving one.
    #[serde(default)]
    pub strategy: Strategy,
    pub app: App,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub deadlines: Deadlines,
    #[serde(default)]
    pub drain: Drain,
    #[serde(default)]
    pub releases: Releases,
    /// The front's settings (`strategy: proxy`).
    #[serde(default)]
    pub front: Front,
    /// The unit that serves the port today (`myapp.service`): the first deployment takes its
    /// listening socket over under load, then stops and disables it ([`crate::switch::takeover`]).
    #[serde(default)]
    pub takeover: Option<String>,
    /// The CPU architecture of the bundle's executables (`x86_64` or `aarch64`): lint-bundle
    /// checks them against it, BeforeInstall refuses a host of another one. Not stated: the
    /// executables tell.
    #[serde(default)]
    pub arch: Option<crate::arch::Arch>,
}

/// The same words in deploy.yml and on the command line (`handoff init --strategy`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Start the new release beside the serving one on the same socket, verify it, then drain
    /// the old one. No stall, no failed request.
    #[default]
    #[serde(alias = "native")]
    #[value(alias = "native")]
    Handoff,
    /// Stop the serving release, then start the new one; the socket queues connections in
    /// between, so nothing is refused, but clients wait for the drain and the start.
    Restart,
    /// Any app, unchanged: our front holds the socket and the client connections and forwards
    /// to the release on a private loopback port (`$PORT`); it drains the old release itself.
    Proxy,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The executable: relative to the release directory (shipped in the bundle), or an
    /// absolute path to a program installed on every host (`/usr/bin/gunicorn`).
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment of the app, written to the release's `app.env`.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Append the app's output to `/opt/<service>/logs/<release>.log` instead of the journal.
    #[serde(default)]
    pub log_to_file: bool,
    /// How the hooks learn that a new instance serves: `notify` (it sends READY=1, the unit
    /// is `Type=notify`) or `probe` (for servers that cannot: the unit is `Type=exec` and the
    /// instance is ready when it answers its health check through the port).
    #[serde(default)]
    pub ready: Ready,
    /// What the runtime needs that the strictest hardening refuses; rendered into the unit
    /// template's `{{needs}}` line. Empty: the strictest profile.
    #[serde(default)]
    pub needs: Vec<Need>,
    /// Host files of `KEY=value` lines (secrets, host settings), read after the release's
    /// `app.env`, so their values win; a leading `-` marks one optional. See [`crate::config::app_env`].
    #[serde(default)]
    pub environment_files: Vec<String>,
    /// Credential name → host file: the app reads it as `$CREDENTIALS_DIRECTORY/<name>`.
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
    /// Writable directories that outlive releases (`StateDirectory=` …), relative names.
    #[serde(default)]
    pub state_directory: Option<String>,
    #[serde(default)]
    pub cache_directory: Option<String>,
    #[serde(default)]
    pub logs_directory: Option<String>,
    #[serde(default)]
    pub runtime_directory: Option<String>,
    /// A command run in the new release before it starts (migrations). See [`crate::before_switch`].
    #[serde(default)]
    pub before_switch: Option<before_switch::BeforeSwitch>,
}

/// A relaxation of the instance unit's hardening, for a runtime that cannot work without it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Need {
    /// A JIT compiler (V8/Node, the JVM, PyPy, .NET, Ruby's YJIT) writes machine code to
    /// memory and runs it: `MemoryDenyWriteExecute=no`.
    Jit,
    /// Servers that fork workers and call setuid()/setgid() to their own ids at each worker's
    /// start (gunicorn): `SystemCallFilter=@setuid`. Without capabilities no id can change, so
    /// the calls grant nothing.
    Setuid,
    /// A host whose systemd predates `ProtectProc=` and `ProcSubset=` (247; Ubuntu 20.04 runs
    /// 245): both are left out of the units, so the app sees every process of the host in
    /// /proc (names and command lines; not their memory, under `PrivateUsers=`).
    Proc,
}

impl Need {
    pub fn name(self) -> &'static str {
        match self {
            Need::Jit => "jit",
            Need::Setuid => "setuid",
            Need::Proc => "proc",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    /// The app sends READY=1 once it serves (`Type=notify`).
    #[default]
    Notify,
    /// It cannot: it is ready once it answers its health check (`Type=exec`).
    Probe,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Handoff => "handoff",
            Strategy::Restart => "restart",
            Strategy::Proxy => "proxy",
        }
    }
}

impl Ready {
    /// The instance unit's `Type=`.
    pub fn service_type(self) -> &'static str {
        match self {
            Ready::Notify => "notify",
            Ready::Probe => "exec",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    pub path: String,
    /// Response header in which the app names its instance (the release id); when set, the
    /// hooks confirm through the real port that the new release is the one answering.
    /// `none` runs without that confirmation, deliberately (a warning at every deployment);
    /// left out, `strategy: handoff` refuses to deploy (see [`DeployConfig::confirms_instance`]).
    pub instance_header: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub stable_for: Duration,
    /// How long one probe waits for its answer. A release that accepts probes and answers none
    /// within it is judged hung; an app whose first requests are slow (a lazy import, a cold
    /// cache) needs more.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// The Host header of every probe (an app that checks it: Django's ALLOWED_HOSTS, Rails'
    /// host authorization). Default: the address probed, `127.0.0.1:8080`.
    pub host: Option<String>,
    /// The statuses that count as healthy.
    pub expect: Vec<u16>,
    /// What the probes speak: `http` (a GET of `path`), or `grpc` (the gRPC health check,
    /// `grpc.health.v1.Health/Check`, over HTTP/2 with prior knowledge: SERVING is healthy).
    pub protocol: HealthProtocol,
}

/// `health.protocol`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HealthProtocol {
    /// A GET of `health.path`.
    #[default]
    Http,
    /// `grpc.health.v1.Health/Check` for the whole server.
    Grpc,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            path: "/healthz".into(),
            instance_header: None,
            stable_for: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            host: None,
            expect: vec![200],
            protocol: HealthProtocol::Http,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Deadlines {
    #[serde(deserialize_with = "duration")]
    pub start: Duration,
    #[serde(deserialize_with = "duration")]
    pub validate: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            start: Duration::from_secs(60),
            validate: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Drain {
    #[serde(deserialize_with = "duration")]
    pub budget: Duration,
    /// How long a draining instance (native) or front keeps an idle keep-alive connection
    /// for the load balancer that pooled it: until the balancer sends on it (answered with
    /// `Connection: close`) or closes it. The balancer's idle timeout (the ALB's default:
    /// 60 s). The hooks do not wait for it: the process says when only idle connections
    /// are left, and systemd finishes the stop.
    #[serde(deserialize_with = "duration")]
    pub idle_hold: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(30),
            idle_hold: Duration::from_secs(60),
        }
    }
}

impl Drain {
    /// The units' `TimeoutStopSec=`: the drain budget, and at least 5 s past the idle hold
    /// (which may outlast the budget: it holds idle connections only).
    pub fn stop_timeout(&self) -> Duration {
        self.budget.max(self.idle_hold + Duration::from_secs(5))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Releases {
    /// Release directories kept; the serving and the previous one are never pruned.
    pub keep: usize,
}

impl Default for Releases {
    fn default() -> Self {
        Self { keep: 3 }
    }
}

/// A systemd time span ([`crate::span`]): "500ms", "90s", "1min 30s", "1h", or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    crate::span::parse(text)
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Num(n) if n >= 0.0 => Ok(Duration::from_secs_f64(n)),
        Raw::Num(n) => Err(serde::de::Error::custom(format!("{n} is negative"))),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// Letters, digits, `-`, `_` (and `.` where `dots`): safe in unit names and paths alike.
pub fn is_safe_name(s: &str, dots: bool) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.'))
}

impl DeployConfig {
    /// Reads and validates `deploy.yml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the deploy config {}; is it in the bundle?",
                path.display()
            )
        })?;
        Self::parse(&text).with_context(|| format!("invalid deploy config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        // A small budget: a deploy config is a few dozen lines, never a YAML bomb.
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_reader_input_bytes: Some(256 * 1024),
                max_events: 10_000,
                max_aliases: 0,
                max_anchors: 0,
                max_depth: 16,
            },
        };
        let config: Self =
            serde_saphyr::from_str_with_options(text, options).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if !is_safe_name(&self.service, false) {
            bail!(
                "service: '{}' is not a usable unit name; use letters, digits, '-' and '_' (at most 64), e.g. service: my-api",
                self.service
            );
        }
        if self.listen.is_empty() {
            bail!("listen: needs at least one address, e.g. listen: [\"127.0.0.1:8080\"]");
        }
        for a in &self.listen {
            let addr: SocketAddr = a.parse().with_context(|| {
                format!("listen: '{a}' is not IP:port; write e.g. 127.0.0.1:8080 or [::]:8080")
            })?;
            if addr.port() == 0 {
                bail!("listen: '{a}' has port 0; the socket needs a fixed port");
            }
        }
        let cmd = Path::new(&self.app.command);
        let plain = |c: Component| matches!(c, Component::Normal(_) | Component::RootDir);
        if self.app.command.is_empty()
            || !cmd.components().all(plain)
            || self.app.command.contains(char::is_whitespace)
            || self.app.command.contains(['"', '\\', '%', '$'])
        {
            bail!(
                "app.command: '{}' must be a path inside the release (relative, without '..', e.g. bin/my-api) or an \
                 absolute path to a program on the host (e.g. /usr/bin/gunicorn), without spaces; put arguments in app.args",
                self.app.command
            );
        }
        let mut seen = Vec::new();
        for n in &self.app.needs {
            if seen.contains(n) {
                bail!("app.needs: '{}' is listed twice", n.name());
            }
            seen.push(*n);
        }
        for a in &self.app.args {
            // `${PORT}` is the one variable systemd substitutes for the app (strategy: proxy).
            if a.replace("${PORT}", "").contains(['\n', '"', '\\', '%', '$']) {
                bail!(
                    "app.args: '{a}' contains a newline, quote, backslash, '%' or '$' (other than ${{PORT}}); pass such \
                     values through app.environment"
                );
            }
            if a.contains("${PORT}") && self.strategy != Strategy::Proxy {
                bail!(
                    "app.args: '{a}' uses ${{PORT}}, which only strategy: proxy sets; with strategy: {} the app \
                     serves the socket systemd passes it",
                    self.strategy.name()
                );
            }
        }
        for (k, v) in &self.app.environment {
            let ok_key = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            if !ok_key {
                bail!("app.environment: '{k}' is not a valid variable name (letters, digits, '_')");
            }
            if v.contains('\n') {
                bail!(
                    "app.environment.{k}: the value contains a newline; systemd environment files take one line per variable"
                );
            }
        }
        crate::config::app_env::validate(&self.app)?;
        if let Some(step) = &self.app.before_switch {
            step.validate()?;
        }
        if !self.health.path.starts_with('/') || self.health.path.contains(char::is_whitespace) {
            bail!(
                "health.path: '{}' must start with '/' and contain no spaces, e.g. /healthz",
                self.health.path
            );
        }
        if let Some(h) = &self.health.instance_header
            && (h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            && h != NO_INSTANCE_HEADER
        {
            bail!("health.instance_header: '{h}' is not a header name, e.g. X-Instance");
        }
        for (field, d) in [
            ("deadlines.start", self.deadlines.start),
            ("deadlines.validate", self.deadlines.validate),
            ("drain.budget", self.drain.budget),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                bail!(
                    "{field}: {} s is out of range; use between 1s and 1h",
                    d.as_secs_f64()
                );
            }
        }
        if self.drain.idle_hold > Duration::from_secs(3600) {
            bail!(
                "drain.idle_hold: {} s is out of range; use the load balancer's idle timeout (the ALB's: 60s), \
                 at most 1h, or 0s when nothing pools connections to the port",
                self.drain.idle_hold.as_secs_f64()
            );
        }
        if let Some(h) = &self.health.host
            && (h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c)))
        {
            bail!(
                "health.host: '{h}' is not a host name, e.g. host: shop.example (the Host header of every probe)"
            );
        }
        if self.health.expect.is_empty() || self.health.expect.iter().any(|s| !(100..=599).contains(s)) {
            bail!(
                "health.expect: {:?} must list HTTP statuses from 100 to 599, e.g. expect: [200, 204]",
                self.health.expect
            );
        }
        let t = self.health.timeout;
        if t < Duration::from_millis(100) || t > Duration::from_secs(60) {
            bail!(
                "health.timeout: {} s is out of range; use between 100ms and 60s (one probe's wait for its answer)",
                t.as_secs_f64()
            );
        }
        if self.strategy == Strategy::Proxy {
            self.front.validate(&self.listen)?;
            if self.app.environment.contains_key("PORT") {
                bail!(
                    "app.environment.PORT: with strategy: proxy the hooks choose the port (front.ports); remove it"
                );
            }
        } else if self.front != Front::default() {
            bail!("front: is for strategy: proxy only; remove it or set strategy: proxy");
        }
        if let Some(unit) = &self.takeover {
            let stem = unit.strip_suffix(".service").unwrap_or("");
            let ours = stem == self.service
                || stem.starts_with(&format!("{}@", self.service))
                || stem == format!("{}-hold", self.service)
                || stem.starts_with(&format!("{}-front@", self.service));
            if stem.is_empty()
                || !stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@:\\".contains(c))
                || ours
            {
                bail!(
                    "takeover: '{unit}' must name the service unit that serves the port today, other than handoff's                      own units, e.g. takeover: myapp.service (`systemctl status <port's server>` names it)"
                );
            }
        }
        if self.releases.keep < 2 {
            bail!(
                "releases.keep: {} is too few; keep at least 2 so the previous release can serve again on rollback",
                self.releases.keep
            );
        }
        Ok(())
    }

    /// Where releases, state and the lock of this service live.
    pub fn root(&self) -> std::path::PathBuf {
        Path::new("/opt").join(&self.service)
    }

    pub fn socket_unit(&self) -> String {
        format!("{}.socket", self.service)
    }
    pub fn holder_unit(&self) -> String {
        format!("{}-hold.service", self.service)
    }
    pub fn template_unit(&self) -> String {
        format!("{}@.service", self.service)
    }
    pub fn instance_unit(&self, release: &str) -> String {
        format!("{}@{release}.service", self.service)
    }
    pub fn front_template_unit(&self) -> String {
        format!("{}-front@.service", self.service)
    }
    pub fn front_unit(&self, id: &str) -> String {
        format!("{}-front@{id}.service", self.service)
    }
    pub fn is_proxy(&self) -> bool {
        self.strategy == Strategy::Proxy
    }

    /// The app's command as systemd runs it: a relative command lives in the release folder.
    pub fn executable(&self) -> String {
        if Path::new(&self.app.command).is_absolute() {
            self.app.command.clone()
        } else {
            format!("{}/releases/%i/{}", self.root().display(), self.app.command)
        }
    }

    /// The header that names the answering instance, if the app sets one.
    pub fn instance_header(&self) -> Option<&str> {
        self.health
            .instance_header
            .as_deref()
            .filter(|h| *h != NO_INSTANCE_HEADER)
    }

    /// Whether the hooks can tell the new release's answers from the old one's while both
    /// share the socket. With `strategy: handoff` and no `health.instance_header` at all, the
    /// deployment is refused: a probe the old release answered would confirm a broken one.
    /// `instance_header: none` is the deliberate choice to run without it.
    pub fn check_instance_confirmation(&self) -> Result<()> {
        if self.strategy == Strategy::Handoff && self.health.instance_header.is_none() {
            bail!(
                "health.instance_header: not set. While two releases share the socket, the hooks confirm the new one by \
                 the header in which the app names its instance. Have the app add its INSTANCE environment variable \
                 (the release id) to every response as a header, e.g. `X-Instance: $INSTANCE`, and write \
                 `instance_header: X-Instance` under health: in deploy.yml. To deploy without that confirmation, write \
                 `instance_header: none` (then a probe the old release answers can confirm a new release that is broken, \
                 and a broken release takes its share of requests until validate-service rolls it back)"
            );
        }
        Ok(())
    }

    /// The addresses the hooks probe: a wildcard listen address is probed on loopback.
    pub fn probe_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .iter()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .map(|mut a| {
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        [127, 0, 0, 1].into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                a
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
