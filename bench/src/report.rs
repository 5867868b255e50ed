//! From a run's samples, marks and counts: baseline vs switch-window latencies, which release
//! served when, failures per client kind; rendered as markdown and as a gnuplot PNG.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::data::{Mark, Sample, Summary};
use crate::stats::{LatencyStats, fmt_ms, latency_stats};

/// A deployment window: a `NAME-start` mark and the next `NAME-end` mark with the same label.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub name: String,
    pub label: String,
    pub start_ms: f64,
    pub end_ms: f64,
    /// The start mark's attributes, overridden by the end mark's; `unfinished` if no end came.
    pub attrs: BTreeMap<String, String>,
}

impl Window {
    pub fn duration_ms(&self) -> f64 {
        self.end_ms - self.start_ms
    }

    /// `result=failed` on a mark, or a window that never ended.
    pub fn failed(&self) -> bool {
        self.attrs.get("result").is_some_and(|r| r != "ok") || self.attrs.contains_key("unfinished")
    }

    /// "d-2 → v2", or just the label.
    pub fn title(&self) -> String {
        let base = if self.label.is_empty() {
            self.name.clone()
        } else {
            self.label.clone()
        };
        match self.attrs.get("release") {
            Some(r) if *r != base => format!("{base} → {r}"),
            _ => base,
        }
    }

    /// A request overlaps the window if it was in flight at any time during it.
    pub fn overlaps(&self, s: &Sample) -> bool {
        s.t_ms <= self.end_ms && s.end_ms() >= self.start_ms
    }

    pub fn attr_f64(&self, key: &str) -> Option<f64> {
        self.attrs.get(key).and_then(|v| v.parse().ok())
    }
}

/// Pairs `X-start`/`X-end` marks (same X, same label) into windows, in start order. A start
/// without an end runs to `run_end_ms`.
pub fn windows(marks: &[Mark], run_end_ms: f64) -> Vec<Window> {
    let mut marks: Vec<&Mark> = marks.iter().collect();
    marks.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    let mut out = Vec::new();
    for (i, m) in marks.iter().enumerate() {
        let Some(name) = m.name.strip_suffix("-start") else {
            continue;
        };
        let end = marks[i + 1..]
            .iter()
            .find(|e| e.label == m.label && e.name.strip_suffix("-end") == Some(name));
        let mut attrs = m.attrs.clone();
        let end_ms = match end {
            Some(e) => {
                attrs.extend(e.attrs.clone());
                e.t_ms
            }
            None => {
                attrs.insert("unfinished".into(), "1".into());
                run_end_ms.max(m.t_ms)
            }
        };
        out.push(Window {
            name: name.to_string(),
            label: m.label.clone(),
            start_ms: m.t_ms,
            end_ms,
            attrs,
        });
    }
    out
}

/// Marks that are not part of a window (point events).
pub fn events(marks: &[Mark]) -> Vec<&Mark> {
    marks
        .iter()
        .filter(|m| !m.name.ends_with("-start") && !m.name.ends_with("-end"))
        .collect()
}

/// When one release answered the probe: first and last request start, and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseSpan {
    pub release: String,
    pub first_ms: f64,
    pub last_ms: f64,
    pub n: usize,
}

/// Per release, in order of first appearance (successful requests only; samples in time order
/// or not).
pub fn release_spans(samples: &[Sample]) -> Vec<ReleaseSpan> {
    let mut spans: Vec<ReleaseSpan> = Vec::new();
    for s in samples.iter().filter(|s| s.ok) {
        match spans.iter_mut().find(|r| r.release == s.release) {
            Some(r) => {
                r.first_ms = r.first_ms.min(s.t_ms);
                r.last_ms = r.last_ms.max(s.t_ms);
                r.n += 1;
            }
            None => spans.push(ReleaseSpan {
                release: s.release.clone(),
                first_ms: s.t_ms,
                last_ms: s.t_ms,
                n: 1,
            }),
        }
    }
    spans.sort_by(|a, b| a.first_ms.total_cmp(&b.first_ms));
    spans
}

/// The probe's view of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    pub window: Window,
    pub requests: usize,
    pub failed: usize,
    pub latency: Option<LatencyStats>,
    /// Which releases answered requests overlapping the window, with counts.
    pub releases: Vec<(String, usize)>,
    /// Failures of the other clients that know when they failed (keep-alive, WebSocket),
    /// within the window.
    pub other_failures: usize,
}

#[derive(Debug, Clone)]
pub struct Analysis {
    pub title: String,
    pub summary: Summary,
    /// Successful requests that ended before the first mark.
    pub baseline: Option<LatencyStats>,
    pub windows: Vec<WindowStats>,
    /// Every successful request overlapping any window, pooled.
    pub switching: Option<LatencyStats>,
    pub spans: Vec<ReleaseSpan>,
    /// The releases that answered in the last second of the run, with counts, and how many
    /// probe requests failed then.
    pub final_releases: Vec<(String, usize)>,
    pub final_failed: usize,
    pub run_end_ms: f64,
}

fn count_releases<'a>(samples: impl Iterator<Item = &'a Sample>) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = Vec::new();
    for s in samples.filter(|s| s.ok) {
        match v.iter_mut().find(|(r, _)| *r == s.release) {
            Some((_, n)) => *n += 1,
            None => v.push((s.release.clone(), 1)),
        }
    }
    v
}

/// The start of a run, when every client connects at once: not part of the baseline.
pub const WARMUP_MS: f64 = 500.0;

/// A mark taken once every client is connected (thousands of WebSockets take seconds to
/// open): the baseline starts there instead of after [`WARMUP_MS`].
pub const STEADY_MARK: &str = "steady";

pub fn analyse(title: &str, summary: &Summary, samples: &[Sample]) -> Analysis {
    let run_end_ms = samples.iter().map(|s| s.t_ms).fold(summary.duration_ms, f64::max);
    let steady = summary
        .marks
        .iter()
        .find(|m| m.name == STEADY_MARK)
        .map(|m| m.t_ms);
    let first_mark = summary
        .marks
        .iter()
        .filter(|m| m.name != STEADY_MARK)
        .map(|m| m.t_ms)
        .fold(f64::INFINITY, f64::min);
    // Skip the warm-up (every client connecting at once), unless the first mark comes before;
    // a `steady` mark (every client connected) says where it ends.
    let from = match steady {
        Some(t) => t,
        None if first_mark >= 2.0 * WARMUP_MS => WARMUP_MS,
        None => 0.0,
    };
    let baseline = latency_stats(
        samples
            .iter()
            .filter(|s| s.ok && s.t_ms >= from && s.end_ms() < first_mark)
            .map(|s| s.latency_ms),
    );
    let other_failure_times: Vec<f64> = summary
        .keepalive
        .iter()
        .flat_map(|c| c.failure_t_ms.iter().copied())
        .chain(summary.ws.iter().flat_map(|w| w.failure_t_ms.iter().copied()))
        .collect();
    let wins = windows(&summary.marks, run_end_ms);
    let windows: Vec<WindowStats> = wins
        .iter()
        .map(|w| {
            let inside: Vec<&Sample> = samples.iter().filter(|s| w.overlaps(s)).collect();
            WindowStats {
                window: w.clone(),
                requests: inside.len(),
                failed: inside.iter().filter(|s| !s.ok).count(),
                latency: latency_stats(inside.iter().filter(|s| s.ok).map(|s| s.latency_ms)),
                releases: count_releases(inside.iter().copied()),
                other_failures: other_failure_times
                    .iter()
                    .filter(|t| **t >= w.start_ms && **t <= w.end_ms)
                    .count(),
            }
        })
        .collect();
    let switching = latency_stats(
        samples
            .iter()
            .filter(|s| s.ok && wins.iter().any(|w| w.overlaps(s)))
            .map(|s| s.latency_ms),
    );
    let last_start = samples.iter().map(|s| s.t_ms).fold(f64::NEG_INFINITY, f64::max);
    let tail = || samples.iter().filter(move |s| s.t_ms >= last_start - 1000.0);
    Analysis {
        title: title.to_string(),
        summary: summary.clone(),
        baseline,
        windows,
        switching,
        spans: release_spans(samples),
        final_releases: count_releases(tail()),
        final_failed: tail().filter(|s| !s.ok).count(),
        run_end_ms,
    }
}

impl Analysis {
    /// The one release that answered every probe request of the last second, if so.
    pub fn final_release(&self) -> Option<&str> {
        match (self.final_releases.as_slice(), self.final_failed) {
            ([(r, n)], 0) if *n > 0 => Some(r),
            _ => None,
        }
    }

    pub fn total_failed(&self) -> u64 {
        self.summary.total_failed()
    }
}

fn secs(ms: f64) -> String {
    format!("{:.2} s", ms / 1000.0)
}

fn releases_text(r: &[(String, usize)]) -> String {
    if r.is_empty() {
        return "–".into();
    }
    r.iter()
        .map(|(rel, n)| format!("{} ({n})", if rel.is_empty() { "?" } else { rel }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn stat_cells(s: &Option<LatencyStats>) -> String {
    match s {
        Some(s) => format!("{} | {} | {}", fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.max)),
        None => "– | – | –".into(),
    }
}

fn client_rows(summary: &Summary) -> Vec<(String, String, String, String)> {
    let mut rows = Vec::new();
    let mut push = |kind: &str, c: &Option<crate::data::Counts>| {
        if let Some(c) = c {
            rows.push((
                kind.to_string(),
                c.requests.to_string(),
                c.failed.to_string(),
                c.detail.clone(),
            ));
        }
    };
    push("ab -r -c 10 (new connection per request)", &summary.ab);
    push("wrk -c 10 (keep-alive, no retry)", &summary.wrk);
    push("keep-alive clients (no retry)", &summary.keepalive);
    push(
        &format!("paced probe, {} req/s (new connection per request)", summary.rate),
        &Some(summary.probe.clone()),
    );
    push(
        "slow requests (/?sleep_ms, in flight at the switch)",
        &summary.slow,
    );
    if let Some(ws) = &summary.ws {
        rows.push((
            format!("WebSocket clients ({}; sessions)", ws.clients),
            ws.sessions.to_string(),
            ws.failed().to_string(),
            format!(
                "{} echoes; {} closed with 1012 (clean), other closes {:?}, {} abnormal; releases seen {}",
                ws.echoes,
                ws.closes_1012,
                ws.other_closes,
                ws.abnormal,
                ws.releases_seen.join(", ")
            ),
        ));
    }
    rows
}

fn deployment_line(w: &Window) -> String {
    let mut line = format!(
        "- **{}** at {}: {} in {:.0} ms",
        w.title(),
        secs(w.start_ms),
        if w.attrs.contains_key("unfinished") {
            "did not finish"
        } else if w.failed() {
            "FAILED"
        } else {
            "ok"
        },
        w.duration_ms()
    );
    if let (Some(took), Some(app), Some(systemd), Some(own)) = (
        w.attr_f64("hooks_ms"),
        w.attr_f64("app_ms"),
        w.attr_f64("systemd_ms"),
        w.attr_f64("own_ms"),
    ) {
        let _ = write!(
            line,
            " (the hooks took {took:.0} ms by their own timing: {app:.0} ms waiting on the app, {systemd:.0} ms on \
             systemd, {own:.0} ms own work)"
        );
    }
    if let Some(msg) = w.attrs.get("msg") {
        let _ = write!(line, " — {msg}");
    }
    line
}

/// The report of one run, as markdown.
pub fn markdown(a: &Analysis) -> String {
    let s = &a.summary;
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", a.title);
    let _ = writeln!(
        out,
        "{:.1} s of load against 127.0.0.1:{}; {} deployment window(s).\n",
        a.run_end_ms / 1000.0,
        s.port,
        a.windows.len()
    );
    let _ = writeln!(out, "### Requests per client kind\n");
    let _ = writeln!(
        out,
        "| client | requests | failed | detail |\n|---|---:|---:|---|"
    );
    for (k, r, f, d) in client_rows(s) {
        let _ = writeln!(out, "| {k} | {r} | {f} | {} |", d.replace('|', "/"));
    }
    let _ = writeln!(out, "\n**Failed requests, all clients: {}**\n", a.total_failed());

    let _ = writeln!(
        out,
        "### Probe latency (ms): baseline vs each deployment window\n\n\
         Baseline: requests that started after the first 0.5 s (warm-up) and ended before the \
         first mark. A window holds every request in \
         flight at any time between its start and end marks. Latency percentiles count \
         successful requests only.\n"
    );
    let _ = writeln!(
        out,
        "| period | duration | requests | failed | p50 | p99 | max | answered by (X-Release) |\n\
         |---|---:|---:|---:|---:|---:|---:|---|"
    );
    let base_n = a.baseline.map_or(0, |b| b.n);
    let _ = writeln!(
        out,
        "| baseline | – | {base_n} | – | {} | – |",
        stat_cells(&a.baseline)
    );
    for w in &a.windows {
        let _ = writeln!(
            out,
            "| {} {}{} | {:.0} ms | {} | {} | {} | {} |",
            w.window.name,
            w.window.title(),
            if w.window.failed() { " (failed)" } else { "" },
            w.window.duration_ms(),
            w.requests,
            w.failed,
            stat_cells(&w.latency),
            releases_text(&w.releases)
        );
    }

    let _ = writeln!(out, "\n### Which release served when (probe, X-Release)\n");
    let _ = writeln!(
        out,
        "| release | first request | last request | requests |\n|---|---:|---:|---:|"
    );
    for r in &a.spans {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            if r.release.is_empty() { "?" } else { &r.release },
            secs(r.first_ms),
            secs(r.last_ms),
            r.n
        );
    }
    let _ = writeln!(
        out,
        "\nIn the last second of the run: {}{}.",
        releases_text(&a.final_releases),
        if a.final_failed > 0 {
            format!(", {} failed", a.final_failed)
        } else {
            String::new()
        }
    );

    if !a.windows.is_empty() {
        let _ = writeln!(out, "\n### Deployments\n");
        for w in &a.windows {
            let _ = writeln!(out, "{}", deployment_line(&w.window));
        }
    }
    out
}

/// Mean and max of some values.
fn mean_max(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    Some((
        v.iter().sum::<f64>() / v.len() as f64,
        v.iter().copied().fold(f64::MIN, f64::max),
    ))
}

fn fail_cell(c: Option<(u64, u64)>) -> String {
    match c {
        Some((requests, failed)) => format!("{failed} / {requests}"),
        None => "–".into(),
    }
}

/// One row per run: the comparison table of `make bench`.
pub fn comparison_table(runs: &[Analysis]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| strategy | ab failed / req | wrk failed / req | keep-alive failed / req | probe failed / req | ws abnormal (1012 closes) | slow 2 s failed / req | probe p50 / p99 / max, baseline (ms) | probe p50 / p99 / max, switch windows (ms) | deploy duration mean / max | hooks (c: wall / app / systemd / own work, mean) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for a in runs {
        let s = &a.summary;
        let counts = |c: &Option<crate::data::Counts>| c.as_ref().map(|c| (c.requests, c.failed));
        let ws =
            s.ws.as_ref()
                .map(|w| format!("{} ({})", w.failed(), w.closes_1012))
                .unwrap_or_else(|| "–".into());
        let durations: Vec<f64> = a.windows.iter().map(|w| w.window.duration_ms()).collect();
        let duration = mean_max(&durations)
            .map(|(m, x)| format!("{m:.0} / {x:.0} ms"))
            .unwrap_or_else(|| "–".into());
        let hook = |k: &str| -> Vec<f64> { a.windows.iter().filter_map(|w| w.window.attr_f64(k)).collect() };
        let overhead = match (
            mean_max(&hook("hooks_ms")),
            mean_max(&hook("app_ms")),
            mean_max(&hook("systemd_ms")),
            mean_max(&hook("own_ms")),
        ) {
            (Some(t), Some(p), Some(d), Some(o)) => {
                format!(
                    "{:.0} / {:.0} / {:.0} / **{:.0} ms** (max {:.0})",
                    t.0, p.0, d.0, o.0, o.1
                )
            }
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            a.title,
            fail_cell(counts(&s.ab)),
            fail_cell(counts(&s.wrk)),
            fail_cell(counts(&s.keepalive)),
            fail_cell(Some((s.probe.requests, s.probe.failed))),
            ws,
            fail_cell(counts(&s.slow)),
            a.baseline.map(|b| b.triple()).unwrap_or_else(|| "–".into()),
            a.switching.map(|b| b.triple()).unwrap_or_else(|| "–".into()),
            duration,
            overhead
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The picture: gnuplot (pngcairo), one panel per run, latency over time on a log scale,
// points coloured by release, failures as red crosses, deployment windows shaded.

const COLOURS: &[&str] = &[
    "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2",
];

fn gp_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Colours per release, shared by every panel so that a release keeps its colour.
fn release_colours(runs: &[(&Analysis, &[Sample])]) -> BTreeMap<String, &'static str> {
    let mut map = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (a, _) in runs {
        for span in &a.spans {
            if !order.contains(&span.release) {
                order.push(span.release.clone());
            }
        }
    }
    for (i, r) in order.into_iter().enumerate() {
        map.insert(r, COLOURS[i % COLOURS.len()]);
    }
    map
}

/// Writes the data files and the gnuplot script for `runs` (one panel each) into `work`, and
/// returns the script.
pub fn gnuplot_script(runs: &[(&Analysis, &[Sample])], png: &Path, work: &Path) -> Result<String> {
    std::fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
    let colours = release_colours(runs);
    let all = runs.iter().flat_map(|(_, s)| s.iter());
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for s in all {
        if s.latency_ms > 0.0 {
            lo = lo.min(s.latency_ms);
        }
        hi = hi.max(s.latency_ms);
    }
    if !lo.is_finite() {
        (lo, hi) = (0.1, 10.0);
    }
    let ymin = 10f64.powf(lo.max(0.001).log10().floor());
    let ymax = 10f64.powf((hi.max(ymin * 10.0) * 1.5).log10().ceil());
    let xmax = runs
        .iter()
        .map(|(a, _)| a.run_end_ms / 1000.0)
        .fold(1.0, f64::max);

    let mut gp = String::new();
    let height = 430 * runs.len().max(1);
    let _ = writeln!(
        gp,
        "set terminal pngcairo size 1400,{height} font \"DejaVu Sans,10\" noenhanced"
    );
    let _ = writeln!(gp, "set output {}", gp_quote(&png.display().to_string()));
    let _ = writeln!(gp, "set multiplot layout {},1", runs.len().max(1));
    // Same plot width in every panel, whatever the legend's width.
    let _ = writeln!(gp, "set lmargin at screen 0.06; set rmargin at screen 0.86");
    let _ = writeln!(gp, "set style textbox opaque noborder");
    for (i, (a, samples)) in runs.iter().enumerate() {
        let data = work.join(format!("panel-{i}.dat"));
        let mut text = String::new();
        let mut clauses = Vec::new();
        let mut index = 0;
        let mut releases: Vec<&str> = a.spans.iter().map(|s| s.release.as_str()).collect();
        releases.dedup();
        for r in &releases {
            let mut n = 0;
            for s in samples.iter().filter(|s| s.ok && s.release == *r) {
                let _ = writeln!(text, "{:.4} {:.4}", s.t_ms / 1000.0, s.latency_ms.max(ymin));
                n += 1;
            }
            text.push_str("\n\n");
            // A release that answered only a few requests gets big points, or it hides
            // under the others.
            let style = if n < 100 { "pt 9 ps 1.2" } else { "pt 7 ps 0.35" };
            clauses.push(format!(
                "{} index {index} using 1:2 with points {style} lc rgb {} title {}",
                gp_quote(&data.display().to_string()),
                gp_quote(colours.get(*r).copied().unwrap_or("#444444")),
                gp_quote(&format!("{} ({n})", if r.is_empty() { "?" } else { r }))
            ));
            index += 1;
        }
        let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
        if !failed.is_empty() {
            for s in &failed {
                let _ = writeln!(text, "{:.4} {:.4}", s.t_ms / 1000.0, s.latency_ms.max(ymin));
            }
            text.push_str("\n\n");
            clauses.push(format!(
                "{} index {index} using 1:2 with points pt 2 ps 0.9 lc rgb \"#d62728\" title {}",
                gp_quote(&data.display().to_string()),
                gp_quote(&format!("failed ({})", failed.len()))
            ));
        }
        std::fs::write(&data, text).with_context(|| format!("write {}", data.display()))?;

        let _ = writeln!(gp, "unset object; unset label; unset arrow");
        let _ = writeln!(gp, "set title {}", gp_quote(&a.title));
        let _ = writeln!(gp, "set logscale y");
        let _ = writeln!(gp, "set yrange [{ymin}:{ymax}]");
        let _ = writeln!(gp, "set xrange [0:{:.2}]", xmax);
        let _ = writeln!(gp, "set format y \"%g\"");
        let _ = writeln!(gp, "set xlabel \"time since the load started (s)\"");
        let _ = writeln!(gp, "set ylabel \"probe latency (ms, log scale)\"");
        let _ = writeln!(gp, "set grid xtics ytics mytics lc rgb \"#dddddd\"");
        let _ = writeln!(gp, "set key outside right top box opaque");
        for (k, w) in a.windows.iter().enumerate() {
            let w = &w.window;
            let fill = if w.failed() { "#f8d0d0" } else { "#fff0b3" };
            let _ = writeln!(
                gp,
                "set object {} rect from {:.3}, graph 0 to {:.3}, graph 1 behind fc rgb {} fs solid 1.0 noborder",
                k + 1,
                w.start_ms / 1000.0,
                (w.end_ms / 1000.0).max(w.start_ms / 1000.0 + 0.02),
                gp_quote(fill)
            );
            let text = format!(
                "{}{} ({:.0} ms)",
                w.title(),
                if w.failed() { " FAILED" } else { "" },
                w.duration_ms()
            );
            // Alternate heights so neighbouring labels do not overlap.
            let y = if k % 2 == 0 { 0.96 } else { 0.90 };
            let _ = writeln!(
                gp,
                "set label {} {} at {:.3}, graph {y} left front boxed font \",9\"",
                k + 1,
                gp_quote(&text),
                w.start_ms / 1000.0 + 0.05
            );
        }
        if let Some(b) = a.baseline {
            let _ = writeln!(
                gp,
                "set arrow from graph 0, first {p} to graph 1, first {p} nohead dt 2 lc rgb \"#555555\" back",
                p = b.p99.max(ymin)
            );
            let _ = writeln!(
                gp,
                "set label {} {} at graph 0.995, first {:.4} right front boxed font \",8\" tc rgb \"#555555\"",
                a.windows.len() + 1,
                gp_quote(&format!("baseline p99 {} ms", fmt_ms(b.p99))),
                b.p99.max(ymin) * 1.25
            );
        }
        if clauses.is_empty() {
            let _ = writeln!(gp, "plot NaN title \"no samples\"");
        } else {
            let _ = writeln!(gp, "plot {}", clauses.join(", \\\n     "));
        }
    }
    let _ = writeln!(gp, "unset multiplot");
    Ok(gp)
}

/// Renders `runs` into `png` with gnuplot (Debian: gnuplot-nox, installed by scripts/setup).
pub fn render_png(runs: &[(&Analysis, &[Sample])], png: &Path, work: &Path) -> Result<()> {
    run_gnuplot(&gnuplot_script(runs, png, work)?, &work.join("plot.gp"))
}

/// Writes a gnuplot script to `path` and runs it.
pub fn run_gnuplot(script: &str, path: &Path) -> Result<()> {
    std::fs::write(path, script).with_context(|| format!("write {}", path.display()))?;
    let out = std::process::Command::new("gnuplot")
        .arg(path)
        .output()
        .context("run gnuplot (install it: apt-get install gnuplot-nox, or make setup)")?;
    if !out.status.success() {
        bail!(
            "gnuplot failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
