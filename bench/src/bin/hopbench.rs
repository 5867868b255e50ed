//! hopbench: the cost of a proxy hop, for scripts/bench-hop.
//!
//!   hopbench wait --port 8080                      # until GET / answers 200
//!   hopbench paced --target direct=8080 --target front=8081 --rate 2000 --duration 10s --rounds 2
//!   hopbench idle --port 8081 --count 1000 --pid 1234   # VmRSS with 1,000 idle keep-alive clients
//!   hopbench rss --pid 1234 --pid 1235             # VmRSS, summed
//!
//! `paced` prints one line per target: `NAME n=… errors=… p50=… p99=… max=… svc_p50=… svc_p99=…`
//! (ms; p50/p99/max from each request's intended send time, svc_* from its actual send).
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bench::hop::{Paced, PacedResult, fmt_latency, open_idle, round_order, rss_kb, run_paced, wait_ready};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Paced keep-alive latency (from intended send times), idle connections and RSS, per proxy"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Wait until GET / on 127.0.0.1:PORT answers 200.
    Wait {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Paced GET / over keep-alive connections, target after target, in rounds (forwards, then
    /// backwards: A B C D, D C B A); each target gets duration/rounds per round, after an
    /// unrecorded warm-up.
    Paced {
        /// NAME=PORT on 127.0.0.1; repeat, in order.
        #[arg(long = "target", value_name = "NAME=PORT", required = true)]
        targets: Vec<String>,
        /// Requests per second.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Recorded time per target, over all rounds.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Unrecorded time before each recorded slot.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        warmup: Duration,
        /// Keep-alive connections (request i on connection i mod N).
        #[arg(long, default_value_t = 4)]
        conns: usize,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Open COUNT keep-alive connections, each after one GET /, then print the summed VmRSS of
    /// the PIDs (`open=N rss_kb=K`) and close them.
    Idle {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long = "pid", required = true)]
        pids: Vec<u32>,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print the summed VmRSS (kB) of the PIDs.
    Rss {
        #[arg(long = "pid", required = true)]
        pids: Vec<u32>,
    },
}

fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?}: expected e.g. 500ms, 10s"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "" | "s" => n,
        _ => bail!("{s:?}: unknown unit {unit:?} (ms, s)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn rss_sum(pids: &[u32]) -> Result<u64> {
    let mut sum = 0;
    for &pid in pids {
        sum += rss_kb(pid).with_context(|| format!("VmRSS of pid {pid}"))?;
    }
    Ok(sum)
}

fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Wait { port, timeout } => wait_ready(local(port), timeout)?,
        Cmd::Paced {
            targets,
            rate,
            duration,
            rounds,
            warmup,
            conns,
            timeout,
        } => {
            if rate.is_nan() || rate <= 0.0 || rounds == 0 {
                bail!("--rate and --rounds must be positive");
            }
            let mut named = Vec::new();
            for t in &targets {
                let (name, port) = t
                    .split_once('=')
                    .with_context(|| format!("--target {t:?}: expected NAME=PORT"))?;
                let port: u16 = port
                    .parse()
                    .with_context(|| format!("--target {t:?}: bad port"))?;
                named.push((name.to_string(), local(port)));
            }
            let p = Paced {
                rate,
                duration: duration / rounds as u32,
                warmup,
                conns,
                timeout,
            };
            let mut results = vec![PacedResult::default(); named.len()];
            // Each slot's p99, per target: how much a figure moves from slot to slot.
            let mut slot_p99: Vec<Vec<f64>> = vec![Vec::new(); named.len()];
            for round in 0..rounds {
                for i in round_order(named.len(), round) {
                    let (name, addr) = &named[i];
                    let r = run_paced(*addr, &p).with_context(|| format!("{name} ({addr})"))?;
                    eprintln!(
                        "hopbench: round {} {name}: {} requests, {} errors, p50/p99 {}",
                        round + 1,
                        r.latency_ms.len(),
                        r.errors,
                        r.latency()
                            .map(|s| format!("{} / {} ms", fmt_latency(s.p50), fmt_latency(s.p99)))
                            .unwrap_or_else(|| "-".into())
                    );
                    if let Some(l) = r.latency() {
                        slot_p99[i].push(l.p99);
                    }
                    results[i].merge(r);
                }
            }
            for (((name, _), r), slots) in named.iter().zip(&results).zip(&slot_p99) {
                let f = |s: Option<f64>| s.map(fmt_latency).unwrap_or_else(|| "-".into());
                let (lat, svc) = (r.latency(), r.service());
                let spread = bench::repeat::spread(slots);
                println!(
                    "{name} n={} errors={} p50={} p99={} max={} svc_p50={} svc_p99={} slot_p99_median={} \
                     slot_p99_min={} slot_p99_max={}",
                    r.latency_ms.len(),
                    r.errors,
                    f(lat.map(|s| s.p50)),
                    f(lat.map(|s| s.p99)),
                    f(lat.map(|s| s.max)),
                    f(svc.map(|s| s.p50)),
                    f(svc.map(|s| s.p99)),
                    f(spread.as_ref().map(|s| s.median)),
                    f(spread.as_ref().map(|s| s.min)),
                    f(spread.as_ref().map(|s| s.max)),
                );
            }
        }
        Cmd::Idle {
            port,
            count,
            pids,
            timeout,
        } => {
            let held = open_idle(local(port), count, timeout)?;
            let rss = rss_sum(&pids)?;
            println!("open={} rss_kb={rss}", held.len());
        }
        Cmd::Rss { pids } => println!("{}", rss_sum(&pids)?),
    }
    Ok(())
}
