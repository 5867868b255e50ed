//! The access log (`--access-log`, deploy.yml `front.access_log`, on by default): one JSON
//! line per request on standard output, which systemd hands to the journal.
//!
//! ```text
//! {"time":1765155000.123,"client":"10.0.1.7","method":"GET","path":"/cart","status":200,"bytes":512,"duration_ms":0.412,"release":"d-42"}
//! ```
//!
//! * `time` is when the response ended, in Unix seconds; `path` is without its query string
//!   (queries carry tokens); `bytes` counts the response body; `duration_ms` runs from the
//!   request head to the end of the response; `release` is empty when none was routed. A
//!   response cut short (the client left, the release failed mid-body) adds `"aborted":true`;
//!   a WebSocket is logged at its `101`.
//! * A request never waits for the log. Each worker thread appends its lines to a buffer of its
//!   own (a lock no other request takes); a writer thread of the log's own moves them to
//!   standard output every 200 ms, or sooner once a buffer holds 64 KiB. If the journal falls
//!   behind and a buffer reaches 1 MiB, further lines are dropped and counted
//!   (`handoff_front_access_log_dropped_total`) instead of slowing requests down.
//! * The last lines are written when the front's drain ends ([`flush`]).

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, SystemTime};

/// A worker's buffer is handed to the writer once it holds this much.
const HAND_OVER: usize = 64 * 1024;
/// Beyond this much waiting in one worker's buffer, lines are dropped.
const MOST_WAITING: usize = 1024 * 1024;
/// The writer's period.
const PERIOD: Duration = Duration::from_millis(200);

struct Log {
    buffers: Box<[Mutex<Vec<u8>>]>,
    dropped: AtomicU64,
    writer: Thread,
    /// Held while lines are written: the writer thread's and the final flush's writes
    /// never interleave.
    writing: Mutex<Vec<u8>>,
}

static LOG: OnceLock<Log> = OnceLock::new();

/// Starts the log for `workers` worker threads (once per process; later calls do nothing).
pub fn start(workers: usize) {
    if LOG.get().is_some() {
        return;
    }
    let writer = std::thread::Builder::new()
        .name("front-access-log".into())
        .spawn(|| {
            // Waits for the log to be set, then writes forever.
            let log = loop {
                if let Some(l) = LOG.get() {
                    break l;
                }
                std::thread::park_timeout(Duration::from_millis(10));
            };
            loop {
                std::thread::park_timeout(PERIOD);
                log.write_out();
            }
        })
        .expect("spawn the access log's writer");
    let _ = LOG.set(Log {
        buffers: (0..workers.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
        dropped: AtomicU64::new(0),
        writer: writer.thread().clone(),
        writing: Mutex::new(Vec::new()),
    });
}

/// Whether requests are logged.
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// Lines dropped so far.
pub fn dropped() -> u64 {
    LOG.get().map_or(0, |l| l.dropped.load(Ordering::Relaxed))
}

/// Writes what is waiting now (the end of the drain).
pub fn flush() {
    if let Some(log) = LOG.get() {
        log.write_out();
    }
}

impl Log {
    fn write_out(&self) {
        let mut spare = self.writing.lock().expect("access log lock");
        let mut out = std::io::stdout().lock();
        for b in self.buffers.iter() {
            std::mem::swap(&mut *b.lock().expect("access log lock"), &mut *spare);
            if !spare.is_empty() {
                let _ = out.write_all(&spare);
                spare.clear();
            }
        }
        let _ = out.flush();
    }
}

/// One request, as logged.
#[derive(Debug)]
pub struct Entry<'a> {
    pub client: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub took: Duration,
    pub release: &'a str,
    pub aborted: bool,
}

impl Entry<'_> {
    /// Its line (with the newline), `time` being `now`.
    fn write_to(&self, now: SystemTime, out: &mut Vec<u8>) {
        let t = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let _ = write!(
            out,
            "{{\"time\":{}.{:03},\"client\":\"{}\",\"method\":",
            t.as_secs(),
            t.subsec_millis(),
            self.client.to_canonical()
        );
        let _ = serde_json::to_writer(&mut *out, self.method);
        out.extend_from_slice(b",\"path\":");
        let _ = serde_json::to_writer(&mut *out, self.path);
        let us = self.took.as_micros();
        let _ = write!(
            out,
            ",\"status\":{},\"bytes\":{},\"duration_ms\":{}.{:03},\"release\":",
            self.status,
            self.bytes,
            us / 1000,
            us % 1000
        );
        let _ = serde_json::to_writer(&mut *out, self.release);
        if self.aborted {
            out.extend_from_slice(b",\"aborted\":true");
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Logs one request (nothing when the log is off), on the calling worker's buffer.
pub fn log(entry: &Entry<'_>) {
    let Some(log) = LOG.get() else { return };
    let mut buf = log.buffers[crate::route::worker_index() % log.buffers.len()]
        .lock()
        .expect("access log lock");
    if buf.len() >= MOST_WAITING {
        log.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let before = buf.len();
    entry.write_to(SystemTime::now(), &mut buf);
    if before < HAND_OVER && buf.len() >= HAND_OVER {
        log.writer.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let e = Entry {
            client: "::ffff:10.0.0.7".parse().unwrap(),
            method: "GET",
            path: "/a\"b",
            status: 200,
            bytes: 512,
            took: Duration::from_micros(1_412),
            release: "d-4",
            aborted: false,
        };
        let mut out = Vec::new();
        e.write_to(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_155_000_123),
            &mut out,
        );
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "{\"time\":1765155000.123,\"client\":\"10.0.0.7\",\"method\":\"GET\",\"path\":\"/a\\\"b\",\"status\":200,\
             \"bytes\":512,\"duration_ms\":1.412,\"release\":\"d-4\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["duration_ms"], 1.412);
        let mut out = Vec::new();
        Entry {
            aborted: true,
            took: Duration::from_micros(7),
            ..e
        }
        .write_to(SystemTime::UNIX_EPOCH, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["aborted"].as_bool(), v["duration_ms"].as_f64()),
            (Some(true), Some(0.007))
        );
    }
}
