//! The clients of loadgen, after hooks/tests/e2e/load.rs: a paced probe (a new connection per
//! request, every request recorded), keep-alive clients that never retry, WebSocket clients
//! (close codes, reconnects), slow requests on demand, and ab / wrk as child processes.
//!
//! [`run`] starts them all, takes marks and requests for slow requests from the control
//! channel until the run ends, and writes what they recorded. Its parts:
//!
//! - [`http`]: HTTP/1.1 by hand — response heads, one GET over a new connection
//!   ([`one_request`]), and the words failures are counted under;
//! - [`probe`]: the paced probe, on a thread of its own; its samples are samples.csv;
//! - [`keepalive`]: keep-alive clients that never retry;
//! - [`websocket`]: WebSocket clients, their close codes and reconnect times;
//! - [`tools`]: `ab` and `wrk` as child processes, and their output read ([`parse_ab`],
//!   [`parse_wrk`]);
//! - [`control`]: the control file or stdin followed, each line timed as it is read.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};

use crate::data::{Control, Counts, Mark, Summary, WsCounts, parse_control, write_samples};

pub mod control;
pub mod http;
pub mod keepalive;
pub mod probe;
pub mod tools;
pub mod websocket;

pub use http::one_request;
pub use tools::{Tool, parse_ab, parse_wrk};
pub use websocket::ws_client;

use control::follow_control;
use http::{Reasons, reason};
use keepalive::keepalive_client;
use probe::probe_on_its_own_thread;

/// What loadgen runs against which port, for how long, and where it writes.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    /// The longest the run lasts; a `stop` control line ends it earlier.
    pub duration: Duration,
    /// Paced probe requests per second.
    pub rate: u32,
    pub keepalive: usize,
    pub keepalive_interval: Duration,
    pub ws: usize,
    /// How often each WebSocket client sends an echo.
    pub ws_interval: Duration,
    /// WebSocket clients started per second at the beginning (thousands at once would overflow
    /// the accept queue before anything is measured).
    pub ws_ramp: u32,
    /// `ab -r -c N` alongside, if set.
    pub ab: Option<u32>,
    /// `wrk -c N` alongside, if set.
    pub wrk: Option<u32>,
    pub out: PathBuf,
    /// A file to follow for control lines, or "-" for stdin.
    pub control: Option<String>,
    pub request_timeout: Duration,
}

/// The run's clock: ms since t0, and t0 on the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    t0: Instant,
    pub t0_unix_ms: f64,
}

impl Clock {
    pub fn start() -> Clock {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock {
            t0: Instant::now(),
            t0_unix_ms: unix.as_secs_f64() * 1e3,
        }
    }

    pub fn now_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }
}

/// Raises this process's soft limit of open files to its hard limit: thousands of clients
/// need thousands of descriptors, and the soft limit is often 1,024.
pub fn raise_file_limit() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Runs every client until the duration is over or a `stop` line comes; writes samples.csv,
/// marks.json, summary.json (and ab.txt, wrk.txt) into `cfg.out`.
pub async fn run(cfg: Config) -> Result<Summary> {
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("create {}", cfg.out.display()))?;
    let clock = Clock::start();
    let (stop_tx, stop_rx) = watch::channel(false);
    let url = format!("http://127.0.0.1:{}/", cfg.port);
    let secs = cfg.duration.as_secs().max(1) + 5;

    // A stalled request is slow, not failed, for wrk here: the probe shows the stall.
    let ab = cfg.ab.map(|c| Tool::ab(&url, c, secs)).transpose()?;
    let wrk = cfg.wrk.map(|c| Tool::wrk(&url, c, secs, Some(10))).transpose()?;
    let wanted = (cfg.ws + cfg.keepalive + 256) as u64;
    let limit = raise_file_limit().context("raise the open-file limit")?;
    if limit < wanted {
        anyhow::bail!(
            "{} clients need about {wanted} open files, and this process may open {limit}; raise the hard limit \
             (ulimit -Hn, LimitNOFILE=) or run fewer clients",
            cfg.ws + cfg.keepalive
        );
    }
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
    let mut ws = Vec::with_capacity(cfg.ws);
    for i in 0..cfg.ws {
        if cfg.ws_ramp > 0 && i > 0 && (i as u32).is_multiple_of((cfg.ws_ramp / 100).max(1)) {
            // In slices of 10 ms, so the start takes ws/ramp seconds.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ws.push(tokio::spawn(ws_client(
            cfg.port,
            cfg.ws_interval,
            connected_tx.clone(),
            clock,
            stop_rx.clone(),
        )));
    }
    drop(connected_tx);
    let mut up = 0;
    while up < cfg.ws {
        match tokio::time::timeout(Duration::from_secs(30), connected_rx.recv()).await {
            Ok(Some(())) => up += 1,
            _ => anyhow::bail!("only {up} of {} WebSocket clients connected within 30 s", cfg.ws),
        }
    }
    let keepalive: Vec<_> = (0..cfg.keepalive)
        .map(|_| {
            tokio::spawn(keepalive_client(
                cfg.port,
                cfg.keepalive_interval,
                cfg.request_timeout,
                clock,
                stop_rx.clone(),
            ))
        })
        .collect();
    let probe_task =
        probe_on_its_own_thread(cfg.port, cfg.rate, cfg.request_timeout, clock, stop_rx.clone())?;

    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
    if let Some(source) = cfg.control.clone() {
        follow_control(source, clock, ctl_tx.clone())?;
    }
    std::fs::write(cfg.out.join("ready"), format!("{}\n", clock.t0_unix_ms))?;
    eprintln!(
        "loadgen: {} req/s probe, {} keep-alive, {} websocket, ab {:?}, wrk {:?} against {url} for at most {:?}",
        cfg.rate, cfg.keepalive, cfg.ws, cfg.ab, cfg.wrk, cfg.duration
    );

    let mut marks: Vec<Mark> = Vec::new();
    let mut slow = Vec::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = tokio::time::sleep(cfg.duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => { eprintln!("loadgen: interrupted; writing what was recorded"); break }
            _ = term.recv() => { eprintln!("loadgen: SIGTERM; writing what was recorded"); break }
            Some((line, at)) = ctl_rx.recv() => match parse_control(&line, clock.t0_unix_ms, at) {
                Ok(Some(Control::Mark(m))) => {
                    eprintln!("loadgen: {:>8.1} ms  mark {} {}", m.t_ms, m.name, m.label);
                    marks.push(m);
                }
                Ok(Some(Control::Slow { count, ms })) => {
                    for _ in 0..count {
                        let port = cfg.port;
                        let t_ms = clock.now_ms();
                        slow.push(tokio::spawn(async move {
                            let r = tokio::time::timeout(
                                Duration::from_millis(ms + 30_000),
                                one_request(port, &format!("/?sleep_ms={ms}")),
                            )
                            .await;
                            (t_ms, match r {
                                Ok(Ok(_)) => None,
                                Ok(Err(e)) => Some(reason(&e)),
                                Err(_) => Some("timeout".to_string()),
                            })
                        }));
                    }
                }
                Ok(Some(Control::Stop)) => break,
                Ok(None) => {}
                Err(e) => eprintln!("loadgen: ignored control line {:?}: {e:#}", line.trim()),
            },
        }
    }
    let end_ms = clock.now_ms();
    let _ = stop_tx.send(true);
    drop(ctl_rx);

    let mut summary = Summary {
        port: cfg.port,
        t0_unix_ms: clock.t0_unix_ms,
        duration_ms: end_ms,
        rate: cfg.rate,
        ..Default::default()
    };
    let tools = async {
        let ab = match ab {
            Some(t) => Some(t.finish().await),
            None => None,
        };
        let wrk = match wrk {
            Some(t) => Some(t.finish().await),
            None => None,
        };
        (ab, wrk)
    };
    let (ab, wrk) = tools.await;
    if let Some((out, err, early)) = ab {
        std::fs::write(cfg.out.join("ab.txt"), format!("{out}\n--- stderr ---\n{err}"))?;
        let mut c = parse_ab(&out);
        if early {
            c.detail = format!(
                "{} (ab exited early: {})",
                c.detail,
                err.lines().last().unwrap_or("")
            )
            .trim()
            .into();
        }
        summary.ab = Some(c);
    }
    if let Some((out, err, early)) = wrk {
        std::fs::write(cfg.out.join("wrk.txt"), format!("{out}\n--- stderr ---\n{err}"))?;
        let mut c = parse_wrk(&out);
        if early {
            c.detail = format!(
                "{} (wrk exited early: {})",
                c.detail,
                err.lines().last().unwrap_or("")
            )
            .trim()
            .into();
        }
        summary.wrk = Some(c);
    }
    if !ws.is_empty() {
        let mut all = WsCounts::default();
        for h in ws {
            all.add(h.await?);
        }
        all.failure_t_ms.sort_by(f64::total_cmp);
        all.reconnects.sort_by(|a, b| a.0.total_cmp(&b.0));
        summary.ws = Some(all);
    }
    if !keepalive.is_empty() {
        let mut all = Counts::default();
        let mut reasons = Reasons::default();
        for h in keepalive {
            let (c, r) = h.await?;
            all.requests += c.requests;
            all.failed += c.failed;
            all.failure_t_ms.extend(c.failure_t_ms);
            for (k, v) in r.0 {
                *reasons.0.entry(k).or_default() += v;
            }
        }
        all.failure_t_ms.sort_by(f64::total_cmp);
        all.detail = reasons.text();
        summary.keepalive = Some(all);
    }
    if !slow.is_empty() {
        let mut c = Counts::default();
        let mut reasons = Reasons::default();
        for h in slow {
            let (t_ms, why) = h.await?;
            c.requests += 1;
            if let Some(w) = why {
                c.failed += 1;
                c.failure_t_ms.push(t_ms);
                reasons.add(&w);
            }
        }
        c.detail = reasons.text();
        summary.slow = Some(c);
    }
    let probe = probe_task
        .await
        .context("the probe's thread ended without its samples")??;
    summary.probe = Counts {
        requests: probe.samples.len() as u64,
        failed: probe.samples.iter().filter(|s| !s.ok).count() as u64,
        detail: probe.reasons.text(),
        failure_t_ms: Vec::new(), // in samples.csv
    };
    marks.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    summary.marks = marks;

    write_samples(&cfg.out.join("samples.csv"), &probe.samples)?;
    std::fs::write(
        cfg.out.join("marks.json"),
        serde_json::to_string_pretty(&summary.marks)?,
    )?;
    std::fs::write(
        cfg.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// Failures per client kind, on one line (for stderr).
pub fn one_line(summary: &Summary) -> String {
    summary
        .kinds()
        .iter()
        .map(|(k, r, f)| format!("{k} {f}/{r} failed"))
        .collect::<Vec<_>>()
        .join(", ")
}
