//! The paced probe: every 1/rate s a new connection and one request, whatever the previous
//! ones do, each recorded as a sample (send time, latency, ok, the release that answered).
//! It is what samples.csv holds and what the report's latency tables and pictures show: a
//! switch that refuses, resets or stalls a connection shows up here first. It runs on a
//! thread and runtime of its own so thousands of other clients cannot delay it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};

use super::Clock;
use super::http::{Reasons, one_request, reason};
use crate::data::Sample;

/// The probe's samples, in send order, and why the failed ones failed.
pub(super) struct Probe {
    pub(super) samples: Vec<Sample>,
    pub(super) reasons: Reasons,
}

/// Every 1/rate s a new connection and one request, whatever the previous ones do.
async fn probe(
    port: u16,
    rate: u32,
    timeout: Duration,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> Probe {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Sample, Option<String>)>();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let t_ms = clock.now_ms();
            let t = Instant::now();
            let result = tokio::time::timeout(timeout, one_request(port, "/")).await;
            let latency_ms = t.elapsed().as_secs_f64() * 1e3;
            let (ok, release, why) = match result {
                Ok(Ok(release)) => (true, release, None),
                Ok(Err(e)) => (false, String::new(), Some(reason(&e))),
                Err(_) => (false, String::new(), Some("timeout".to_string())),
            };
            let _ = tx.send((
                Sample {
                    t_ms,
                    latency_ms,
                    ok,
                    release,
                },
                why,
            ));
        });
    }
    drop(tx);
    let mut out = Probe {
        samples: Vec::new(),
        reasons: Reasons::default(),
    };
    // Requests in flight finish (each is bounded by the request timeout).
    while let Some((s, why)) = rx.recv().await {
        if let Some(w) = why {
            out.reasons.add(&w);
        }
        out.samples.push(s);
    }
    out.samples.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    out
}

/// [`probe`] on a thread of its own with a single-threaded runtime. With thousands of client
/// tasks on the shared runtime (10,000 WebSockets reconnecting during a switch), a probe
/// request's connect and read would wait in that runtime's queue, and its latency would be
/// loadgen's backlog as much as the server's.
pub(super) fn probe_on_its_own_thread(
    port: u16,
    rate: u32,
    timeout: Duration,
    clock: Clock,
    stop: watch::Receiver<bool>,
) -> Result<tokio::sync::oneshot::Receiver<Result<Probe>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            let probe = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a runtime for the probe")
                .map(|rt| rt.block_on(probe(port, rate, timeout, clock, stop)));
            let _ = tx.send(probe);
        })
        .context("a thread for the probe")?;
    Ok(rx)
}
