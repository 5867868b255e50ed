//! What scripts/fleet recorded itself: events.tsv (each wave's start and end, and per host
//! deregister, deploy-start/-end with the hooks' result, register, the release it answers
//! after the wave, and what every host should serve) and settings.env (the number of hosts,
//! the time scale, the target group's health-check and deregistration defaults, the load).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// One line of events.tsv.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub t_ms: i64,
    pub event: String,
    pub host: u32,
    pub wave: String,
    pub detail: String,
}

/// Reads events.tsv (`unix_ms  event  host  wave  detail`, tab-separated), sorted by time.
pub fn parse_events(text: &str) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.splitn(5, '\t').collect();
        if f.len() < 4 {
            bail!(
                "events.tsv line {}: expected 5 tab-separated fields: {line}",
                n + 1
            );
        }
        out.push(Event {
            t_ms: f[0]
                .parse()
                .with_context(|| format!("events.tsv line {}: time", n + 1))?,
            event: f[1].to_string(),
            host: f[2]
                .parse()
                .with_context(|| format!("events.tsv line {}: host", n + 1))?,
            wave: f[3].to_string(),
            detail: f.get(4).unwrap_or(&"").to_string(),
        });
    }
    out.sort_by_key(|e| e.t_ms);
    Ok(out)
}

/// The run's settings.env: `key=value` lines.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Settings {
    pub hosts: u32,
    pub scale: u32,
    pub check_interval_s: u32,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub deregistration_delay_s: u32,
    pub ab: u32,
    pub wrk: u32,
    pub rate: u32,
}

/// Reads settings.env; every key is required.
pub fn parse_settings(text: &str) -> Result<Settings> {
    let map: BTreeMap<&str, u32> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k.trim(), v.trim().parse().ok()?)))
        .collect();
    let get = |k: &str| {
        map.get(k)
            .copied()
            .with_context(|| format!("settings.env has no {k}="))
    };
    Ok(Settings {
        hosts: get("hosts")?,
        scale: get("scale")?,
        check_interval_s: get("check_interval_s")?,
        healthy_threshold: get("healthy_threshold")?,
        unhealthy_threshold: get("unhealthy_threshold")?,
        deregistration_delay_s: get("deregistration_delay_s")?,
        ab: get("ab")?,
        wrk: get("wrk")?,
        rate: get("rate")?,
    })
}
