//! deploy.yml's `front:` section (`strategy: proxy`): the front's settings, checked.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;

use super::duration;
use crate::cidr::{Cidr, CidrError};

/// The front of `strategy: proxy` (its settings become its environment: a change of them
/// replaces the front with the same handoff as a new front binary).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Front {
    /// Private loopback ports for releases, "FIRST-LAST".
    pub ports: String,
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    pub max_connections: u32,
    pub max_header_bytes: u32,
    /// Peers whose `X-Forwarded-*` and `Forwarded` headers the front keeps (CIDR blocks or
    /// addresses): the load balancer's subnets. Empty: every client's are replaced.
    pub trusted_proxies: Vec<String>,
    /// Prometheus metrics at `GET /metrics` on this address (IP:port, loopback advised);
    /// none when absent.
    pub metrics: Option<String>,
    /// One JSON line per request to the journal.
    pub access_log: bool,
    /// How the front speaks to the release.
    pub upstream: Upstream,
}

/// `front.upstream`: the protocol the front speaks to the release.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Upstream {
    /// HTTP/1.1, with WebSockets.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge: gRPC servers and other HTTP/2 apps (no WebSockets).
    H2c,
}

impl Default for Front {
    fn default() -> Self {
        Self {
            ports: "20000-20999".into(),
            header_read_timeout: Duration::from_secs(10),
            // Above the ALB's 60 s idle timeout: the balancer closes its idle pooled
            // connections first, never the front under a request on its way (AWS's advice).
            idle_timeout: Duration::from_secs(75),
            connect_timeout: Duration::from_secs(2),
            max_connections: 16384,
            max_header_bytes: 16384,
            trusted_proxies: Vec::new(),
            metrics: None,
            access_log: true,
            upstream: Upstream::Http1,
        }
    }
}

impl Front {
    /// Every field checked (`strategy: proxy`).
    pub fn validate(&self, listen: &[String]) -> Result<()> {
        self.port_range()?;
        for (field, d) in [
            ("front.header_read_timeout", self.header_read_timeout),
            ("front.idle_timeout", self.idle_timeout),
            ("front.connect_timeout", self.connect_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                bail!(
                    "{field}: {} s is out of range; use between 100ms and 1h",
                    d.as_secs_f64()
                );
            }
        }
        if !(16..=1_000_000).contains(&self.max_connections) {
            bail!(
                "front.max_connections: {} is out of range; use 16 to 1000000",
                self.max_connections
            );
        }
        if !(8192..=1_048_576).contains(&self.max_header_bytes) {
            bail!(
                "front.max_header_bytes: {} is out of range; use 8192 to 1048576",
                self.max_header_bytes
            );
        }
        self.trusted_proxies()?;
        self.metrics_addr(listen)?;
        Ok(())
    }

    /// `metrics`, parsed: an IP:port that none of `listen` and none of `ports` take.
    pub fn metrics_addr(&self, listen: &[String]) -> Result<Option<SocketAddr>> {
        let Some(m) = &self.metrics else { return Ok(None) };
        let bad = |why: &str| {
            anyhow!(
                "front.metrics: '{m}' {why}; write a loopback address and a free port, e.g. metrics: 127.0.0.1:9101"
            )
        };
        let addr: SocketAddr = m.parse().map_err(|_| bad("is not IP:port"))?;
        if addr.port() == 0 {
            return Err(bad("has port 0, and Prometheus needs a fixed one"));
        }
        if self.port_range()?.contains(&addr.port()) {
            return Err(bad("is in front.ports, where the releases listen"));
        }
        if listen
            .iter()
            .filter_map(|l| l.parse::<SocketAddr>().ok())
            .any(|l| {
                l.port() == addr.port()
                    && (l.ip() == addr.ip() || l.ip().is_unspecified() || addr.ip().is_unspecified())
            })
        {
            return Err(bad("is an address of listen:, where the clients connect"));
        }
        Ok(Some(addr))
    }

    /// `trusted_proxies`, parsed: each entry a CIDR block or an address, never all of them.
    pub fn trusted_proxies(&self) -> Result<Vec<Cidr>> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                let bad = |why: String| {
                    anyhow!(
                        "front.trusted_proxies: '{entry}': {why}; list the load balancer's subnets as CIDR \
                         blocks or single addresses, e.g. trusted_proxies: [10.0.0.0/24, 10.0.1.0/24, \
                         \"2600:1f18:abc::/56\"]"
                    )
                };
                let cidr: Cidr = entry.parse().map_err(|e: CidrError| bad(e.0))?;
                if cidr.prefix() == 0 {
                    return Err(bad(
                        "trusts every client, so any client could claim HTTPS or another address".into(),
                    ));
                }
                Ok(cidr)
            })
            .collect()
    }

    /// `trusted_proxies` as the front's `HANDOFF_FRONT_TRUSTED_PROXIES` value (normalized,
    /// comma-separated; empty when none).
    pub fn trusted_proxies_env(&self) -> Result<String> {
        Ok(self
            .trusted_proxies()?
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","))
    }

    /// The port range, validated.
    pub fn port_range(&self) -> Result<std::ops::RangeInclusive<u16>> {
        let bad = || {
            anyhow::anyhow!(
                "front.ports: '{}' is not a port range; write FIRST-LAST with 1024 <= FIRST <= LAST, e.g. \"20000-20999\"",
                self.ports
            )
        };
        let (a, b) = self.ports.split_once('-').ok_or_else(bad)?;
        let (a, b): (u16, u16) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a < 1024 || a > b {
            return Err(bad());
        }
        Ok(a..=b)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::DeployConfig;

    const PROXY: &str =
        "service: sample\nlisten: [\"127.0.0.1:8080\"]\nstrategy: proxy\napp:\n  command: bin/sample-app\n";

    fn with(list: &str) -> anyhow::Result<DeployConfig> {
        DeployConfig::parse(&format!("{PROXY}front:\n  trusted_proxies: {list}\n"))
    }

    #[test]
    fn trusted_proxies_are_blocks_or_addresses() {
        assert!(
            DeployConfig::parse(PROXY)
                .unwrap()
                .front
                .trusted_proxies
                .is_empty()
        );
        let c = with("[10.0.0.0/24, 10.0.1.7, \"2600:1f18:abc::/56\", \"::ffff:10.2.0.0/112\"]").unwrap();
        assert_eq!(
            c.front.trusted_proxies_env().unwrap(),
            "10.0.0.0/24,10.0.1.7/32,2600:1f18:abc::/56,10.2.0.0/16"
        );
        assert_eq!(
            DeployConfig::parse(PROXY)
                .unwrap()
                .front
                .trusted_proxies_env()
                .unwrap(),
            ""
        );
    }

    #[test]
    fn trusted_proxies_reach_the_fronts_environment() {
        let env = crate::switch::proxy::front_env(&with("[10.0.0.0/24, 10.0.1.7]").unwrap()).unwrap();
        assert!(
            env.lines()
                .any(|l| l == "HANDOFF_FRONT_TRUSTED_PROXIES=10.0.0.0/24,10.0.1.7/32"),
            "{env}"
        );
        // None: the line is left out (the environment of such a front is as before).
        let none = crate::switch::proxy::front_env(&DeployConfig::parse(PROXY).unwrap()).unwrap();
        assert!(!none.contains("TRUSTED"), "{none}");
    }

    #[test]
    fn a_bad_trusted_proxy_is_named_with_an_example() {
        let err = |list: &str| format!("{:#}", with(list).unwrap_err());
        let e = err("[10.0.0.0/24, 10.0.0.0/33]");
        assert!(e.contains("front.trusted_proxies: '10.0.0.0/33'"), "{e}");
        assert!(e.contains("0 to 32"), "{e}");
        assert!(e.contains("e.g. trusted_proxies: [10.0.0.0/24"), "{e}");
        assert!(err("[alb.example.com]").contains("'alb.example.com' is not an IPv4 or IPv6 address"));
        assert!(err("[10.0.0.5/16]").contains("the block is 10.0.0.0/16"));
        assert!(err("[0.0.0.0/0]").contains("trusts every client"));
        assert!(err("[\"::/0\"]").contains("trusts every client"));
        // Only with strategy: proxy.
        let handoff = PROXY.replace("strategy: proxy\n", "");
        let e = format!(
            "{:#}",
            DeployConfig::parse(&format!("{handoff}front:\n  trusted_proxies: [10.0.0.0/24]\n")).unwrap_err()
        );
        assert!(e.contains("strategy: proxy only"), "{e}");
    }

    #[test]
    fn metrics_and_the_access_log_reach_the_fronts_environment_and_a_taken_address_is_refused() {
        let front = |lines: &str| DeployConfig::parse(&format!("{PROXY}front:\n{lines}"));
        let env = |lines: &str| crate::switch::proxy::front_env(&front(lines).unwrap()).unwrap();
        let e = env("  metrics: 127.0.0.1:9101\n  access_log: false\n");
        assert!(
            e.lines().any(|l| l == "HANDOFF_FRONT_METRICS=127.0.0.1:9101"),
            "{e}"
        );
        assert!(e.lines().any(|l| l == "HANDOFF_FRONT_ACCESS_LOG=false"), "{e}");
        // The defaults (no metrics, the access log on) add no line: a front's id stays as before.
        let plain = crate::switch::proxy::front_env(&DeployConfig::parse(PROXY).unwrap()).unwrap();
        assert!(
            !plain.contains("METRICS") && !plain.contains("ACCESS_LOG"),
            "{plain}"
        );
        assert_eq!(env("  access_log: true\n"), plain);
        let err = |m: &str| format!("{:#}", front(&format!("  metrics: \"{m}\"\n")).unwrap_err());
        for (m, why) in [
            ("localhost:9101", "is not IP:port"),
            ("127.0.0.1:0", "has port 0"),
            ("127.0.0.1:20007", "is in front.ports"),
            ("127.0.0.1:8080", "is an address of listen:"),
            ("0.0.0.0:8080", "is an address of listen:"),
        ] {
            let e = err(m);
            assert!(e.contains(&format!("front.metrics: '{m}' {why}")), "{e}");
            assert!(e.contains("e.g. metrics: 127.0.0.1:9101"), "{e}");
        }
        assert!(
            front("  metrics: \"127.0.0.2:8080\"\n").is_ok(),
            "another address, the same port"
        );
    }

    #[test]
    fn an_h2c_upstream_reaches_the_fronts_environment() {
        let c = DeployConfig::parse(&format!("{PROXY}front:\n  upstream: h2c\n")).unwrap();
        let env = crate::switch::proxy::front_env(&c).unwrap();
        assert!(env.lines().any(|l| l == "HANDOFF_FRONT_UPSTREAM=h2c"), "{env}");
        let http1 = DeployConfig::parse(&format!("{PROXY}front:\n  upstream: http1\n")).unwrap();
        assert!(
            !crate::switch::proxy::front_env(&http1)
                .unwrap()
                .contains("UPSTREAM")
        );
        let e = format!(
            "{:#}",
            DeployConfig::parse(&format!("{PROXY}front:\n  upstream: h2\n")).unwrap_err()
        );
        assert!(e.contains("upstream") && e.contains("h2c"), "{e}");
    }
}
