//! Probes through the service's real port: the same path a client takes, so a release that
//! "started" without the socket (or answers from somewhere else) is never taken for healthy.
//!
//! Every probe is a new connection (no pooling), so while two instances share the socket the
//! probes reach both; the instance header tells which one answered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use crate::config::DeployConfig;

pub struct Probe {
    client: reqwest::Client,
    addrs: Vec<SocketAddr>,
    path: String,
    instance_header: Option<String>,
}

/// One answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub instance: Option<String>,
}

impl Probe {
    pub fn new(cfg: &DeployConfig) -> Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(|e| anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            addrs: cfg.probe_addrs(),
            path: cfg.health.path.clone(),
            instance_header: cfg.health.instance_header.clone(),
        })
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn confirms_instance(&self) -> bool {
        self.instance_header.is_some()
    }

    /// One GET of the health path on `addr`.
    pub async fn get(&self, addr: SocketAddr) -> Result<Reply> {
        let url = format!("http://{addr}{}", self.path);
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| anyhow!("GET {url}: {e}"))?;
        let instance = self
            .instance_header
            .as_ref()
            .and_then(|h| resp.headers().get(h.as_str()))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Reply {
            status: resp.status().as_u16(),
            instance,
        })
    }

    /// Retries until every address answers 200 from `release` (when the app names its
    /// instance) or the deadline passes. Returns the last failure on timeout.
    pub async fn wait_for(&self, release: &str, deadline: Duration) -> Result<()> {
        let started = Instant::now();
        for addr in &self.addrs {
            let mut last;
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                match self.get(*addr).await {
                    Ok(r) if r.status == 200 && self.is_from(release, &r) => {
                        tracing::debug!("{addr}{}: 200 from {release} after {attempts} probes", self.path);
                        break;
                    }
                    Ok(r) if r.status == 200 => {
                        last = format!(
                            "200 from instance {:?}, not {release}",
                            r.instance.unwrap_or_default()
                        )
                    }
                    Ok(r) => {
                        last = format!(
                            "HTTP {} from instance {:?}",
                            r.status,
                            r.instance.unwrap_or_default()
                        )
                    }
                    Err(e) => last = format!("{e:#}"),
                }
                if started.elapsed() >= deadline {
                    bail!(
                        "{release} did not answer healthy on {addr}{} within {:.1} s ({attempts} probes); last: {last}",
                        self.path,
                        deadline.as_secs_f64()
                    );
                }
                // Fast at first (two instances share the socket, a few probes reach the new
                // one), then gently.
                let pause = if attempts < 20 { 25 } else { 200 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        Ok(())
    }

    fn is_from(&self, release: &str, reply: &Reply) -> bool {
        self.instance_header.is_none() || reply.instance.as_deref() == Some(release)
    }
}
