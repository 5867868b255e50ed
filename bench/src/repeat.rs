//! `make bench` repeated: the same strategies run several times, interleaved, and every figure
//! reported as its median with the min–max across runs, so noise and effect can be told apart.
//!
//! One run of one strategy is one loadgen run folder with its deployment windows. Each run
//! gives one value per figure ([`Figures`]); a figure that compares the switch with the
//! baseline (the probe's p99 during the switch windows minus its p99 before them) is computed
//! within the run, where both halves saw the same machine, and only then summarised. The hooks'
//! split of their time comes from the hooks' own timings (marks' `hooks_ms`, `app_ms`,
//! `systemd_ms`, `own_ms`: the four hooks of one deployment added up, see `handoff::timing`),
//! not from a difference of wall times.
//!
//! The report is markdown plus JSON; given the JSON of an earlier report it also says which of
//! the new medians fall outside the earlier min–max (`make bench` twice in a row).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::report::Analysis;
use crate::stats::fmt_ms;

/// How a figure is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Count,
    Ms,
    /// A difference in ms, with its sign.
    DeltaMs,
}

/// The figures of one run, by key (see [`FIGURES`]); `None` where a run has no such value.
pub type Figures = Vec<(&'static str, Option<f64>)>;

/// Every figure: key, label, unit.
const FIGURES: &[(&str, &str, Unit)] = &[
    ("failed", "failed requests, every client", Unit::Count),
    ("ws_abnormal", "abnormal WebSocket closes", Unit::Count),
    ("probe_p50_base", "probe p50, baseline (ms)", Unit::Ms),
    ("probe_p99_base", "probe p99, baseline (ms)", Unit::Ms),
    ("probe_p99_switch", "probe p99, switch windows (ms)", Unit::Ms),
    (
        "probe_p99_delta",
        "probe p99, switch − baseline, same run (ms)",
        Unit::DeltaMs,
    ),
    ("probe_max_switch", "probe max, switch windows (ms)", Unit::Ms),
    ("deploy_ms", "deploy duration, mean of the run (ms)", Unit::Ms),
    ("hooks_ms", "hooks, all four: wall time (ms)", Unit::Ms),
    ("hooks_app_ms", "hooks: waiting on the app (ms)", Unit::Ms),
    ("hooks_systemd_ms", "hooks: waiting on systemd (ms)", Unit::Ms),
    ("hooks_own_ms", "hooks: own work (ms)", Unit::Ms),
];

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// One run's figures.
pub fn figures(a: &Analysis) -> Figures {
    let s = &a.summary;
    // Deployments in which all four hooks ran (a failed one stops early: a partial sum).
    let attr_mean = |k: &str| {
        mean(
            &a.windows
                .iter()
                .filter(|w| w.window.attr_f64("hooks").is_none_or(|n| n == 4.0))
                .filter_map(|w| w.window.attr_f64(k))
                .collect::<Vec<_>>(),
        )
    };
    let durations: Vec<f64> = a.windows.iter().map(|w| w.window.duration_ms()).collect();
    let base = a.baseline;
    let switch = a.switching;
    vec![
        ("failed", Some(s.total_failed() as f64)),
        ("ws_abnormal", s.ws.as_ref().map(|w| w.failed() as f64)),
        ("probe_p50_base", base.map(|b| b.p50)),
        ("probe_p99_base", base.map(|b| b.p99)),
        ("probe_p99_switch", switch.map(|b| b.p99)),
        ("probe_p99_delta", base.zip(switch).map(|(b, w)| w.p99 - b.p99)),
        ("probe_max_switch", switch.map(|b| b.max)),
        ("deploy_ms", mean(&durations)),
        ("hooks_ms", attr_mean("hooks_ms")),
        ("hooks_app_ms", attr_mean("app_ms")),
        ("hooks_systemd_ms", attr_mean("systemd_ms")),
        ("hooks_own_ms", attr_mean("own_ms")),
    ]
}

/// A figure across runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Every run's value, in run order.
    pub values: Vec<f64>,
}

/// The median (the mean of the middle two for an even count), min and max; `None` for none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        values: values.to_vec(),
    })
}

/// One strategy across its runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Strategy {
    pub title: String,
    pub runs: usize,
    /// Figure key → its spread (figures no run has are left out).
    pub figures: Vec<(String, Spread)>,
}

impl Strategy {
    pub fn from_runs(title: &str, runs: &[Analysis]) -> Self {
        let per_run: Vec<Figures> = runs.iter().map(figures).collect();
        let figures = FIGURES
            .iter()
            .filter_map(|(key, _, _)| {
                let values: Vec<f64> = per_run
                    .iter()
                    .filter_map(|f| f.iter().find(|(k, _)| k == key).and_then(|(_, v)| *v))
                    .collect();
                spread(&values).map(|s| (key.to_string(), s))
            })
            .collect();
        Self {
            title: title.to_string(),
            runs: runs.len(),
            figures,
        }
    }

    pub fn figure(&self, key: &str) -> Option<&Spread> {
        self.figures.iter().find(|(k, _)| k == key).map(|(_, s)| s)
    }
}

/// The machine and the conditions of the runs, as the script saw them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: u32,
    pub kernel: String,
    /// /proc/loadavg's 1, 5 and 15 minute averages before the first run.
    pub load_before: String,
    /// How clients and service were kept apart ("loadgen, ab, wrk on CPU 1; …"), or "none".
    pub pinning: String,
    pub date: String,
}

/// `dist/bench.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Repeated {
    pub machine: Machine,
    pub strategies: Vec<Strategy>,
}

fn value(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Count => format!("{v:.0}"),
        Unit::Ms => fmt_ms(v),
        Unit::DeltaMs if v >= 0.0 => format!("+{}", fmt_ms(v)),
        Unit::DeltaMs => format!("−{}", fmt_ms(-v)),
    }
}

fn cell(unit: Unit, s: Option<&Spread>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.min == s.max => value(unit, s.median),
        Some(s) => format!(
            "{} [{} – {}]",
            value(unit, s.median),
            value(unit, s.min),
            value(unit, s.max)
        ),
    }
}

fn unit_of(key: &str) -> Unit {
    FIGURES
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, _, u)| *u)
        .unwrap_or(Unit::Ms)
}

fn label_of(key: &str) -> &str {
    FIGURES
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, l, _)| *l)
        .unwrap_or(key)
}

impl Repeated {
    /// One row per figure, one column per strategy: "median [min – max]".
    pub fn table(&self) -> String {
        let mut out = String::from("| figure |");
        for s in &self.strategies {
            let _ = write!(out, " {} |", s.title);
        }
        out.push_str("\n|---|");
        for _ in &self.strategies {
            out.push_str("---:|");
        }
        out.push('\n');
        for (key, label, unit) in FIGURES {
            if self.strategies.iter().all(|s| s.figure(key).is_none()) {
                continue;
            }
            let _ = write!(out, "| {label} |");
            for s in &self.strategies {
                let _ = write!(out, " {} |", cell(*unit, s.figure(key)));
            }
            out.push('\n');
        }
        out
    }

    /// Each strategy's per-run values of one figure, in run order.
    pub fn per_run(&self, key: &str) -> String {
        let unit = unit_of(key);
        let mut out = String::new();
        for s in &self.strategies {
            if let Some(f) = s.figure(key) {
                let v: Vec<String> = f.values.iter().map(|v| value(unit, *v)).collect();
                let _ = writeln!(out, "- {}: {}", s.title, v.join(", "));
            }
        }
        out
    }

    /// Every figure both reports have: is this report's median within the earlier min–max, as
    /// printed (3 significant digits)?
    /// Returns (within, outside), each as "strategy: figure: median (earlier min – max)".
    pub fn against(&self, earlier: &Repeated) -> (Vec<String>, Vec<String>) {
        let (mut within, mut outside) = (Vec::new(), Vec::new());
        for s in &self.strategies {
            let Some(e) = earlier.strategies.iter().find(|e| e.title == s.title) else {
                continue;
            };
            for (key, now) in &s.figures {
                let Some(was) = e.figure(key) else { continue };
                let unit = unit_of(key);
                let line = format!(
                    "{}: {}: {} (earlier {} – {})",
                    s.title,
                    label_of(key),
                    value(unit, now.median),
                    value(unit, was.min),
                    value(unit, was.max)
                );
                // As printed: a median that prints as the earlier bound is within it.
                let printed = |v: f64| value(unit, v).replace('−', "-").parse::<f64>().unwrap_or(v);
                let median = printed(now.median);
                if median >= printed(was.min) && median <= printed(was.max) {
                    within.push(line);
                } else {
                    outside.push(line);
                }
            }
        }
        (within, outside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle_value_and_the_extremes_in_run_order() {
        let s = spread(&[3.0, 1.0, 9.0, 4.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 9.0));
        assert_eq!(s.values, vec![3.0, 1.0, 9.0, 4.0, 2.0]);
        assert_eq!(spread(&[4.0, 1.0, 2.0, 10.0]).unwrap().median, 3.0);
        assert_eq!(spread(&[]), None);
    }

    fn strategy(title: &str, figures: &[(&str, &[f64])]) -> Strategy {
        Strategy {
            title: title.into(),
            runs: figures[0].1.len(),
            figures: figures
                .iter()
                .map(|(k, v)| (k.to_string(), spread(v).unwrap()))
                .collect(),
        }
    }

    fn report(strategies: Vec<Strategy>) -> Repeated {
        Repeated {
            machine: Machine::default(),
            strategies,
        }
    }

    #[test]
    fn table_prints_median_and_range_per_strategy_and_skips_figures_nobody_has() {
        let r = report(vec![
            strategy(
                "(a)",
                &[
                    ("failed", &[10.0, 30.0, 20.0]),
                    ("probe_p99_delta", &[-0.5, 1.0, 2.0]),
                ],
            ),
            strategy(
                "(c)",
                &[
                    ("failed", &[0.0, 0.0, 0.0]),
                    ("hooks_own_ms", &[40.0, 52.0, 47.0]),
                ],
            ),
        ]);
        let t = r.table();
        assert!(t.starts_with("| figure | (a) | (c) |\n|---|---:|---:|\n"), "{t}");
        assert!(
            t.contains("| failed requests, every client | 20 [10 – 30] | 0 |"),
            "{t}"
        );
        assert!(
            t.contains("| probe p99, switch − baseline, same run (ms) | +1.00 [−0.50 – +2.00] | – |"),
            "{t}"
        );
        assert!(
            t.contains("| hooks: own work (ms) | – | 47.0 [40.0 – 52.0] |"),
            "{t}"
        );
        assert!(!t.contains("abnormal WebSocket"), "{t}");
        assert_eq!(r.per_run("hooks_own_ms"), "- (c): 40.0, 52.0, 47.0\n");
    }

    #[test]
    fn against_an_earlier_report_names_each_median_outside_its_range() {
        let earlier = report(vec![strategy(
            "(c)",
            &[("failed", &[0.0, 0.0]), ("probe_p99_base", &[3.0, 5.0, 4.0])],
        )]);
        let now = report(vec![
            strategy(
                "(c)",
                &[("failed", &[0.0, 0.0]), ("probe_p99_base", &[5.5, 6.0, 5.8])],
            ),
            strategy("(z) not in the earlier one", &[("failed", &[1.0])]),
        ]);
        let (within, outside) = now.against(&earlier);
        // 2.996 prints as the earlier min, 3.00: within.
        let close = report(vec![strategy("(c)", &[("probe_p99_base", &[2.996, 2.99, 3.1])])]);
        assert_eq!(close.against(&earlier).1, Vec::<String>::new());
        assert_eq!(
            within,
            vec!["(c): failed requests, every client: 0 (earlier 0 – 0)"]
        );
        assert_eq!(
            outside,
            vec!["(c): probe p99, baseline (ms): 5.80 (earlier 3.00 – 5.00)"]
        );
    }

    #[test]
    fn the_json_round_trips() {
        let r = report(vec![strategy("(c)", &[("deploy_ms", &[4000.0, 4100.0])])]);
        let back: Repeated = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(
            back.strategies[0].figure("deploy_ms"),
            r.strategies[0].figure("deploy_ms")
        );
    }
}
