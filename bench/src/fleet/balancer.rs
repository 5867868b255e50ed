//! What HAProxy saw during scripts/fleet: haproxy.log (one line per request through the
//! balancer, and HAProxy's own lines for failed health checks and hosts marked down) and
//! stat-end.csv (`show stat` at the end: the errors per host it counted but did not log as a
//! request). A request is a failure of the service when the client got a 5xx or a
//! connection the server or the balancer ended; the load tools stopping is not.

use anyhow::{Context, Result};

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

/// Reads haproxy.log: `unix_ms host status termination ta_ms {X-Release}` per request, and
/// HAProxy's lines about failed health checks and hosts going down.
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

#[cfg(test)]
mod tests;
