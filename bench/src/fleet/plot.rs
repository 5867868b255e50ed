//! The fleet report's picture, as a gnuplot script and its data files: requests and failures
//! per second at the balancer above, and below, per host, the release it served over time,
//! its lifecycle (deploy-local) and the time it was out of rotation, with each wave's start
//! marked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::{BalancerLog, Event, Fleet};

impl Fleet {
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
