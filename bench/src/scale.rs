//! `make bench-scale`: what a switch costs as the work in flight grows. Each step is one
//! sandbox with N WebSockets and K keep-alive clients open and a paced probe, switched by the
//! hooks; `scripts/bench-scale` writes the step's facts (`step.json`: sizes, the kernel's
//! accept-queue counters before and after, each switch's duration, the hooks' own work and the RSS
//! of the old and new instance) beside loadgen's run folder, and this module turns the steps
//! into one table and a picture of the reconnects at the largest step.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::data::{Sample, Summary, read_samples};
use crate::stats::{LatencyStats, fmt_ms, latency_stats};

/// What the script measured around one switch.
#[derive(Debug, Clone, Deserialize)]
pub struct SwitchFacts {
    pub ok: bool,
    pub took_ms: f64,
    /// The four hooks' own work (their own timing: not waiting on the app or systemd).
    pub own_ms: f64,
    /// VmRSS of the serving instance just before the switch and of the new one just after.
    pub rss_old_kib: u64,
    pub rss_new_kib: u64,
}

/// `step.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct StepFacts {
    pub ws: u64,
    pub keepalive: u64,
    pub strategy: String,
    /// `TcpExt: ListenOverflows` and `ListenDrops` before the load started and after it ended.
    pub listen_overflows: [u64; 2],
    pub listen_drops: [u64; 2],
    pub switches: Vec<SwitchFacts>,
    /// The release every WebSocket should end on.
    pub final_release: String,
}

/// One step, summarised.
#[derive(Debug, Clone)]
pub struct Step {
    pub facts: StepFacts,
    pub dir: PathBuf,
    pub summary: Summary,
    pub failed_requests: u64,
    pub abnormal_ws: u64,
    pub reconnect: Option<LatencyStats>,
    /// WebSocket clients whose last session was with the final release.
    pub on_final: u64,
    pub probe_baseline: Option<LatencyStats>,
    pub probe_switch: Option<LatencyStats>,
}

/// Reads a step folder: `step.json`, `summary.json`, `samples.csv`.
pub fn read_step(dir: &Path) -> Result<Step> {
    let facts: StepFacts = serde_json::from_str(
        &std::fs::read_to_string(dir.join("step.json"))
            .with_context(|| format!("{}/step.json", dir.display()))?,
    )
    .with_context(|| format!("{}/step.json", dir.display()))?;
    let summary = Summary::read(&dir.join("summary.json"))?;
    let samples = read_samples(&dir.join("samples.csv"))?;
    Ok(summarise(facts, dir, summary, &samples))
}

/// The probe's latency before the first switch (once every client is connected), and inside
/// the switch windows.
fn summarise(facts: StepFacts, dir: &Path, summary: Summary, samples: &[Sample]) -> Step {
    let windows: Vec<(f64, f64)> = summary
        .marks
        .iter()
        .filter(|m| m.name == "switch-start")
        .map(|start| {
            let end = summary
                .marks
                .iter()
                .find(|m| m.name == "switch-end" && m.label == start.label && m.t_ms >= start.t_ms)
                .map_or(summary.duration_ms, |m| m.t_ms);
            (start.t_ms, end)
        })
        .collect();
    let first = windows.first().map_or(summary.duration_ms, |w| w.0);
    // From the moment every client is connected (the ramp of thousands of WebSockets is not
    // the steady state a switch is compared with), when the script marked it.
    let steady = summary
        .marks
        .iter()
        .find(|m| m.name == crate::report::STEADY_MARK)
        .map_or(0.0, |m| m.t_ms);
    let ok = |s: &&Sample| s.ok;
    let probe_baseline = latency_stats(
        samples
            .iter()
            .filter(ok)
            .filter(|s| s.t_ms >= steady && s.end_ms() < first)
            .map(|s| s.latency_ms),
    );
    let probe_switch = latency_stats(
        samples
            .iter()
            .filter(ok)
            .filter(|s| windows.iter().any(|w| s.t_ms >= w.0 && s.t_ms < w.1))
            .map(|s| s.latency_ms),
    );
    let ws = summary.ws.clone().unwrap_or_default();
    let failed_requests = summary.probe.failed + summary.keepalive.as_ref().map_or(0, |k| k.failed);
    Step {
        abnormal_ws: ws.failed(),
        reconnect: latency_stats(ws.reconnects.iter().map(|r| r.1)),
        on_final: ws.last_releases.get(&facts.final_release).copied().unwrap_or(0),
        failed_requests,
        probe_baseline,
        probe_switch,
        dir: dir.to_path_buf(),
        facts,
        summary,
    }
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

/// The table of every step.
pub fn markdown(steps: &[Step]) -> String {
    let mut t = String::from(
        "| WebSockets | keep-alive | strategy | switches (ok) | failed requests (probe + keep-alive) | abnormal WebSocket closes | \
         reconnect p50 / p99 / max (ms) | on the new release | probe p99 baseline → switches (ms) | accept-queue overflows / drops | \
         switch took, mean (max) ms | hooks' own work, mean (ms) | RSS old → new (MiB) |\n|---:|---:|---|---|---:|---:|---|---|---|---|---|---|---|\n",
    );
    for s in steps {
        let f = &s.facts;
        let n = f.switches.len().max(1) as f64;
        let took: Vec<f64> = f.switches.iter().map(|x| x.took_ms).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
        let own: Vec<f64> = f.switches.iter().map(|x| x.own_ms).collect();
        let rss_old = f.switches.iter().map(|x| x.rss_old_kib).max().unwrap_or(0);
        let rss_new = f.switches.iter().map(|x| x.rss_new_kib).max().unwrap_or(0);
        let clients = s.summary.ws.as_ref().map_or(0, |w| w.clients);
        t.push_str(&format!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} of {} | {} → {} | {} / {} | {:.0} ({:.0}) | {:.0} | {} → {} |\n",
            f.ws,
            f.keepalive,
            f.strategy,
            f.switches.len(),
            f.switches.iter().filter(|x| x.ok).count(),
            s.failed_requests,
            s.abnormal_ws,
            s.reconnect.map_or("–".into(), |r| r.triple()),
            s.on_final,
            clients,
            s.probe_baseline.map_or("–".into(), |p| fmt_ms(p.p99)),
            s.probe_switch.map_or("–".into(), |p| fmt_ms(p.p99)),
            f.listen_overflows[1].saturating_sub(f.listen_overflows[0]),
            f.listen_drops[1].saturating_sub(f.listen_drops[0]),
            mean(&took),
            took.iter().copied().fold(0.0, f64::max),
            mean(&own),
            mib(rss_old),
            mib(rss_new),
        ));
    }
    t
}

/// Whether a step met the bar of the large case: nothing failed, every WebSocket back on the
/// new release, reconnect p99 < 1 s and max < 2 s, no accept-queue overflow, probe p99 in the
/// switches within 2× its baseline.
pub fn verdict(s: &Step) -> Vec<String> {
    let mut bad = Vec::new();
    let f = &s.facts;
    if f.switches.iter().any(|x| !x.ok) {
        bad.push("a switch failed".into());
    }
    if s.failed_requests > 0 {
        bad.push(format!("{} requests failed", s.failed_requests));
    }
    if s.abnormal_ws > 0 {
        bad.push(format!("{} abnormal WebSocket closes", s.abnormal_ws));
    }
    let clients = s.summary.ws.as_ref().map_or(0, |w| w.clients);
    if s.on_final < clients {
        bad.push(format!(
            "{} of {clients} WebSockets on {}",
            s.on_final, f.final_release
        ));
    }
    if let Some(r) = s.reconnect
        && (r.p99 >= 1000.0 || r.max >= 2000.0)
    {
        bad.push(format!(
            "reconnect p99 {} ms, max {} ms",
            fmt_ms(r.p99),
            fmt_ms(r.max)
        ));
    }
    let overflows = f.listen_overflows[1].saturating_sub(f.listen_overflows[0]);
    if overflows > 0 {
        bad.push(format!("{overflows} accept-queue overflows"));
    }
    if let (Some(b), Some(w)) = (s.probe_baseline, s.probe_switch)
        && w.p99 > 2.0 * b.p99.max(1.0)
    {
        bad.push(format!(
            "probe p99 {} ms in the switches against {} ms",
            fmt_ms(w.p99),
            fmt_ms(b.p99)
        ));
    }
    bad
}

/// The probe's p99 in the switch windows over its steady baseline (a baseline under 1 ms counts
/// as 1 ms, as in [`verdict`]).
pub fn probe_ratio(s: &Step) -> Option<f64> {
    let (b, w) = (s.probe_baseline?, s.probe_switch?);
    Some(w.p99 / b.p99.max(1.0))
}

/// The verdict on the runs of the largest step (every step with the last step's sizes): one
/// line, then what each run that missed the bar missed. All runs must meet the bar.
pub fn largest_verdict(steps: &[Step]) -> (bool, String) {
    let Some(last) = steps.last() else {
        return (false, "no step".into());
    };
    let runs: Vec<&Step> = steps
        .iter()
        .filter(|s| s.facts.ws == last.facts.ws && s.facts.keepalive == last.facts.keepalive)
        .collect();
    let misses: Vec<(usize, Vec<String>)> = runs
        .iter()
        .enumerate()
        .map(|(i, s)| (i + 1, verdict(s)))
        .filter(|(_, bad)| !bad.is_empty())
        .collect();
    let mut text = format!(
        "Largest step ({} WebSockets, {} keep-alive), {} run(s) of {} switches: ",
        last.facts.ws,
        last.facts.keepalive,
        runs.len(),
        last.facts.switches.len()
    );
    if misses.is_empty() {
        text.push_str(
            "meets the bar in every run (0 failed, 0 abnormal, all on the new release, reconnect p99 < 1 s and max < \
             2 s, 0 accept-queue overflows, probe p99 within 2x)",
        );
    } else {
        text.push_str(&format!(
            "meets the bar in {} of {} runs",
            runs.len() - misses.len(),
            runs.len()
        ));
    }
    let ratios: Vec<f64> = runs.iter().filter_map(|s| probe_ratio(s)).collect();
    if let Some(sp) = crate::repeat::spread(&ratios) {
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        text.push_str(&format!(
            ".\nProbe p99 in the switches over its steady baseline, per run: {}; median {:.2} [{:.2} – {:.2}].",
            each.join(", "),
            sp.median,
            sp.min,
            sp.max
        ));
    }
    for (run, bad) in &misses {
        text.push_str(&format!("\n- run {run} misses: {}", bad.join("; ")));
    }
    (misses.is_empty(), text)
}

/// Reconnects completed per 100 ms over time at one step, and the switch marks, as a gnuplot
/// script drawing `png`.
pub fn gnuplot_script(step: &Step, png: &Path, work: &Path) -> Result<String> {
    let ws = step.summary.ws.clone().unwrap_or_default();
    let mut bins: std::collections::BTreeMap<i64, u64> = Default::default();
    for (closed_at, took) in &ws.reconnects {
        *bins
            .entry(((closed_at + took) / 100.0).floor() as i64)
            .or_default() += 1;
    }
    let data = work.join("reconnects.dat");
    let mut text = String::new();
    if let (Some(first), Some(last)) = (bins.keys().next(), bins.keys().next_back()) {
        for b in (first - 5)..=(last + 5) {
            text.push_str(&format!(
                "{:.1} {}\n",
                b as f64 / 10.0,
                bins.get(&b).copied().unwrap_or(0)
            ));
        }
    }
    std::fs::write(&data, text)?;
    let latency = work.join("latency.dat");
    let mut l = String::new();
    for (closed_at, took) in &ws.reconnects {
        l.push_str(&format!("{:.3} {:.1}\n", (closed_at + took) / 1e3, took));
    }
    std::fs::write(&latency, l)?;
    let marks: Vec<f64> = step
        .summary
        .marks
        .iter()
        .filter(|m| m.name.starts_with("switch-"))
        .map(|m| m.t_ms / 1e3)
        .collect();
    let mut arrows = String::new();
    if let (Some(first), Some(last)) = (marks.first(), marks.last()) {
        arrows.push_str(&format!("set xrange [{:.1}:{:.1}]\n", first - 1.0, last + 1.0));
    }
    for t in &marks {
        arrows.push_str(&format!(
            "set arrow from {t:.3}, graph 0 to {t:.3}, graph 1 nohead dt 2 lc rgb '#888888'\n"
        ));
    }
    Ok(format!(
        "set terminal pngcairo size 1200,700 font 'sans,10'\nset output '{}'\nset multiplot layout 2,1 title \
         '{} WebSockets, {} keep-alive clients: reconnects after each switch (dashed: switch start and end)'\n\
         set xlabel 'time (s)'\nset ylabel 'reconnects per 100 ms'\n{arrows}plot '{}' using 1:2 with steps lw 1.5 title 'reconnected'\n\
         set ylabel 'close → greeting from the new release (ms)'\nplot '{}' using 1:2 with dots title 'reconnect time'\nunset multiplot\n",
        png.display(),
        step.facts.ws,
        step.facts.keepalive,
        data.display(),
        latency.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Counts, Mark, WsCounts};

    #[test]
    fn a_step_is_summarised_against_the_bar() {
        let facts = StepFacts {
            ws: 2,
            keepalive: 1,
            strategy: "handoff".into(),
            listen_overflows: [10, 10],
            listen_drops: [3, 5],
            switches: vec![SwitchFacts {
                ok: true,
                took_ms: 900.0,
                own_ms: 60.0,
                rss_old_kib: 20480,
                rss_new_kib: 10240,
            }],
            final_release: "v2".into(),
        };
        let mark = |name: &str, t_ms: f64| Mark {
            t_ms,
            name: name.into(),
            label: "d-2".into(),
            attrs: Default::default(),
        };
        let mut ws = WsCounts {
            clients: 2,
            reconnects: vec![(1000.0, 40.0), (1100.0, 1500.0)],
            ..Default::default()
        };
        ws.last_releases.insert("v2".into(), 2);
        let summary = Summary {
            duration_ms: 3000.0,
            probe: Counts::default(),
            ws: Some(ws),
            marks: vec![
                mark(crate::report::STEADY_MARK, 300.0),
                mark("switch-start", 900.0),
                mark("switch-end", 2000.0),
            ],
            ..Default::default()
        };
        let sample = |t_ms: f64, latency_ms: f64| Sample {
            t_ms,
            latency_ms,
            ok: true,
            release: "v1".into(),
        };
        let samples = [sample(100.0, 1.0), sample(500.0, 2.0), sample(1000.0, 9.0)];
        let step = summarise(facts, Path::new("."), summary, &samples);
        let baseline = step.probe_baseline.unwrap();
        assert_eq!(
            (baseline.n, baseline.p99),
            (1, 2.0),
            "from the steady mark: the request at 500 ms, not the one at 100 ms"
        );
        assert_eq!(step.probe_switch.unwrap().max, 9.0);
        assert_eq!(step.on_final, 2);
        let bad = verdict(&step);
        assert!(bad.iter().any(|b| b.contains("probe p99 9")), "{bad:?}");
        // Nearest rank: the p99 of two reconnects is the slower one, 1.5 s.
        assert!(bad.iter().any(|b| b.contains("reconnect p99 1500 ms")), "{bad:?}");
        // Runs of the largest step: every run must meet the bar; the ratio per run, summarised.
        let mut good = step.clone();
        good.probe_switch = step.probe_baseline;
        good.reconnect = None;
        let (met, text) = largest_verdict(&[good.clone(), step.clone()]);
        assert!(!met, "{text}");
        assert!(
            text.contains("2 run(s) of 1 switches: meets the bar in 1 of 2 runs"),
            "{text}"
        );
        assert!(
            text.contains("per run: 1.00, 4.50; median 2.75 [1.00 – 4.50]"),
            "{text}"
        );
        assert!(text.contains("- run 2 misses: "), "{text}");
        assert!(largest_verdict(&[good]).0);
        let table = markdown(&[step]);
        assert!(table.contains("| 2 | 1 | handoff | 1 (1) | 0 | 0 |"), "{table}");
        assert!(table.contains("| 0 / 2 |"), "{table}");
        assert!(table.contains("| 20 → 10 |"), "{table}");
    }
}
