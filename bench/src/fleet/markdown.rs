//! The fleet report as markdown: the settings in a sentence, one table row per wave
//! (wall time, lifecycle per host, requests and failures at the balancer, answer times, what
//! every host serves after it), the clients' counts, the failures and HAProxy's lines, and
//! the verdict; then the time table — the waves against one host's switch, and the same
//! deployment configurations extrapolated to CodeDeploy's unscaled defaults for 8 and 100
//! hosts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Fleet, median, secs};

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
}
