//! Command line and environment configuration.
//!
//! Every knob is a clap argument with an environment fallback, so a systemd unit
//! can set them with `Environment=` and an operator can try them by hand with
//! flags. `sample-app --help` lists them all with their defaults.

use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};

/// The release id baked in at build time (`RELEASE=... cargo build`, default `dev`).
pub const BUILD_RELEASE: &str = env!("SAMPLE_APP_BUILD_RELEASE");

/// Default `--first-request-grace-ms`.
pub const DEFAULT_FIRST_REQUEST_GRACE_MS: u64 = 200;
/// Default `--lame-duck-ms`.
pub const DEFAULT_LAME_DUCK_MS: u64 = 500;
/// Default `--idle-hold-ms`.
pub const DEFAULT_IDLE_HOLD_MS: u64 = 3000;
/// Default `--ws-close-timeout-ms`.
pub const DEFAULT_WS_CLOSE_TIMEOUT_MS: u64 = 1_000;
/// Default `--ws-close-rate`: WebSocket closes per second during a drain.
pub const DEFAULT_WS_CLOSE_RATE: u64 = 1_000;
/// Default `--drain-timeout-ms`.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;
/// Default `--hard-deadline-ms`.
pub const DEFAULT_HARD_DEADLINE_MS: u64 = 15_000;

/// A socket-activated HTTP + WebSocket server whose drain loses nothing.
///
/// It serves the TCP listening sockets systemd passes it (LISTEN_FDS/LISTEN_PID,
/// Type=notify) and refuses to start without them unless --bind is given. On
/// SIGTERM it stops accepting at once, answers with `Connection: close` for a
/// lame-duck period, finishes in-flight requests, closes WebSockets with 1012 and
/// exits 0. Exit codes: 0 clean drain, 1 start failure / drain timeout / hard
/// deadline, 2 usage error or no listening socket, 3 simulated crash.
#[derive(Debug, Clone, Parser)]
#[command(name = "sample-app", version)]
pub struct Config {
    /// Bind ADDR (e.g. 127.0.0.1:8080) yourself instead of inheriting sockets
    /// from systemd. For local runs only: without it, the server refuses to start
    /// unless LISTEN_FDS is set. Repeat the flag (or comma-separate in the env var)
    /// for several addresses.
    #[arg(
        long = "bind",
        value_name = "ADDR",
        env = "SAMPLE_BIND",
        value_delimiter = ','
    )]
    pub bind: Vec<String>,

    /// Release id reported by every endpoint. Defaults to the value of RELEASE at
    /// build time.
    #[arg(long, value_name = "ID", env = "RELEASE", default_value = BUILD_RELEASE)]
    pub release: String,

    /// Instance name reported by every endpoint (units set `Environment=INSTANCE=%i`).
    #[arg(long, value_name = "NAME", env = "INSTANCE", default_value = "-")]
    pub instance: String,

    /// More logging (-v debug, -vv trace). RUST_LOG, if set, wins.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,

    /// Sleep this long before serving and sending READY=1 (simulates a slow start;
    /// connections queue in the kernel meanwhile).
    #[arg(long, value_name = "MS", env = "SAMPLE_STARTUP_DELAY_MS", default_value_t = 0)]
    pub startup_delay_ms: u64,

    /// Fail the start: exit 1 with a message before READY=1 (after the startup delay).
    #[arg(long, env = "SAMPLE_FAIL_START", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub fail_start: bool,

    /// Serve and send READY=1, but answer /healthz with 503.
    #[arg(long, env = "SAMPLE_UNHEALTHY", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub unhealthy: bool,

    /// Serve and send READY=1, but answer every request with 503, health included (a broken
    /// release: what its share of the traffic gets until the hooks stop it).
    #[arg(long, env = "SAMPLE_BROKEN", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub broken: bool,

    /// Serve and send READY=1, accept connections, but never answer a request (a deadlocked
    /// release). The drain deadline ends it.
    #[arg(long, env = "SAMPLE_HANG", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub hang: bool,

    /// Serve healthy, then answer /healthz with 503 from this many ms after start on
    /// (a release whose dependency breaks after the switch; deploy validation rolls it back).
    #[arg(long, value_name = "MS", env = "SAMPLE_UNHEALTHY_AFTER_MS")]
    pub unhealthy_after_ms: Option<u64>,

    /// Serve healthy, then answer /healthz with 503 once this many health checks were
    /// answered (a release that breaks under its first real traffic, placed by count, not by
    /// a timer).
    #[arg(long, value_name = "N", env = "SAMPLE_UNHEALTHY_AFTER_CHECKS")]
    pub unhealthy_after_checks: Option<u64>,

    /// Exit at once on SIGTERM, without draining: an app that does nothing for a deploy
    /// (strategy: proxy, where the front drains for it).
    #[arg(long, env = "SAMPLE_EXIT_ON_SIGTERM", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub exit_on_sigterm: bool,

    /// Serve, but never send READY=1 (systemd's start job then times out).
    #[arg(long, env = "SAMPLE_NEVER_READY", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub never_ready: bool,

    /// Serve healthy, then exit with code 3 after this many ms without draining
    /// (simulates a crash loop).
    #[arg(long, value_name = "MS", env = "SAMPLE_CRASH_AFTER_MS")]
    pub crash_after_ms: Option<u64>,

    /// Drain: a connection that has not delivered its first request when SIGTERM
    /// arrives gets this long to do so before it may be closed (hyper would
    /// otherwise close it even when the request already sits in the kernel buffer).
    #[arg(long, value_name = "MS", env = "SAMPLE_FIRST_REQUEST_GRACE_MS", default_value_t = DEFAULT_FIRST_REQUEST_GRACE_MS)]
    pub first_request_grace_ms: u64,

    /// Drain: after SIGTERM, answer every request with `Connection: close` for this
    /// long before closing idle keep-alive connections (so clients leave on their
    /// own instead of racing a close with their next request).
    #[arg(long, value_name = "MS", env = "SAMPLE_LAME_DUCK_MS", default_value_t = DEFAULT_LAME_DUCK_MS)]
    pub lame_duck_ms: u64,

    /// Drain: an idle keep-alive connection is not closed before this long after SIGTERM;
    /// until then it waits for the client's next request (answered with `Connection: close`)
    /// or for the client to close it. Closing an idle connection races with the request the
    /// client may be sending on it at that moment, and a load balancer that pools its
    /// connections to this instance (HAProxy, ALB) fails that client's request. Set it to the
    /// balancer's idle timeout (the ALB's: 60 s); the hold may outlast the drain timeout,
    /// which bounds busy work only. Without the flag or SAMPLE_IDLE_HOLD_MS, the hooks'
    /// HANDOFF_IDLE_HOLD_MS (deploy.yml drain.idle_hold) applies.
    #[arg(long, value_name = "MS", env = "SAMPLE_IDLE_HOLD_MS", default_value_t = DEFAULT_IDLE_HOLD_MS)]
    pub idle_hold_ms: u64,

    /// Drain: how long to wait for a WebSocket client to answer our close frame
    /// (code 1012, service restart) before dropping the connection.
    #[arg(long, value_name = "MS", env = "SAMPLE_WS_CLOSE_TIMEOUT_MS", default_value_t = DEFAULT_WS_CLOSE_TIMEOUT_MS)]
    pub ws_close_timeout_ms: u64,

    /// Drain: WebSocket closes per second. 10,000 clients told to reconnect in the same
    /// millisecond overflow the successor's accept queue (SYN retransmits after 1 s, 3 s);
    /// the closes are spread over open/rate seconds instead (never past the drain timeout,
    /// less the close timeout). 0 closes them all at once.
    #[arg(long, value_name = "N", env = "SAMPLE_WS_CLOSE_RATE", default_value_t = DEFAULT_WS_CLOSE_RATE)]
    pub ws_close_rate: u64,

    /// Drain budget, counted from SIGTERM: in-flight requests must finish within
    /// it. Whatever is still open then is cut and the exit code is 1.
    #[arg(long, value_name = "MS", env = "SAMPLE_DRAIN_TIMEOUT_MS", default_value_t = DEFAULT_DRAIN_TIMEOUT_MS)]
    pub drain_timeout_ms: u64,

    /// Hard deadline, counted from SIGTERM: log and exit(1) regardless of state.
    /// Keep below the unit's TimeoutStopSec= (systemd SIGKILLs after that) and
    /// above the drain timeout.
    #[arg(long, value_name = "MS", env = "SAMPLE_HARD_DEADLINE_MS", default_value_t = DEFAULT_HARD_DEADLINE_MS)]
    pub hard_deadline_ms: u64,

    /// Send sd_notify messages (only ever false in in-process tests; with
    /// NOTIFY_SOCKET unset, notifications are no-ops anyway).
    #[arg(skip = true)]
    pub notify: bool,
}

impl Default for Config {
    /// The built-in defaults, ignoring the environment (for tests and embedding).
    fn default() -> Self {
        Self {
            bind: Vec::new(),
            release: BUILD_RELEASE.to_owned(),
            instance: "-".to_owned(),
            verbose: 0,
            startup_delay_ms: 0,
            fail_start: false,
            unhealthy: false,
            broken: false,
            hang: false,
            unhealthy_after_ms: None,
            unhealthy_after_checks: None,
            never_ready: false,
            exit_on_sigterm: false,
            crash_after_ms: None,
            first_request_grace_ms: DEFAULT_FIRST_REQUEST_GRACE_MS,
            lame_duck_ms: DEFAULT_LAME_DUCK_MS,
            idle_hold_ms: DEFAULT_IDLE_HOLD_MS,
            ws_close_timeout_ms: DEFAULT_WS_CLOSE_TIMEOUT_MS,
            ws_close_rate: DEFAULT_WS_CLOSE_RATE,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            hard_deadline_ms: DEFAULT_HARD_DEADLINE_MS,
            notify: true,
        }
    }
}

impl Config {
    /// `--startup-delay-ms` as a duration.
    pub fn startup_delay(&self) -> Duration {
        Duration::from_millis(self.startup_delay_ms)
    }

    /// `--first-request-grace-ms` as a duration.
    pub fn first_request_grace(&self) -> Duration {
        Duration::from_millis(self.first_request_grace_ms)
    }

    /// `--lame-duck-ms` as a duration.
    pub fn lame_duck(&self) -> Duration {
        Duration::from_millis(self.lame_duck_ms)
    }

    pub fn idle_hold(&self) -> Duration {
        Duration::from_millis(self.idle_hold_ms)
    }

    /// `--ws-close-timeout-ms` as a duration.
    pub fn ws_close_timeout(&self) -> Duration {
        Duration::from_millis(self.ws_close_timeout_ms)
    }

    /// `--drain-timeout-ms` as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// `--hard-deadline-ms` as a duration.
    pub fn hard_deadline(&self) -> Duration {
        Duration::from_millis(self.hard_deadline_ms)
    }

    /// Takes the hooks' `HANDOFF_IDLE_HOLD_MS` (deploy.yml `drain.idle_hold`) as the idle
    /// hold unless the hold was set for this app (`--idle-hold-ms`, `SAMPLE_IDLE_HOLD_MS`),
    /// and raises the hard deadline to 2 s past it (the hooks' `TimeoutStopSec=` is above
    /// both). A hold of the app's own ends at its hard deadline at the latest.
    pub fn with_host_idle_hold(mut self, own: bool, host: Option<&str>) -> anyhow::Result<Self> {
        if let (false, Some(ms)) = (own, host) {
            self.idle_hold_ms = ms.trim().parse().map_err(|_| {
                anyhow::anyhow!("HANDOFF_IDLE_HOLD_MS={ms:?} is not a whole number of milliseconds")
            })?;
            self.hard_deadline_ms = self.hard_deadline_ms.max(self.idle_hold_ms + 2000);
        }
        Ok(self)
    }

    /// `--crash-after-ms` as a duration.
    pub fn crash_after(&self) -> Option<Duration> {
        self.crash_after_ms.map(Duration::from_millis)
    }

    /// Budget inconsistencies worth a warning (none of them is fatal).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.hard_deadline_ms <= self.drain_timeout_ms {
            w.push(format!(
                "hard deadline ({} ms) is not above the drain timeout ({} ms): the drain cannot report its own timeout",
                self.hard_deadline_ms, self.drain_timeout_ms
            ));
        }
        if self.lame_duck_ms.max(self.first_request_grace_ms) + self.ws_close_timeout_ms
            > self.drain_timeout_ms
        {
            w.push(format!(
                "lame duck/first-request grace ({} ms / {} ms) plus ws close timeout ({} ms) exceed the drain timeout ({} ms)",
                self.lame_duck_ms,
                self.first_request_grace_ms,
                self.ws_close_timeout_ms,
                self.drain_timeout_ms
            ));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_defaults_match_constants() {
        let c = Config::try_parse_from([
            "sample-app",
            "--bind",
            "127.0.0.1:1",
            "--bind",
            "[::1]:2",
            "--release",
            "v9",
            "--fail-start",
            "--crash-after-ms",
            "50",
        ])
        .unwrap();
        assert_eq!(c.bind, ["127.0.0.1:1", "[::1]:2"]);
        assert_eq!(c.release, "v9");
        assert!(c.fail_start);
        assert_eq!(c.crash_after(), Some(Duration::from_millis(50)));
        assert!(c.notify, "notify defaults to on for the real binary");
        let d = Config::default();
        assert_eq!(d.lame_duck_ms, 500);
        assert_eq!(d.first_request_grace_ms, 200);
        assert_eq!(d.ws_close_timeout_ms, 1000);
        assert_eq!(d.drain_timeout_ms, 10_000);
        assert_eq!(d.hard_deadline_ms, 15_000);
        assert!(d.warnings().is_empty(), "{:?}", d.warnings());
    }

    #[test]
    fn inconsistent_budgets_warn() {
        let c = Config {
            drain_timeout_ms: 1000,
            hard_deadline_ms: 900,
            ..Config::default()
        };
        assert_eq!(c.warnings().len(), 2, "{:?}", c.warnings());
    }

    #[test]
    fn the_hooks_idle_hold_applies_unless_the_app_sets_its_own() {
        let host = Config::default()
            .with_host_idle_hold(false, Some("60000"))
            .unwrap();
        assert_eq!(host.idle_hold(), Duration::from_secs(60));
        // The hold may outlast the drain timeout: the hard deadline follows it.
        assert_eq!(host.hard_deadline(), Duration::from_secs(62));
        let own = Config::default()
            .with_host_idle_hold(true, Some("60000"))
            .unwrap();
        assert_eq!(own.idle_hold_ms, DEFAULT_IDLE_HOLD_MS);
        assert_eq!(
            own.hard_deadline(),
            Duration::from_millis(DEFAULT_HARD_DEADLINE_MS)
        );
        let err = Config::default()
            .with_host_idle_hold(false, Some("1min"))
            .unwrap_err();
        assert!(err.to_string().contains("HANDOFF_IDLE_HOLD_MS"), "{err}");
    }
}
