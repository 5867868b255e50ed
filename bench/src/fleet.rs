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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::data::Summary;

/// One request as the balancer logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub t_ms: i64,
    pub host: String,
    pub status: i32,
    pub termination: String,
    /// Time to the whole answer (HAProxy's `%Ta`), ms.
    pub ta_ms: i64,
    pub release: String,
}

impl Request {
    /// A request the client saw fail: a 5xx, or a connection the server or the balancer ended.
    /// Client aborts (`C…`, the load tools stopping) are not failures of the service.
    pub fn failed(&self) -> bool {
        let first = self.termination.chars().next().unwrap_or('-');
        self.status >= 500 || "SPRIDLKs".contains(first) || (self.status < 0 && first != 'C')
    }
}

/// The balancer's log: requests, and HAProxy's lines about failed checks and hosts going down.
#[derive(Debug, Default)]
pub struct BalancerLog {
    pub requests: Vec<Request>,
    pub failed_checks: Vec<String>,
    pub down: Vec<String>,
}

pub fn parse_log(text: &str) -> BalancerLog {
    let mut log = BalancerLog::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let request = (f.len() >= 5)
            .then(|| {
                Some((
                    f[0].parse::<i64>().ok()?,
                    f[2].parse::<i32>().ok()?,
                    f[4].parse::<i64>().ok()?,
                ))
            })
            .flatten();
        if let Some((t_ms, status, ta_ms)) = request {
            let release = f
                .get(5)
                .map(|r| r.trim_matches(|c| c == '{' || c == '}').to_string())
                .unwrap_or_default();
            log.requests.push(Request {
                t_ms,
                host: f[1].to_string(),
                status,
                termination: f[3].to_string(),
                ta_ms,
                release,
            });
        } else if line.contains("Health check for server") && line.contains("failed") {
            log.failed_checks.push(line.to_string());
        } else if line.contains(" is DOWN") {
            log.down.push(line.to_string());
        }
    }
    log
}

/// Errors the balancer counted per host without logging a failed request, from `show stat`:
/// (host, connect errors `econ`, response errors `eresp`, server aborts `srv_abrt`). HAProxy
/// closes the client's keep-alive connection when the host closes a pooled connection under a
/// request, and logs nothing for it; the client sees the failure.
pub fn parse_stats(csv: &str) -> Result<Vec<(String, u64, u64, u64)>> {
    let mut lines = csv.lines();
    let header = lines.next().unwrap_or_default();
    let cols: Vec<&str> = header.trim_start_matches(['#', ' ']).split(',').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .with_context(|| format!("stat-end.csv (HAProxy's show stat) has no {name} column: {header}"))
    };
    let (px, sv, econ, eresp, abrt) = (
        col("pxname")?,
        col("svname")?,
        col("econ")?,
        col("eresp")?,
        col("srv_abrt")?,
    );
    Ok(lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (f.get(px) == Some(&"hosts") && !matches!(f.get(sv), Some(&"BACKEND") | None))
                .then(|| (f[sv].to_string(), n(econ), n(eresp), n(abrt)))
        })
        .collect())
}

/// One line of events.tsv.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub t_ms: i64,
    pub event: String,
    pub host: u32,
    pub wave: String,
    pub detail: String,
}

pub fn parse_events(text: &str) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.splitn(5, '\t').collect();
        if f.len() < 4 {
            bail!(
                "events.tsv line {}: expected 5 tab-separated fields: {line}",
                n + 1
            );
        }
        out.push(Event {
            t_ms: f[0]
                .parse()
                .with_context(|| format!("events.tsv line {}: time", n + 1))?,
            event: f[1].to_string(),
            host: f[2]
                .parse()
                .with_context(|| format!("events.tsv line {}: host", n + 1))?,
            wave: f[3].to_string(),
            detail: f.get(4).unwrap_or(&"").to_string(),
        });
    }
    out.sort_by_key(|e| e.t_ms);
    Ok(out)
}

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

#[derive(Debug, Clone, Default, Serialize)]
pub struct Settings {
    pub hosts: u32,
    pub scale: u32,
    pub check_interval_s: u32,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub deregistration_delay_s: u32,
    pub ab: u32,
    pub wrk: u32,
    pub rate: u32,
}

pub fn parse_settings(text: &str) -> Result<Settings> {
    let map: BTreeMap<&str, u32> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k.trim(), v.trim().parse().ok()?)))
        .collect();
    let get = |k: &str| {
        map.get(k)
            .copied()
            .with_context(|| format!("settings.env has no {k}="))
    };
    Ok(Settings {
        hosts: get("hosts")?,
        scale: get("scale")?,
        check_interval_s: get("check_interval_s")?,
        healthy_threshold: get("healthy_threshold")?,
        unhealthy_threshold: get("unhealthy_threshold")?,
        deregistration_delay_s: get("deregistration_delay_s")?,
        ab: get("ab")?,
        wrk: get("wrk")?,
        rate: get("rate")?,
    })
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

fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1e3)
}

/// A duration in seconds as "N s" / "N min" / "N h".
fn human(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

impl Fleet {
    /// The checks of `--expect`: (passed, what).
    pub fn verdict(&self) -> Vec<(bool, String)> {
        let client_failed: u64 = self.clients.iter().map(|c| c.2).sum();
        let quiet: Vec<&str> = self
            .waves
            .iter()
            .filter(|w| w.requests == 0)
            .map(|w| w.id.as_str())
            .collect();
        let mut v = vec![
            (
                self.balancer_requests > 0 && quiet.is_empty(),
                format!(
                    "traffic through the balancer in every wave{}",
                    if quiet.is_empty() {
                        String::new()
                    } else {
                        format!(": none in {}", quiet.join(", "))
                    }
                ),
            ),
            (
                self.balancer_failed == 0,
                format!(
                    "no failed request at the balancer: {} of {}",
                    self.balancer_failed, self.balancer_requests
                ),
            ),
            (
                client_failed == 0,
                format!("no failed request at the clients: {client_failed}"),
            ),
            (
                self.unlogged_errors.is_empty(),
                format!(
                    "no connection error or server abort counted by the balancer: {}",
                    if self.unlogged_errors.is_empty() {
                        "none".to_string()
                    } else {
                        self.unlogged_errors
                            .iter()
                            .map(|(h, c, r, a)| format!("{h}: econ {c}, eresp {r}, srv_abrt {a}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    }
                ),
            ),
            (
                self.failed_checks.is_empty(),
                format!("no failed health check: {}", self.failed_checks.len()),
            ),
            (
                self.hosts_down.is_empty(),
                format!("no host marked down: {}", self.hosts_down.len()),
            ),
        ];
        for w in &self.waves {
            let wrong: Vec<String> = w
                .hosts
                .iter()
                .filter(|h| h.release_after != w.expected)
                .map(|h| format!("h{} answers '{}'", h.host, h.release_after))
                .collect();
            v.push((
                wrong.is_empty(),
                format!(
                    "after {} every host serves {}{}",
                    w.id,
                    w.expected,
                    if wrong.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", wrong.join(", "))
                    }
                ),
            ));
            let unexpected: Vec<String> = w
                .hosts
                .iter()
                .filter(|h| (h.result == "ok") == w.broken())
                .map(|h| format!("h{}: {}", h.host, h.result))
                .collect();
            v.push((
                unexpected.is_empty(),
                format!(
                    "{} {} on every host{}",
                    w.id,
                    if w.broken() { "was rejected" } else { "deployed" },
                    if unexpected.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", unexpected.join("; "))
                    }
                ),
            ));
            // A retired instance keeps the balancer's idle pooled connections for the idle
            // hold (drain.idle_hold, 60 s by default) after the hooks are done: a lifecycle
            // anywhere near the hold means a hook waited for it.
            let slow: Vec<String> = w
                .hosts
                .iter()
                .filter(|h| h.deploy_ms >= LIFECYCLE_BOUND_MS)
                .map(|h| format!("h{}: {}", h.host, secs(h.deploy_ms)))
                .collect();
            v.push((
                slow.is_empty(),
                format!(
                    "{}: no host's lifecycle waited for the idle hold (each under {}){}",
                    w.id,
                    secs(LIFECYCLE_BOUND_MS),
                    if slow.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", slow.join(", "))
                    }
                ),
            ));
        }
        v
    }

    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## make fleet: {} hosts behind HAProxy, deployed in waves under load\n",
            s.hosts
        );
        let _ = writeln!(
            md,
            "Each host a real systemd sandbox serving 127.0.1.i, deployed by `deploy-local` (the agent's \
             lifecycle). HAProxy: round robin, health check `GET /healthz` every {} ms, unhealthy after {}, \
             healthy after {}, no retries, no redispatch. Load through the balancer: `ab -r -c {}`, `wrk -c {}`, \
             a probe of {} new connections/s. Times scaled down {}× from the target group's defaults \
             (interval {} s, deregistration delay {} s → {} ms).\n",
            s.check_interval_s * 1000 / s.scale,
            s.unhealthy_threshold,
            s.healthy_threshold,
            s.ab,
            s.wrk,
            s.rate,
            s.scale,
            s.check_interval_s,
            s.deregistration_delay_s,
            s.deregistration_delay_s * 1000 / s.scale
        );
        md.push_str(
            "| wave | wall time | lifecycle per host, median (max) | result | requests at the balancer | failed | answer time p99 / max | every host serves |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for w in &self.waves {
            let times: Vec<i64> = w.hosts.iter().map(|h| h.deploy_ms).collect();
            let ok = w.hosts.iter().filter(|h| h.result == "ok").count();
            let mut after: BTreeMap<&str, usize> = BTreeMap::new();
            for h in &w.hosts {
                *after.entry(h.release_after.as_str()).or_default() += 1;
            }
            let _ = writeln!(
                md,
                "| {} {} | {} | {} ({}) | {} of {} deployed | {} | {} | {} / {} ms | {} |",
                w.id,
                w.name,
                secs(w.wall_ms),
                secs(median(times.clone()).unwrap_or(0)),
                secs(times.iter().copied().max().unwrap_or(0)),
                ok,
                w.hosts.len(),
                w.requests,
                w.failed,
                w.p99_ms,
                w.max_ms,
                after
                    .iter()
                    .map(|(r, n)| format!("{} ({n})", if r.is_empty() { "nothing" } else { r }))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(
            md,
            "\nAnswer time at the balancer before the first wave (the baseline): p99 {} ms, max {} ms.",
            self.baseline_p99_ms, self.baseline_max_ms
        );
        let _ = writeln!(
            md,
            "\n**At the balancer:** {} requests, {} failed. **Health checks:** {} failed, {} hosts marked down.\n",
            self.balancer_requests,
            self.balancer_failed,
            self.failed_checks.len(),
            self.hosts_down.len()
        );
        md.push_str("| client | requests | failed |\n|---|---|---|\n");
        for (k, n, f) in &self.clients {
            let _ = writeln!(md, "| {k} | {n} | {f} |");
        }
        for (title, lines) in [
            ("Failed requests (first 20)", &self.balancer_failures),
            ("Failed health checks", &self.failed_checks),
            ("Hosts marked down", &self.hosts_down),
        ] {
            if !lines.is_empty() {
                let _ = writeln!(md, "\n{title}:\n\n```\n{}\n```", lines.join("\n"));
            }
        }
        let rejected: Vec<String> = self
            .waves
            .iter()
            .filter(|w| w.broken())
            .flat_map(|w| {
                w.hosts
                    .iter()
                    .map(move |h| format!("{} h{}: {}", w.id, h.host, h.result))
            })
            .take(3)
            .collect();
        if !rejected.is_empty() {
            let _ = writeln!(
                md,
                "\nThe broken release, as the hooks rejected it (first 3 hosts):\n\n```\n{}\n```",
                rejected.join("\n")
            );
        }
        md.push_str(&self.time_table());
        md.push_str("\n### Verdict\n\n");
        for (ok, what) in self.verdict() {
            let _ = writeln!(md, "- {} {what}", if ok { "PASS" } else { "FAIL" });
        }
        md
    }

    /// The waves' time against one host's, and extrapolated to CodeDeploy's unscaled defaults.
    fn time_table(&self) -> String {
        let s = &self.settings;
        let mut md = String::new();
        let Some(one) = self.single_host_ms else {
            return md;
        };
        let _ = writeln!(
            md,
            "\n### Time\n\nOne host's switch, deployed alone (median lifecycle in the OneAtATime wave): **{}**.",
            secs(one)
        );
        for w in self.waves.iter().filter(|w| w.all_at_once()) {
            let _ = writeln!(
                md,
                "{} {}: {} for {} hosts at once = **{:.2}×** one host's switch (goal ≤ 2×).",
                w.id,
                w.name,
                secs(w.wall_ms),
                w.hosts.len(),
                w.wall_ms as f64 / one as f64
            );
        }
        // CodeDeploy with load-balancer integration, per batch: BlockTraffic waits for the
        // deregistration delay, the lifecycle runs, AllowTraffic waits until the target group's
        // health checks pass (up to healthy threshold × interval).
        let per_batch = s.deregistration_delay_s as f64
            + one as f64 / 1e3
            + (s.healthy_threshold * s.check_interval_s) as f64;
        let all_at_once = self
            .waves
            .iter()
            .filter(|w| w.all_at_once() && !w.broken() && !w.load_balancer_step())
            .map(|w| w.wall_ms as f64 / 1e3)
            .next()
            .unwrap_or(one as f64 / 1e3);
        let _ = writeln!(
            md,
            "\nExtrapolated to CodeDeploy's defaults (deregistration delay {} s; health check every {} s, healthy \
             after {}), per batch: {} s + the lifecycle ({:.1} s) + up to {} s = {:.0} s. AllAtOnce without \
             traffic blocking takes the measured wave (hosts switch independently; here they shared 2 cores). \
             CodeDeploy's own polling between lifecycle events is not included.\n",
            s.deregistration_delay_s,
            s.check_interval_s,
            s.healthy_threshold,
            s.deregistration_delay_s,
            one as f64 / 1e3,
            s.healthy_threshold * s.check_interval_s,
            per_batch
        );
        md.push_str("| deployment configuration | 8 hosts | 100 hosts |\n|---|---|---|\n");
        // (configuration, time for 8 hosts, time for 100 hosts), in seconds.
        let rows = [
            (
                "OneAtATime + load balancer (the usual setup)",
                8.0 * per_batch,
                100.0 * per_batch,
            ),
            ("HalfAtATime + load balancer", 2.0 * per_batch, 2.0 * per_batch),
            (
                "AllAtOnce, no traffic blocking (these hooks)",
                all_at_once,
                all_at_once,
            ),
        ];
        for (name, eight, hundred) in rows {
            let _ = writeln!(md, "| {name} | {} | {} |", human(eight), human(hundred));
        }
        md
    }

    /// Requests and failures per second at the balancer; per host, the release it served
    /// (a point per 250 ms) and its lifecycle (a bar).
    pub fn gnuplot_script(
        &self,
        log: &BalancerLog,
        events: &[Event],
        png: &Path,
        work: &Path,
    ) -> Result<String> {
        let t = |ms: i64| (ms - self.t0_ms) as f64 / 1e3;
        let mut per_s: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
        let mut host_rel: BTreeMap<(u32, i64), BTreeMap<String, u64>> = BTreeMap::new();
        let mut releases: Vec<String> = Vec::new();
        for r in &log.requests {
            if r.t_ms < self.t0_ms || r.t_ms > self.end_ms {
                continue;
            }
            let e = per_s.entry((r.t_ms - self.t0_ms) / 1000).or_default();
            e.0 += 1;
            e.1 += r.failed() as u64;
            if let Some(h) = r.host.strip_prefix('h').and_then(|h| h.parse::<u32>().ok())
                && !r.release.is_empty()
            {
                *host_rel
                    .entry((h, (r.t_ms - self.t0_ms) / 250))
                    .or_default()
                    .entry(r.release.clone())
                    .or_default() += 1;
                if !releases.contains(&r.release) {
                    releases.push(r.release.clone());
                }
            }
        }
        let mut rate = String::new();
        for (s, (n, f)) in &per_s {
            let _ = writeln!(rate, "{s} {n} {f}");
        }
        let mut served = String::new();
        for ((h, bucket), counts) in &host_rel {
            let (rel, _) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
            let idx = releases.iter().position(|r| r == rel).unwrap() + 1;
            let _ = writeln!(served, "{:.2} {h} {idx}", *bucket as f64 / 4.0);
        }
        let bars = spans(events, "deploy-start", "deploy-end", -0.3, &t);
        let out_of_rotation = spans(events, "deregister", "register", 0.3, &t);
        let files = [
            ("rate.dat", rate),
            ("served.dat", served),
            ("lifecycle.dat", bars),
            ("rotation.dat", out_of_rotation),
        ];
        for (name, text) in &files {
            // gnuplot refuses an empty data file: one point outside the plot instead.
            let text = if text.is_empty() { "-1 -1 0\n" } else { text };
            std::fs::write(work.join(name), text).with_context(|| format!("write {name}"))?;
        }
        let p = |name: &str| work.join(name).display().to_string();
        let mut waves = String::new();
        for e in events.iter().filter(|e| e.event == "wave-start") {
            let _ = writeln!(
                waves,
                "set label '{} {}' at {:.2}, graph 0.97 left offset 0.5,0 font ',9'",
                e.wave,
                e.detail.replace('\'', ""),
                t(e.t_ms)
            );
            let _ = writeln!(
                waves,
                "set arrow from {:.2}, graph 0 to {:.2}, graph 1 nohead dt 2 lc rgb '#888888'",
                t(e.t_ms),
                t(e.t_ms)
            );
        }
        let keys: String = releases
            .iter()
            .enumerate()
            .map(|(i, r)| format!(", NaN with points pt 5 ps 1.5 lc {} title 'serves {r}'", i + 1))
            .collect();
        let xmax = t(self.end_ms);
        Ok(format!(
            "set terminal pngcairo size 1400,900 font 'sans,10'\nset output '{png}'\n\
             set multiplot layout 2,1 title 'make fleet: {hosts} hosts behind HAProxy — waves under load'\n\
             set xrange [0:{xmax:.1}]\nset xlabel 'time (s)'\nset key outside right\nset lmargin 12\nset rmargin 30\n{waves}\
             set ylabel 'requests per second at the balancer'\nset yrange [0:*]\nset offsets 0, 0, graph 0.12, 0\n\
             plot '{rate}' using 1:2 with steps lw 1.5 lc rgb '#1f77b4' title 'answered', \
             '{rate}' using 1:3 with impulses lw 3 lc rgb '#d62728' title 'failed'\n\
             unset label\nset offsets 0, 0, 0, 0\nset ylabel 'host'\nset yrange [0.3:{ytop:.1}]\nset ytics 1\n\
             plot '{served}' using 1:2:3 with points pt 5 ps 0.6 lc variable notitle{keys}, \
             '{lifecycle}' using 1:2:3:(0) with vectors nohead lw 4 lc rgb 'black' title 'lifecycle (deploy-local)', \
             '{rotation}' using 1:2:3:(0) with vectors nohead lw 2 lc rgb '#999999' title 'out of rotation'\n\
             unset multiplot\n",
            png = png.display(),
            hosts = self.settings.hosts,
            rate = p("rate.dat"),
            served = p("served.dat"),
            lifecycle = p("lifecycle.dat"),
            rotation = p("rotation.dat"),
            ytop = self.settings.hosts as f64 + 0.7,
        ))
    }
}

/// Data lines `start_s  y  length_s` for gnuplot's vectors: each `start` event paired with the
/// `end` event of the same wave and host, drawn at the host's row plus `dy`.
fn spans(events: &[Event], start: &str, end: &str, dy: f64, t: &dyn Fn(i64) -> f64) -> String {
    let mut out = String::new();
    for e in events.iter().filter(|e| e.event == start) {
        if let Some(to) = events
            .iter()
            .find(|x| x.event == end && x.wave == e.wave && x.host == e.host)
        {
            let _ = writeln!(
                out,
                "{:.3} {:.2} {:.3}",
                t(e.t_ms),
                e.host as f64 + dy,
                t(to.t_ms) - t(e.t_ms)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
