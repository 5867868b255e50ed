//! What loadgen records and report reads: probe samples (CSV), marks (deployment windows and
//! events, from control lines) and the run summary (JSON, counts per client kind).
//!
//! Files in a run folder:
//!
//! | file | content |
//! |---|---|
//! | `samples.csv` | one line per paced probe request: `t_ms,latency_ms,ok,release` |
//! | `marks.json` | the marks, in time order (also inside `summary.json`) |
//! | `summary.json` | [`Summary`]: counts per client kind, failure times, marks |
//! | `ab.txt`, `wrk.txt` | the raw output of ab and wrk |

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// One probe request. `t_ms` is its start, in ms since the run began; `latency_ms` the time to
/// the full answer (or to the failure); `release` the X-Release header ("" on failure).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub t_ms: f64,
    pub latency_ms: f64,
    pub ok: bool,
    pub release: String,
}

impl Sample {
    pub fn end_ms(&self) -> f64 {
        self.t_ms + self.latency_ms
    }
}

pub const SAMPLES_HEADER: &str = "t_ms,latency_ms,ok,release";

pub fn write_samples(path: &Path, samples: &[Sample]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "{SAMPLES_HEADER}")?;
    for s in samples {
        writeln!(
            w,
            "{:.3},{:.3},{},{}",
            s.t_ms,
            s.latency_ms,
            u8::from(s.ok),
            s.release.replace([',', '\n', '\r'], "_")
        )?;
    }
    w.flush()?;
    Ok(())
}

pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    parse_samples(std::io::BufReader::new(file)).with_context(|| format!("read {}", path.display()))
}

pub fn parse_samples(r: impl BufRead) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("t_ms")) {
            continue;
        }
        let f: Vec<&str> = line.splitn(4, ',').collect();
        if f.len() < 3 {
            bail!("line {}: expected {SAMPLES_HEADER}, got {line:?}", i + 1);
        }
        let num = |s: &str| -> Result<f64> {
            s.trim()
                .parse()
                .with_context(|| format!("line {}: {s:?} is not a number", i + 1))
        };
        out.push(Sample {
            t_ms: num(f[0])?,
            latency_ms: num(f[1])?,
            ok: matches!(f[2].trim(), "1" | "true"),
            release: f.get(3).map(|s| s.trim().to_string()).unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    Ok(out)
}

/// A point in time named by the driver of the run: `switch-start`/`switch-end` pairs (same
/// label) make a window; any other name is a point event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub t_ms: f64,
    pub name: String,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

/// A line of the control channel (a file loadgen follows, or its stdin).
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// `mark NAME [LABEL] [at=UNIX_MS] [key=value …] [msg=free text to the end of the line]`.
    /// Without `at=`, the mark is timed when loadgen reads the line.
    Mark(Mark),
    /// `slow N MS`: N requests to `/?sleep_ms=MS`, each on its own connection; counted as the
    /// client kind "slow" (they must all succeed).
    Slow { count: u32, ms: u64 },
    /// `stop`: end the run now.
    Stop,
}

/// Parses one control line. `t0_unix_ms` is the run's start on the wall clock, `now_ms` the
/// run's clock when the line was read. Blank lines and `#` comments give `Ok(None)`.
pub fn parse_control(line: &str, t0_unix_ms: f64, now_ms: f64) -> Result<Option<Control>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    match verb {
        "stop" => Ok(Some(Control::Stop)),
        "slow" => {
            let mut it = rest.split_whitespace();
            let count = it.next().unwrap_or("1").parse().context("slow N MS: N")?;
            let ms = it.next().unwrap_or("2000").parse().context("slow N MS: MS")?;
            Ok(Some(Control::Slow { count, ms }))
        }
        "mark" => {
            let mut name = None;
            let mut label = String::new();
            let mut attrs = BTreeMap::new();
            let mut rest = rest;
            while !rest.is_empty() {
                if let Some(msg) = rest.strip_prefix("msg=") {
                    attrs.insert("msg".to_string(), msg.trim().to_string());
                    break;
                }
                let (tok, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                rest = tail.trim_start();
                if name.is_none() {
                    name = Some(tok.to_string());
                } else if let Some((k, v)) = tok.split_once('=') {
                    attrs.insert(k.to_string(), v.to_string());
                } else if label.is_empty() {
                    label = tok.to_string();
                } else {
                    bail!("mark: unexpected word {tok:?} (attributes are key=value)");
                }
            }
            let Some(name) = name else {
                bail!("mark: no name; write `mark NAME [LABEL] [key=value …]`");
            };
            let t_ms = match attrs.remove("at") {
                Some(at) => {
                    at.parse::<f64>()
                        .with_context(|| format!("mark: at={at} is not unix ms"))?
                        - t0_unix_ms
                }
                None => now_ms,
            };
            Ok(Some(Control::Mark(Mark {
                t_ms,
                name,
                label,
                attrs,
            })))
        }
        other => bail!("unknown control line {other:?}: expected mark, slow or stop"),
    }
}

/// Counts for one client kind. `failure_t_ms` holds when failures happened (start of the failed
/// request or session), where the client knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub failed: u64,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub failure_t_ms: Vec<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WsCounts {
    pub clients: u64,
    pub sessions: u64,
    pub echoes: u64,
    /// Close frames from the server with 1012 (service restart): the clean way to leave.
    pub closes_1012: u64,
    /// Close frames with any other code.
    pub other_closes: Vec<u16>,
    /// Sessions that ended without a close frame, or connection attempts that failed.
    pub abnormal: u64,
    pub releases_seen: Vec<String>,
    #[serde(default)]
    pub failure_t_ms: Vec<f64>,
    /// For each reconnect after a 1012 close: when the close came (run ms) and how long until
    /// the next session's greeting (ms).
    #[serde(default)]
    pub reconnects: Vec<(f64, f64)>,
    /// The release each client's last session greeted it with, counted.
    #[serde(default)]
    pub last_releases: std::collections::BTreeMap<String, u64>,
}

impl WsCounts {
    pub fn failed(&self) -> u64 {
        self.abnormal + self.other_closes.len() as u64
    }

    /// Adds another client's counts to these (releases seen once each).
    pub fn add(&mut self, c: WsCounts) {
        self.clients += c.clients;
        self.sessions += c.sessions;
        self.echoes += c.echoes;
        self.closes_1012 += c.closes_1012;
        self.other_closes.extend(c.other_closes);
        self.abnormal += c.abnormal;
        self.failure_t_ms.extend(c.failure_t_ms);
        for r in c.releases_seen {
            if !self.releases_seen.contains(&r) {
                self.releases_seen.push(r);
            }
        }
        self.reconnects.extend(c.reconnects);
        for (r, n) in c.last_releases {
            *self.last_releases.entry(r).or_default() += n;
        }
    }
}

/// Everything a run counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub port: u16,
    /// The run's t = 0 on the wall clock (unix ms).
    pub t0_unix_ms: f64,
    pub duration_ms: f64,
    pub rate: u32,
    pub probe: Counts,
    #[serde(default)]
    pub keepalive: Option<Counts>,
    #[serde(default)]
    pub ab: Option<Counts>,
    #[serde(default)]
    pub wrk: Option<Counts>,
    #[serde(default)]
    pub ws: Option<WsCounts>,
    #[serde(default)]
    pub slow: Option<Counts>,
    #[serde(default)]
    pub marks: Vec<Mark>,
}

impl Summary {
    /// (kind, requests, failed) for every client kind that ran.
    pub fn kinds(&self) -> Vec<(&'static str, u64, u64)> {
        let counted = |k, c: &Option<Counts>| c.as_ref().map(|c| (k, c.requests, c.failed));
        [
            counted("ab", &self.ab),
            counted("wrk", &self.wrk),
            counted("keep-alive", &self.keepalive),
            Some(("probe", self.probe.requests, self.probe.failed)),
            counted("slow", &self.slow),
            self.ws.as_ref().map(|ws| ("websocket", ws.sessions, ws.failed())),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    pub fn total_failed(&self) -> u64 {
        self.kinds().iter().map(|k| k.2).sum()
    }

    pub fn read(path: &Path) -> Result<Summary> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip_through_csv() {
        let samples = vec![
            Sample {
                t_ms: 1.5,
                latency_ms: 0.25,
                ok: true,
                release: "v1".into(),
            },
            Sample {
                t_ms: 2.0,
                latency_ms: 0.125,
                ok: false,
                release: String::new(),
            },
        ];
        let dir = std::env::temp_dir().join(format!("bench-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("samples.csv");
        write_samples(&path, &samples).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("t_ms,latency_ms,ok,release\n1.500,0.250,1,v1\n"),
            "{text}"
        );
        assert_eq!(read_samples(&path).unwrap(), samples);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn control_lines_parse_marks_with_label_attributes_and_message() {
        let c = parse_control(
            "mark switch-end d-3 at=1000250 result=failed msg=release d-3 did not take over: HTTP 503",
            1_000_000.0,
            7.0,
        )
        .unwrap()
        .unwrap();
        let Control::Mark(m) = c else { panic!("{c:?}") };
        assert_eq!(m.name, "switch-end");
        assert_eq!(m.label, "d-3");
        assert_eq!(m.t_ms, 250.0);
        assert_eq!(m.attrs["result"], "failed");
        assert_eq!(m.attrs["msg"], "release d-3 did not take over: HTTP 503");
        assert!(!m.attrs.contains_key("at"));

        let Control::Mark(m) = parse_control("mark ready", 0.0, 42.0).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!((m.name.as_str(), m.label.as_str(), m.t_ms), ("ready", "", 42.0));
        assert_eq!(
            parse_control("slow 4 2000", 0.0, 0.0).unwrap(),
            Some(Control::Slow { count: 4, ms: 2000 })
        );
        assert_eq!(parse_control("  stop ", 0.0, 0.0).unwrap(), Some(Control::Stop));
        assert_eq!(parse_control("# comment", 0.0, 0.0).unwrap(), None);
        assert!(parse_control("jump", 0.0, 0.0).is_err());
        assert!(parse_control("mark a b c", 0.0, 0.0).is_err());
    }
}
