//! `ab -r` and `wrk` beside loadgen's own clients, as child processes: started with the run,
//! interrupted at its end (SIGINT makes both print their results), and their output read
//! into the same counts as the other clients (requests, failed, the failure breakdown). They
//! put a benchmark's concurrency on the server during a switch; their own retries and
//! timeouts are why their numbers are read with care (see [`parse_ab`]).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncReadExt;

use crate::data::Counts;

/// ab or wrk, run until told to stop (SIGINT makes both print their results). `make bench`'s
/// loadgen and the end-to-end tests start them alike.
pub struct Tool {
    name: &'static str,
    child: tokio::process::Child,
}

impl Tool {
    /// `ab -r -c <concurrency>` on `url` for at most `secs`: a new connection per request, and
    /// `-r` so that a failed request does not end the run.
    pub fn ab(url: &str, concurrency: u32, secs: u64) -> Result<Tool> {
        let args = ["-r", "-c", &concurrency.to_string(), "-t", &secs.to_string()]
            .into_iter()
            // After -t, which would cap the count at 50000.
            .chain(["-n", "100000000", url])
            .map(String::from)
            .collect::<Vec<_>>();
        Tool::spawn("ab", &args)
    }

    /// `wrk -t 2 -c <concurrency>` on `url` for at most `secs`: keep-alive, never retrying a
    /// failed request. `timeout_secs`: how long a request may take before wrk counts it as
    /// failed (its own default, 2 s, when `None`).
    pub fn wrk(url: &str, concurrency: u32, secs: u64, timeout_secs: Option<u64>) -> Result<Tool> {
        let mut args: Vec<String> = [
            "-t",
            "2",
            "-c",
            &concurrency.to_string(),
            "-d",
            &format!("{secs}s"),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if let Some(t) = timeout_secs {
            args.extend(["--timeout".into(), format!("{t}s")]);
        }
        args.push(url.into());
        Tool::spawn("wrk", &args)
    }

    /// Starts `name` with `args`.
    pub fn spawn(name: &'static str, args: &[String]) -> Result<Tool> {
        let child = tokio::process::Command::new(name)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name} (install it: make setup)"))?;
        Ok(Tool { name, child })
    }

    /// Interrupts it (if still running) and returns stdout, stderr, and whether it had exited
    /// by itself before.
    pub async fn finish(mut self) -> (String, String, bool) {
        let early = matches!(self.child.try_wait(), Ok(Some(_)));
        if !early && let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let name = self.name;
        let mut stdout = self.child.stdout.take();
        let mut stderr = self.child.stderr.take();
        let read = async {
            let mut o = String::new();
            let mut e = String::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_string(&mut o).await;
            }
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_string(&mut e).await;
            }
            let _ = self.child.wait().await;
            (o, e)
        };
        match tokio::time::timeout(Duration::from_secs(15), read).await {
            Ok((o, e)) => (o, e, early),
            Err(_) => (
                String::new(),
                format!("{name} did not stop within 15 s of SIGINT"),
                early,
            ),
        }
    }
}

/// `ab` output: complete, failed (+ non-2xx) and the failure breakdown. `ab -r` still stops at
/// a refused connect (it prints only "Total of N requests completed"): that counts as N
/// requests with one failure, the one that stopped it.
pub fn parse_ab(text: &str) -> Counts {
    if !text.contains("Complete requests:")
        && let Some(done) = text.lines().find_map(|l| {
            l.trim()
                .strip_prefix("Total of ")
                .and_then(|r| r.strip_suffix(" requests completed"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    {
        return Counts {
            requests: done,
            failed: 1,
            detail: "ab stopped at a failed connect; later failures were not counted".into(),
            failure_t_ms: Vec::new(),
        };
    }
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.trim_start()[name.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let complete = field("Complete requests:");
    let failed = field("Failed requests:");
    let non2xx = field("Non-2xx responses:");
    let breakdown = text
        .lines()
        .find(|l| l.trim_start().starts_with("(Connect:"))
        .unwrap_or("")
        .trim()
        .to_string();
    Counts {
        requests: complete,
        failed: failed + non2xx,
        detail: match (breakdown.is_empty(), non2xx) {
            (true, 0) => String::new(),
            (false, 0) => breakdown,
            (_, n) => format!("{breakdown} non-2xx: {n}"),
        },
        failure_t_ms: Vec::new(),
    }
}

/// `wrk` output: requests, socket errors (connect, read, write, timeout) and non-2xx/3xx.
pub fn parse_wrk(text: &str) -> Counts {
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut failed = 0;
    let mut detail = Vec::new();
    if let Some(l) = text.lines().find(|l| l.contains("Socket errors:")) {
        failed += l
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum::<u64>();
        detail.push(l.trim().to_string());
    }
    if let Some(l) = text.lines().find(|l| l.contains("Non-2xx or 3xx responses:")) {
        failed += l
            .split_whitespace()
            .last()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        detail.push(l.trim().to_string());
    }
    Counts {
        requests,
        failed,
        detail: detail.join("; "),
        failure_t_ms: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
