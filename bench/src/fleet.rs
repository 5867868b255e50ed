//! `report fleet`: the run of scripts/fleet — N hosts behind HAProxy, deployed in waves the way
//! CodeDeploy's deployment configurations roll a deployment group — as one table of waves,
//! what the balancer and the clients saw, the health checks, the time of each wave against
//! one host's switch, and the same waves extrapolated to CodeDeploy's unscaled defaults.
//!
//! The run folder (written by scripts/fleet):
//!
//! | file | content |
//! |---|---|
//! | `events.tsv` | `unix_ms  event  host  wave  detail`: wave-start/-end, deregister, deploy-start/-end (ok or failed + why), register, release (what the host answers after a wave), expect |
//! | `haproxy.log` | one line per request through the balancer: `unix_ms host status termination {X-Release}`; HAProxy's own lines for failed health checks and state changes |
//! | `load/summary.json` | loadgen's counts per client kind (ab, wrk, probe) |
//! | `settings.env` | hosts, time scale, the target group's defaults |
//! | `stat-end.csv` | HAProxy's `show stat` at the end: per host, the errors it did not log as a request (a server that closed a connection under a request: `eresp`, `srv_abrt`; connect errors: `econ`) |
//!
//! The module's parts:
//!
//! - [`balancer`]: haproxy.log and stat-end.csv — what HAProxy saw, and which requests failed;
//! - [`events`]: events.tsv and settings.env — what scripts/fleet did, and with which settings;
//! - here: [`analyse`], the waves put together from both ([`Fleet`]);
//! - [`verdict`]: the checks of `--expect`;
//! - [`markdown`]: the report's tables, and the time extrapolated to CodeDeploy's defaults;
//! - [`plot`]: the picture, through gnuplot.

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::data::Summary;

pub mod balancer;
pub mod events;
pub mod markdown;
pub mod plot;
pub mod verdict;

pub use balancer::{BalancerLog, Request, parse_log, parse_stats};
pub use events::{Event, Settings, parse_events, parse_settings};

/// A host's lifecycle stays under this: half the idle hold that a retired instance keeps the
/// balancer's pooled connections for after the hooks (deploy.yml `drain.idle_hold`, 60 s).
/// Measured: 4–7 s per host.
pub const LIFECYCLE_BOUND_MS: i64 = 30_000;

/// One host in one wave.
#[derive(Debug, Clone, Serialize)]
pub struct HostWave {
    pub host: u32,
    /// deploy-start to deploy-end: the lifecycle on this host.
    pub deploy_ms: i64,
    /// `ok`, or `failed …` with the hooks' reason.
    pub result: String,
    /// What the host answered on /version after the wave.
    pub release_after: String,
}

/// One wave: a deployment to every host, as the deployment configuration in its name rolls it.
#[derive(Debug, Clone, Serialize)]
pub struct Wave {
    pub id: String,
    pub name: String,
    pub wall_ms: i64,
    pub expected: String,
    pub hosts: Vec<HostWave>,
    /// Requests the balancer answered from the wave's start to the next wave (or the end).
    pub requests: u64,
    pub failed: u64,
    /// Answer time at the balancer during the wave (wave start to end): p99 and max, ms.
    pub p99_ms: i64,
    pub max_ms: i64,
}

impl Wave {
    /// A release every host must reject: one that fails at start, or serves unhealthy.
    pub fn broken(&self) -> bool {
        self.name.contains("(broken)") || self.name.contains("(unhealthy)")
    }
    pub fn load_balancer_step(&self) -> bool {
        self.name.contains("load balancer")
    }
    pub fn one_at_a_time(&self) -> bool {
        self.name.contains("OneAtATime")
    }
    pub fn all_at_once(&self) -> bool {
        self.name.contains("AllAtOnce")
    }
}

/// Everything the report says, also written as fleet.json.
#[derive(Debug, Serialize)]
pub struct Fleet {
    pub settings: Settings,
    pub waves: Vec<Wave>,
    pub balancer_requests: u64,
    pub balancer_failed: u64,
    /// The failed requests as the balancer logged them (at most 20).
    pub balancer_failures: Vec<String>,
    /// (kind, requests, failed) as the clients counted.
    pub clients: Vec<(String, u64, u64)>,
    pub failed_checks: Vec<String>,
    pub hosts_down: Vec<String>,
    /// Hosts with errors the balancer counted but did not log (see [`parse_stats`]).
    pub unlogged_errors: Vec<(String, u64, u64, u64)>,
    /// One host's switch, deployed alone: the median lifecycle time in OneAtATime waves.
    pub single_host_ms: Option<i64>,
    /// Answer time at the balancer from the start of the load to the first wave: p99, max (ms).
    pub baseline_p99_ms: i64,
    pub baseline_max_ms: i64,
    /// t = 0 of the pictures (unix ms): the start of the load.
    pub t0_ms: i64,
    pub end_ms: i64,
}

/// The median (the upper one of an even count); None when empty.
fn median(mut v: Vec<i64>) -> Option<i64> {
    v.sort_unstable();
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// p99 and max of the answer times of the requests in [from, to) (0, 0 when none).
fn answer_times(log: &BalancerLog, from: i64, to: i64) -> (i64, i64) {
    let mut t: Vec<i64> = log
        .requests
        .iter()
        .filter(|r| r.t_ms >= from && r.t_ms < to && r.ta_ms >= 0)
        .map(|r| r.ta_ms)
        .collect();
    if t.is_empty() {
        return (0, 0);
    }
    t.sort_unstable();
    // Nearest rank: the smallest answer time with at least 99 % of the answers at or below it.
    let rank = (t.len() * 99).div_ceil(100);
    (t[rank.saturating_sub(1)], t[t.len() - 1])
}

/// The report, from the run folder's files parsed: each wave's hosts, requests and answer
/// times, the balancer's failures and the clients' counts, the baseline before the first
/// wave, and one host's switch time.
pub fn analyse(
    settings: Settings,
    events: &[Event],
    log: &BalancerLog,
    stats: &[(String, u64, u64, u64)],
    summary: &Summary,
) -> Result<Fleet> {
    let at = |name: &str, wave: &str| {
        events
            .iter()
            .find(|e| e.event == name && e.wave == wave)
            .map(|e| e.t_ms)
    };
    let t0 = events
        .iter()
        .find(|e| e.event == "load-start")
        .map(|e| e.t_ms)
        .context("events.tsv has no load-start")?;
    let end = events
        .iter()
        .find(|e| e.event == "load-end")
        .map(|e| e.t_ms)
        .unwrap_or_else(|| log.requests.last().map_or(t0, |r| r.t_ms));
    let starts: Vec<&Event> = events.iter().filter(|e| e.event == "wave-start").collect();
    let mut waves = Vec::new();
    for (n, s) in starts.iter().enumerate() {
        let id = &s.wave;
        let wave_end = at("wave-end", id).with_context(|| format!("wave {id} has no end"))?;
        let until = starts.get(n + 1).map_or(end, |next| next.t_ms);
        let mut hosts = Vec::new();
        for h in 1..=settings.hosts {
            let of = |name: &str| {
                events
                    .iter()
                    .find(|e| e.event == name && e.wave == *id && e.host == h)
            };
            let (Some(a), Some(b)) = (of("deploy-start"), of("deploy-end")) else {
                bail!("wave {id}: host {h} has no deploy-start/deploy-end");
            };
            hosts.push(HostWave {
                host: h,
                deploy_ms: b.t_ms - a.t_ms,
                result: b.detail.clone(),
                release_after: of("release").map(|e| e.detail.clone()).unwrap_or_default(),
            });
        }
        let (p99_ms, max_ms) = answer_times(log, s.t_ms, wave_end);
        let in_wave: Vec<&Request> = log
            .requests
            .iter()
            .filter(|r| r.t_ms >= s.t_ms && r.t_ms < until)
            .collect();
        waves.push(Wave {
            id: id.clone(),
            name: s.detail.clone(),
            wall_ms: wave_end - s.t_ms,
            expected: events
                .iter()
                .find(|e| e.event == "expect" && e.wave == *id)
                .map(|e| e.detail.clone())
                .unwrap_or_default(),
            hosts,
            requests: in_wave.len() as u64,
            failed: in_wave.iter().filter(|r| r.failed()).count() as u64,
            p99_ms,
            max_ms,
        });
    }
    let failures: Vec<&Request> = log.requests.iter().filter(|r| r.failed()).collect();
    let (baseline_p99_ms, baseline_max_ms) = answer_times(log, t0, starts.first().map_or(end, |s| s.t_ms));
    let single_host_ms = median(
        waves
            .iter()
            .filter(|w| w.one_at_a_time() && !w.broken())
            .flat_map(|w| w.hosts.iter().map(|h| h.deploy_ms))
            .collect(),
    );
    Ok(Fleet {
        settings,
        balancer_requests: log.requests.len() as u64,
        balancer_failed: failures.len() as u64,
        balancer_failures: failures
            .iter()
            .take(20)
            .map(|r| {
                format!(
                    "t={:.3} s host {} status {} termination {} release {}",
                    (r.t_ms - t0) as f64 / 1e3,
                    r.host,
                    r.status,
                    r.termination,
                    r.release
                )
            })
            .collect(),
        clients: summary
            .kinds()
            .into_iter()
            .map(|(k, n, f)| (k.to_string(), n, f))
            .collect(),
        failed_checks: log.failed_checks.clone(),
        unlogged_errors: stats.iter().filter(|s| s.1 + s.2 + s.3 > 0).cloned().collect(),
        hosts_down: log.down.clone(),
        single_host_ms,
        baseline_p99_ms,
        baseline_max_ms,
        waves,
        t0_ms: t0,
        end_ms: end,
    })
}

/// Milliseconds as "N.N s".
fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1e3)
}

#[cfg(test)]
mod tests;
