//! The checks of `report fleet --expect`, which make scripts/fleet pass or fail: traffic in
//! every wave and no failed request, at the balancer or at the clients; no error the balancer
//! counted without logging it, no failed health check, no host marked down; after each wave
//! every host serves what it should (a broken release rejected everywhere), and no host's
//! lifecycle waited for the idle hold ([`LIFECYCLE_BOUND_MS`]).

use super::{Fleet, LIFECYCLE_BOUND_MS, secs};

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
}
