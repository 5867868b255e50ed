//! report: what a loadgen run saw, as markdown (and a PNG through gnuplot).
//!
//!   report show --dir run/ --title "demo" --md dist/demo.md --png dist/demo.png \
//!          --expect-no-failures --expect-final-release v2 --expect-failed-window d-3
//!   report table --run "(a) naive=run-a1/" --run "(c) handoff=run-c1/" --run "(a) naive=run-a2/" … \
//!          --md dist/bench.md --json dist/bench.json --previous dist/bench-previous.json --png dist/bench.png
//!   report scale --step step-100/ --step step-10000/ --md dist/scale.md --png dist/scale.png --expect-bar
//!   report fleet --dir target/fleet-run.X/ --md dist/fleet.md --png dist/fleet.png --json dist/fleet.json --expect
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bench::data::{Sample, Summary, read_samples};
use bench::repeat::{Machine, Repeated, Strategy as RepeatedStrategy};
use bench::report::{Analysis, analyse, comparison_table, markdown, render_png};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Reports on loadgen runs: latencies baseline vs deployment windows, releases, failures"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The report of one run.
    Show {
        /// The run folder (samples.csv, summary.json).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "Load during deployments")]
        title: String,
        /// Also write the markdown here.
        #[arg(long)]
        md: Option<PathBuf>,
        /// Draw latency over time into this PNG.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Fail (exit 1) if any request of any client failed.
        #[arg(long)]
        expect_no_failures: bool,
        /// Fail unless this release answered every probe request of the last second.
        #[arg(long, value_name = "RELEASE")]
        expect_final_release: Option<String>,
        /// Fail unless the deployment window with this label failed (a release that must be
        /// rejected). Repeatable.
        #[arg(long, value_name = "LABEL")]
        expect_failed_window: Vec<String>,
        /// Fail unless the deployment window with this label succeeded. Repeatable.
        #[arg(long, value_name = "LABEL")]
        expect_ok_window: Vec<String>,
    },
    /// Strategies run several times: every figure's median and min–max across runs, then the
    /// last run of each in full. A TITLE given more than once is one strategy's runs, in order.
    Table {
        /// TITLE=DIR, in row order; repeat a TITLE for each of its runs.
        #[arg(long = "run", value_name = "TITLE=DIR", required = true)]
        runs: Vec<String>,
        #[arg(long)]
        md: Option<PathBuf>,
        /// Every figure's median, min, max and per-run values, and the machine, as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// An earlier --json: say which medians fall outside its min–max.
        #[arg(long, value_name = "JSON")]
        previous: Option<PathBuf>,
        /// The machine, for the report: cores, kernel, load before, pinning, date.
        #[arg(long, value_name = "KEY=VALUE")]
        machine: Vec<String>,
        /// The last run of each strategy, one panel each, same scales.
        #[arg(long)]
        png: Option<PathBuf>,
    },
    /// The scale steps of scripts/bench-scale: one table, reconnects at the largest step.
    Scale {
        /// A step folder (step.json, summary.json, samples.csv); repeat, smallest first; the
        /// largest step may come several times (its runs).
        #[arg(long = "step", required = true)]
        steps: Vec<PathBuf>,
        #[arg(long)]
        md: Option<PathBuf>,
        /// Reconnects over time at the last step.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Fail (exit 1) unless every run of the largest step meets the bar (see
        /// bench::scale::largest_verdict).
        #[arg(long)]
        expect_bar: bool,
    },
    /// The run of scripts/fleet: waves across hosts behind HAProxy, what the balancer saw.
    Fleet {
        /// The run folder (events.tsv, haproxy.log, load/summary.json, settings.env).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        md: Option<PathBuf>,
        /// Requests per second at the balancer and the release each host served, over time.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Everything the report says, as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Fail (exit 1) unless every check of the verdict passes (see bench::fleet).
        #[arg(long)]
        expect: bool,
    },
}

fn load(dir: &Path, title: &str) -> Result<(Analysis, Vec<Sample>)> {
    let summary = Summary::read(&dir.join("summary.json"))?;
    let samples = read_samples(&dir.join("samples.csv"))?;
    Ok((analyse(title, &summary, &samples), samples))
}

/// One loaded run: its analysis, its probe samples, its folder.
type LoadedRun = (Analysis, Vec<Sample>, PathBuf);

/// --machine KEY=VALUE pairs: cores, kernel, load_before, pinning, date.
fn machine_of(pairs: &[String]) -> Result<Machine> {
    let mut m = Machine::default();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--machine {p:?}: expected KEY=VALUE");
        };
        match k {
            "cores" => m.cores = v.parse().with_context(|| format!("--machine cores={v}"))?,
            "kernel" => m.kernel = v.into(),
            "load_before" => m.load_before = v.into(),
            "pinning" => m.pinning = v.into(),
            "date" => m.date = v.into(),
            _ => bail!("--machine {k}: unknown; use cores, kernel, load_before, pinning or date"),
        }
    }
    Ok(m)
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn png(path: &Path, runs: &[(&Analysis, &[Sample])], work: &Path) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    render_png(runs, path, work)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("report: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    match Args::parse().cmd {
        Cmd::Show {
            dir,
            title,
            md,
            png: png_path,
            expect_no_failures,
            expect_final_release,
            expect_failed_window,
            expect_ok_window,
        } => {
            let (a, samples) = load(&dir, &title)?;
            let mut text = markdown(&a);
            let mut checks: Vec<(bool, String)> = Vec::new();
            if expect_no_failures {
                let n = a.total_failed();
                checks.push((n == 0, format!("no failed request, any client: {n} failed")));
            }
            for label in &expect_failed_window {
                let w = a.windows.iter().find(|w| w.window.label == *label);
                checks.push((
                    w.is_some_and(|w| w.window.failed()),
                    format!(
                        "deployment {label} was rejected: {}",
                        match w {
                            None => "no such deployment window".to_string(),
                            Some(w) if w.window.failed() => w
                                .window
                                .attrs
                                .get("msg")
                                .cloned()
                                .unwrap_or_else(|| "failed".into()),
                            Some(_) => "it was ACCEPTED".to_string(),
                        }
                    ),
                ));
            }
            for label in &expect_ok_window {
                let w = a.windows.iter().find(|w| w.window.label == *label);
                checks.push((
                    w.is_some_and(|w| !w.window.failed()),
                    format!(
                        "deployment {label} succeeded{}",
                        if w.is_none() {
                            ": no such deployment window"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if let Some(r) = &expect_final_release {
                let got = a.final_release();
                checks.push((
                    got == Some(r.as_str()),
                    format!(
                        "{r} serves at the end: the last second of probe requests was answered by {}",
                        if a.final_releases.is_empty() {
                            "nothing".to_string()
                        } else {
                            a.final_releases
                                .iter()
                                .map(|(r, n)| format!("{r} ({n})"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
            if !checks.is_empty() {
                let _ = writeln!(text, "\n### Verdict\n");
                for (ok, what) in &checks {
                    let _ = writeln!(text, "- {} {what}", if *ok { "PASS" } else { "FAIL" });
                }
            }
            if let Some(p) = &png_path {
                png(p, &[(&a, &samples)], &dir.join("plot"))?;
                let _ = writeln!(text, "\nPicture: {}", p.display());
            }
            print!("{text}");
            if let Some(p) = &md {
                write(p, &text)?;
            }
            Ok(checks.iter().all(|c| c.0))
        }
        Cmd::Table {
            runs,
            md,
            json,
            previous,
            machine,
            png: png_path,
        } => {
            // Runs grouped by title, titles in first-seen order.
            let mut groups: Vec<(String, Vec<LoadedRun>)> = Vec::new();
            for r in &runs {
                let Some((title, dir)) = r.rsplit_once('=') else {
                    bail!("--run {r:?}: expected TITLE=DIR");
                };
                let (a, samples) = load(Path::new(dir), title)?;
                let run = (a, samples, PathBuf::from(dir));
                match groups.iter_mut().find(|(t, _)| t == title) {
                    Some((_, v)) => v.push(run),
                    None => groups.push((title.to_string(), vec![run])),
                }
            }
            let repeated = Repeated {
                machine: machine_of(&machine)?,
                strategies: groups
                    .iter()
                    .map(|(t, v)| {
                        let analyses: Vec<Analysis> = v.iter().map(|r| r.0.clone()).collect();
                        RepeatedStrategy::from_runs(t, &analyses)
                    })
                    .collect(),
            };
            let mut text = repeated.table();
            let _ = writeln!(
                text,
                "\nThe probe's p99 during the switch windows minus its p99 before them, per run, in run order:\n"
            );
            text.push_str(&repeated.per_run("probe_p99_delta"));
            if let Some(p) = &previous {
                let earlier: Repeated = serde_json::from_str(
                    &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
                )
                .with_context(|| format!("parse {}", p.display()))?;
                let (within, outside) = repeated.against(&earlier);
                let _ = writeln!(
                    text,
                    "\nAgainst the previous report ({}, {}): {} of {} medians within its min–max.",
                    p.display(),
                    earlier.machine.date,
                    within.len(),
                    within.len() + outside.len()
                );
                for o in &outside {
                    let _ = writeln!(text, "- outside: {o}");
                }
            }
            let last: Vec<Analysis> = groups
                .iter()
                .filter_map(|(_, v)| v.last())
                .map(|r| r.0.clone())
                .collect();
            let _ = writeln!(text, "\nThe last run of each strategy in full:\n");
            text.push_str(&comparison_table(&last));
            if let Some(p) = &png_path {
                let panels: Vec<(&Analysis, &[Sample])> = groups
                    .iter()
                    .filter_map(|(_, v)| v.last())
                    .map(|r| (&r.0, r.1.as_slice()))
                    .collect();
                let work = groups[0].1[0].2.join("plot-table");
                png(p, &panels, &work)?;
                let _ = writeln!(text, "\nPicture (the last run of each): {}", p.display());
            }
            print!("{text}");
            if let Some(p) = &md {
                write(p, &text)?;
            }
            if let Some(p) = &json {
                write(p, &serde_json::to_string_pretty(&repeated)?)?;
            }
            Ok(true)
        }
        Cmd::Scale {
            steps,
            md,
            png: png_path,
            expect_bar,
        } => {
            let steps = steps
                .iter()
                .map(|d| bench::scale::read_step(d))
                .collect::<Result<Vec<_>>>()?;
            let mut text = bench::scale::markdown(&steps);
            let last = steps.last().expect("clap requires a step");
            let (met, verdict) = bench::scale::largest_verdict(&steps);
            let _ = writeln!(text, "\n{verdict}");
            if let Some(p) = &png_path {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                bench::report::run_gnuplot(
                    &bench::scale::gnuplot_script(last, p, &last.dir)?,
                    &last.dir.join("scale.gp"),
                )?;
                let _ = writeln!(text, "\nPicture: {}", p.display());
            }
            print!("{text}");
            if let Some(p) = &md {
                write(p, &text)?;
            }
            Ok(!expect_bar || met)
        }
        Cmd::Fleet {
            dir,
            md,
            png: png_path,
            json,
            expect,
        } => {
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(name))
                    .with_context(|| format!("read {}", dir.join(name).display()))
            };
            let events = bench::fleet::parse_events(&read("events.tsv")?)?;
            let log = bench::fleet::parse_log(&read("haproxy.log")?);
            let settings = bench::fleet::parse_settings(&read("settings.env")?)?;
            let summary = Summary::read(&dir.join("load/summary.json"))?;
            let stats = bench::fleet::parse_stats(&read("stat-end.csv")?)?;
            let fleet = bench::fleet::analyse(settings, &events, &log, &stats, &summary)?;
            let mut text = fleet.markdown();
            if let Some(p) = &png_path {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                bench::report::run_gnuplot(
                    &fleet.gnuplot_script(&log, &events, p, &dir)?,
                    &dir.join("fleet.gp"),
                )?;
                let _ = writeln!(text, "\nPicture: {}", p.display());
            }
            print!("{text}");
            if let Some(p) = &md {
                write(p, &text)?;
            }
            if let Some(p) = &json {
                write(p, &serde_json::to_string_pretty(&fleet)?)?;
            }
            Ok(!expect || fleet.verdict().iter().all(|(ok, _)| *ok))
        }
    }
}
