//! The control channel: scripts/bench (through bench-lib.sh's `ctl` and `mark`) tells loadgen
//! when a deployment window starts and ends (marks), asks for slow requests, or stops the
//! run, one line at a time in a file loadgen follows, or on its stdin. Each line is handed on
//! with the run's clock when it was read: a mark without `at=` is timed then. The lines are
//! parsed by [`crate::data::parse_control`].

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::Clock;

/// Follows the control file (or stdin) on a thread; sends each complete line with the time it
/// was read.
pub(super) fn follow_control(
    source: String,
    clock: Clock,
    tx: mpsc::UnboundedSender<(String, f64)>,
) -> Result<()> {
    if source == "-" {
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send((line, clock.now_ms())).is_err() {
                    break;
                }
            }
        });
        return Ok(());
    }
    let path = PathBuf::from(source);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open control file {}", path.display()))?;
    std::thread::spawn(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut offset = 0u64;
        let mut partial = String::new();
        loop {
            if tx.is_closed() {
                break;
            }
            if let Ok(mut f) = std::fs::File::open(&path) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    offset = 0; // truncated: start over
                }
                if len > offset && f.seek(SeekFrom::Start(offset)).is_ok() {
                    let mut buf = Vec::new();
                    if let Ok(n) = f.read_to_end(&mut buf) {
                        offset += n as u64;
                        partial.push_str(&String::from_utf8_lossy(&buf));
                        let now = clock.now_ms();
                        while let Some(i) = partial.find('\n') {
                            let line: String = partial.drain(..=i).collect();
                            if tx.send((line, now)).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    Ok(())
}
