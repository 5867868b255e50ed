//! Command line and environment configuration (clap derive; every flag has an
//! `HANDOFF_FRONT_*` environment fallback). `handoff-front --help` lists them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::cidr::Cidr;

/// A reverse proxy on the systemd-owned listening socket.
///
/// It forwards HTTP and WebSockets to the current release of the app on a
/// loopback port (read from --routes at start, switched with the `route`
/// command on --control), drains the previous release itself, and hands its
/// own socket over to a successor instance without losing a request (SIGTERM:
/// stop accepting, lame duck, finish in-flight requests, close WebSockets with
/// 1012). Exit codes: 0 drained, 1 drain timed out or runtime failure, 2 usage
/// error or no listening socket.
#[derive(Debug, Clone, Parser)]
#[command(name = "handoff-front", version)]
pub struct Config {
    /// JSON routes file written by the hooks: {"release":"v2","upstream":"127.0.0.1:21001"}.
    /// Read once at start; a missing file means "no release routed yet" (503).
    #[arg(long, value_name = "PATH", env = "HANDOFF_FRONT_ROUTES")]
    pub routes: PathBuf,

    /// The deploy hooks' state.json. At start, the release it records as serving is routed to
    /// (its route from `routes/<release>.json` beside the routes file) when the routes file
    /// names another: a switch that a power cut interrupted before its commit wrote the routes
    /// file, and the release it names never started again.
    #[arg(long, value_name = "PATH", env = "HANDOFF_FRONT_STATE")]
    pub state: Option<PathBuf>,

    /// Unix socket to bind for the control channel (mode 0600; a stale file is removed).
    #[arg(long, value_name = "PATH", env = "HANDOFF_FRONT_CONTROL")]
    pub control: PathBuf,

    /// This instance's id, echoed in X-Handoff-Front on probe requests and in `status`.
    #[arg(long, value_name = "ID", env = "HANDOFF_FRONT_ID")]
    pub id: String,

    /// Bind ADDR yourself instead of inheriting sockets from systemd (local runs and
    /// tests only). Without it, LISTEN_FDS/LISTEN_PID must be set. Repeatable.
    #[arg(
        long = "bind",
        value_name = "ADDR",
        env = "HANDOFF_FRONT_BIND",
        value_delimiter = ','
    )]
    pub bind: Vec<String>,

    /// A client must deliver a whole request head within this long (from the
    /// connection's start or the first byte of a later request), else it is closed.
    #[arg(
        long,
        value_name = "MS",
        env = "HANDOFF_FRONT_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub header_read_timeout_ms: u64,

    /// A keep-alive client connection idle this long between requests is closed. Above a load
    /// balancer's own idle timeout (the ALB's: 60 s), so the balancer, not the front, closes an
    /// idle pooled connection: otherwise a request it sends just as the front closes fails.
    #[arg(
        long,
        value_name = "MS",
        env = "HANDOFF_FRONT_IDLE_TIMEOUT_MS",
        default_value_t = 75_000
    )]
    pub idle_timeout_ms: u64,

    /// Upstream connect timeout.
    #[arg(
        long,
        value_name = "MS",
        env = "HANDOFF_FRONT_CONNECT_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub connect_timeout_ms: u64,

    /// Largest request head accepted; larger ones get 431.
    #[arg(
        long,
        value_name = "BYTES",
        env = "HANDOFF_FRONT_MAX_HEADER_BYTES",
        default_value_t = 16_384
    )]
    pub max_header_bytes: usize,

    /// Most client connections served at once; beyond it, accepting pauses until
    /// one closes (new connections wait in the kernel queue).
    #[arg(
        long,
        value_name = "N",
        env = "HANDOFF_FRONT_MAX_CONNECTIONS",
        default_value_t = 16_384
    )]
    pub max_connections: usize,

    /// Own drain budget after SIGTERM: in-flight requests must finish within it;
    /// whatever is still open then is cut and the exit code is 1.
    #[arg(
        long,
        value_name = "MS",
        env = "HANDOFF_FRONT_DRAIN_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub drain_timeout_ms: u64,

    /// Own drain: after SIGTERM, answer every request with `Connection: close` for
    /// this long before closing idle keep-alive connections.
    #[arg(
        long,
        value_name = "MS",
        env = "HANDOFF_FRONT_LAME_DUCK_MS",
        default_value_t = 500
    )]
    pub lame_duck_ms: u64,

    /// Own drain: an idle keep-alive connection is not closed before this long after
    /// SIGTERM; until then it ends with its client's next request (answered with
    /// `Connection: close`) or the client's own close. A load balancer sends on its
    /// pooled connections at any moment, and one closed under it fails a request.
    #[arg(
        long,
        value_name = "MS",
        env = "HANDOFF_FRONT_IDLE_HOLD_MS",
        default_value_t = 3000
    )]
    pub idle_hold_ms: u64,

    /// Own drain: a connection that has not delivered its first request at SIGTERM
    /// gets this long to do so before it may be closed.
    #[arg(
        long,
        value_name = "MS",
        env = "HANDOFF_FRONT_FIRST_REQUEST_GRACE_MS",
        default_value_t = 200
    )]
    pub first_request_grace_ms: u64,

    /// How long to wait for both sides of a WebSocket to finish the close
    /// handshake (1012 to the client, 1001 to the upstream) before dropping it.
    #[arg(
        long,
        value_name = "MS",
        env = "HANDOFF_FRONT_WS_CLOSE_TIMEOUT_MS",
        default_value_t = 1_000
    )]
    pub ws_close_timeout_ms: u64,

    /// WebSocket closes per second when a release (or the front) drains: the closes are spread
    /// over open/rate seconds (within the drain budget) so the clients' reconnects arrive at a
    /// rate the new release accepts. 0 closes them all at once.
    #[arg(
        long,
        value_name = "N",
        env = "HANDOFF_FRONT_WS_CLOSE_RATE",
        default_value_t = 1_000
    )]
    pub ws_close_rate: u64,

    /// Peers whose forwarded headers are believed: CIDR blocks or addresses, comma-separated
    /// (e.g. the load balancer's subnets: 10.0.0.0/24,10.0.1.0/24). From them the front keeps
    /// X-Forwarded-Proto/-Host/-Port and Forwarded and appends the peer to X-Forwarded-For;
    /// from any other peer it replaces them all. Empty: no peer is trusted.
    #[arg(
        long,
        value_name = "CIDRS",
        env = "HANDOFF_FRONT_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,

    /// How the front speaks to the release: http1 (HTTP/1.1, with WebSockets), or h2c (HTTP/2
    /// with prior knowledge, for gRPC and other HTTP/2 apps; no WebSockets).
    #[arg(long, value_enum, value_name = "PROTOCOL", env = "HANDOFF_FRONT_UPSTREAM", default_value_t = Upstream::Http1)]
    pub upstream: Upstream,

    /// Serve Prometheus metrics at `GET /metrics` on this address (e.g. 127.0.0.1:9101), apart
    /// from the clients' sockets. Off when absent.
    #[arg(long, value_name = "ADDR", env = "HANDOFF_FRONT_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,

    /// One JSON line per request on standard output (the journal, under systemd).
    #[arg(
        long,
        value_name = "BOOL",
        env = "HANDOFF_FRONT_ACCESS_LOG",
        default_value_t = true,
        action = ArgAction::Set
    )]
    pub access_log: bool,

    /// More logging (-v debug, -vv trace). RUST_LOG, if set, wins.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,

    /// Send sd_notify messages (READY=1, STOPPING=1, STATUS=). Tests turn it off.
    #[arg(skip = true)]
    pub notify: bool,
}

/// `--upstream`: the protocol spoken to the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Upstream {
    /// HTTP/1.1 (and WebSockets).
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Config {
    /// `--header-read-timeout-ms`.
    pub fn header_read_timeout(&self) -> Duration {
        ms(self.header_read_timeout_ms)
    }
    /// `--idle-timeout-ms`.
    pub fn idle_timeout(&self) -> Duration {
        ms(self.idle_timeout_ms)
    }
    /// `--connect-timeout-ms`.
    pub fn connect_timeout(&self) -> Duration {
        ms(self.connect_timeout_ms)
    }
    /// `--drain-timeout-ms`.
    pub fn drain_timeout(&self) -> Duration {
        ms(self.drain_timeout_ms)
    }
    /// `--lame-duck-ms`.
    pub fn lame_duck(&self) -> Duration {
        ms(self.lame_duck_ms)
    }

    /// `--idle-hold-ms`.
    pub fn idle_hold(&self) -> Duration {
        ms(self.idle_hold_ms)
    }
    /// `--first-request-grace-ms`.
    pub fn first_request_grace(&self) -> Duration {
        ms(self.first_request_grace_ms)
    }
    /// `--ws-close-timeout-ms`.
    pub fn ws_close_timeout(&self) -> Duration {
        ms(self.ws_close_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_required() {
        let c = Config::try_parse_from(["f", "--routes", "/r", "--control", "/c", "--id", "a"]).unwrap();
        assert_eq!(c.header_read_timeout_ms, 10_000);
        assert_eq!(c.idle_timeout_ms, 75_000);
        assert_eq!(c.max_header_bytes, 16_384);
        assert_eq!(c.drain_timeout_ms, 30_000);
        assert!(c.bind.is_empty());
        assert!(c.trusted_proxies.is_empty());
        assert!(c.access_log && c.metrics.is_none());
        let off = Config::try_parse_from([
            "f",
            "--routes",
            "/r",
            "--control",
            "/c",
            "--id",
            "a",
            "--access-log",
            "false",
        ]);
        assert!(!off.unwrap().access_log);
        assert!(Config::try_parse_from(["f", "--routes", "/r", "--id", "a"]).is_err());
    }

    #[test]
    fn trusted_proxies() {
        let base = ["f", "--routes", "/r", "--control", "/c", "--id", "a"];
        let c = Config::try_parse_from(
            base.iter()
                .chain(&["--trusted-proxies", "10.0.0.0/24,10.0.1.7, ::1"]),
        )
        .unwrap();
        let shown: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/24", "10.0.1.7/32", "::1/128"]);
        let e = Config::try_parse_from(
            base.iter()
                .chain(&["--trusted-proxies", "10.0.0.0/24,10.0.0.300"]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("'10.0.0.300' is not an IPv4 or IPv6 address"), "{e}");
        assert!(e.contains("--trusted-proxies"), "{e}");
    }
}
