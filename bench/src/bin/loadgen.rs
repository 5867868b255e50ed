//! loadgen: load against 127.0.0.1:PORT while deployments happen, every probe request recorded.
//!
//!   loadgen --port 8080 --duration 60s --rate 500 --ws 4 --ab 10 --wrk 10 \
//!           --out run/ --control run/control
//!   echo "mark switch-start d-2 at=$(date +%s%3N) release=v2" >> run/control
//!   echo "slow 4 2000" >> run/control      # 4 requests of 2 s each, in flight now
//!   echo "mark switch-end d-2 at=$(date +%s%3N) result=ok" >> run/control
//!   echo stop >> run/control
//!
//! Writes into --out: samples.csv (t_ms,latency_ms,ok,release — one line per probe request),
//! marks.json, summary.json (requests and failures per client kind), ab.txt, wrk.txt, and a
//! `ready` file once every client has started.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Paced probe + keep-alive + WebSocket + ab/wrk load with marks; writes samples.csv and summary.json"
)]
struct Args {
    /// The port on 127.0.0.1 to load.
    #[arg(long)]
    port: u16,
    /// Longest run (e.g. 90s, 2m); a `stop` control line ends it earlier.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Paced probe: new connections (one request each) per second.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Keep-alive clients that never retry a failed request.
    #[arg(long, default_value_t = 0)]
    keepalive: usize,
    /// Pause between two requests of a keep-alive client.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    keepalive_interval: Duration,
    /// WebSocket clients (echo every 100 ms, reconnect after a close).
    #[arg(long, default_value_t = 0)]
    ws: usize,
    /// How often each WebSocket client sends an echo.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    ws_interval: Duration,
    /// WebSocket clients started per second at the beginning (0: all at once).
    #[arg(long, default_value_t = 2000)]
    ws_ramp: u32,
    /// Also run `ab -r -c N` (a new connection per request, continues after errors).
    #[arg(long, value_name = "N")]
    ab: Option<u32>,
    /// Also run `wrk -c N` (keep-alive, never retries).
    #[arg(long, value_name = "N")]
    wrk: Option<u32>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Control lines (`mark NAME [LABEL] [at=UNIX_MS] [k=v…] [msg=…]`, `slow N MS`, `stop`)
    /// from this file as it grows, or from stdin with "-".
    #[arg(long)]
    control: Option<String>,
    /// A probe or keep-alive request not answered within this counts as failed.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    request_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?}: expected e.g. 500ms, 30s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => bail!("{s:?}: unknown unit {unit:?} (ms, s, m)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Args::parse();
    let summary = bench::load::run(bench::load::Config {
        port: a.port,
        duration: a.duration,
        rate: a.rate,
        keepalive: a.keepalive,
        keepalive_interval: a.keepalive_interval,
        ws: a.ws,
        ws_interval: a.ws_interval,
        ws_ramp: a.ws_ramp,
        ab: a.ab,
        wrk: a.wrk,
        out: a.out.clone(),
        control: a.control,
        request_timeout: a.request_timeout,
    })
    .await?;
    eprintln!(
        "loadgen: {:.1} s, {}; results in {}",
        summary.duration_ms / 1e3,
        bench::load::one_line(&summary),
        a.out.display()
    );
    Ok(())
}
