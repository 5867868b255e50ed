//! The cost of the front's hop (bin `hopbench`, run by scripts/bench-hop): a paced client over a
//! few keep-alive connections whose latencies count from each request's *intended* send time (so
//! a stall delays the requests scheduled behind it and shows in the percentiles, no coordinated
//! omission), idle keep-alive connections held open, and RSS from /proc.
//!
//! Plain blocking HTTP/1.1 over `std::net::TcpStream`, one thread per paced connection: a
//! thread sleep (timer slack lowered to 1 µs) wakes within tens of microseconds of the intended
//! time, where tokio's timer rounds up to the next millisecond.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::stats::{LatencyStats, latency_stats};

/// The request every client sends.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: hopbench\r\n\r\n";

/// A response head, its body read and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server closes after this response (`Connection: close` or HTTP/1.0 without keep-alive).
    pub close: bool,
}

/// Reads one response (head, then the body by Content-Length or chunked) from `r`.
pub fn read_response<R: BufRead>(r: &mut R) -> io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {:.40}", line.trim())))?;
    let mut close = line.starts_with("HTTP/1.0");
    let mut length: Option<u64> = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.parse().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => {
                    let v = v.to_ascii_lowercase();
                    if v.contains("close") {
                        close = true;
                    } else if v.contains("keep-alive") {
                        close = false;
                    }
                }
                _ => {}
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let size = line.trim().split(';').next().unwrap_or("");
            let n = u64::from_str_radix(size.trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {:.20}", line.trim())))?;
            if n == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            skip(r, n + 2)?; // the chunk and its CRLF
        }
    } else if let Some(n) = length {
        skip(r, n)?;
    } else if status >= 200 && status != 204 && status != 304 {
        // No length: the body runs to the close.
        io::copy(r, &mut io::sink())?;
        close = true;
    }
    Ok(Response { status, close })
}

fn skip<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// A keep-alive client connection.
#[derive(Debug)]
pub struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            r: BufReader::with_capacity(16 * 1024, s),
        })
    }

    /// `GET /` on this connection.
    pub fn get(&mut self) -> io::Result<Response> {
        self.r.get_mut().write_all(REQUEST)?;
        read_response(&mut self.r)
    }
}

/// One request on `conn` (connected first when `None`); the connection is kept when the
/// exchange succeeded and the server keeps it open. Err for anything but a 200.
fn request(conn: &mut Option<Conn>, addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Conn::connect(addr, timeout)?),
    };
    match c.get() {
        Ok(resp) => {
            if resp.close {
                *conn = None;
            }
            if resp.status == 200 {
                Ok(())
            } else {
                Err(io::Error::other(format!("HTTP {}", resp.status)))
            }
        }
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}

/// Polls `GET /` until it answers 200; Err after `timeout`.
pub fn wait_ready(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut conn = None;
        let err = match request(&mut conn, addr, Duration::from_millis(500)) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{addr} not answering 200 within {timeout:?}: {err}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Paced {
    /// Requests per second, over all connections.
    pub rate: f64,
    /// Recorded part of the run.
    pub duration: Duration,
    /// Unrecorded first part of the run (same pace).
    pub warmup: Duration,
    /// Keep-alive connections; request i goes on connection i mod conns.
    pub conns: usize,
    /// A request not answered within this fails (and its connection is dropped).
    pub timeout: Duration,
}

/// What a paced run saw (recorded part only).
#[derive(Debug, Default, Clone)]
pub struct PacedResult {
    /// From the intended send time to the end of the response, ms.
    pub latency_ms: Vec<f64>,
    /// From the actual send (after a late wake-up or a previous slow response) to the end, ms.
    pub service_ms: Vec<f64>,
    /// Requests that failed (not a 200: refused, reset, closed, timed out, other status).
    pub errors: u64,
}

impl PacedResult {
    pub fn merge(&mut self, other: PacedResult) {
        self.latency_ms.extend(other.latency_ms);
        self.service_ms.extend(other.service_ms);
        self.errors += other.errors;
    }
    pub fn latency(&self) -> Option<LatencyStats> {
        latency_stats(self.latency_ms.iter().copied())
    }
    pub fn service(&self) -> Option<LatencyStats> {
        latency_stats(self.service_ms.iter().copied())
    }
}

/// When request `i` is due: `start + i / rate`.
pub fn intended(start: Instant, i: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}

/// Paced `GET /` against `addr`: `rate` requests per second for `warmup + duration`, request i
/// on connection i mod conns at its intended time (or as soon as that connection is free, when
/// it is late). Connections are opened before the clock starts.
pub fn run_paced(addr: SocketAddr, p: &Paced) -> io::Result<PacedResult> {
    let conns = p.conns.max(1);
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(Conn::connect(addr, p.timeout)?);
    }
    let total = ((p.warmup + p.duration).as_secs_f64() * p.rate).round() as u64;
    let first_recorded = (p.warmup.as_secs_f64() * p.rate).round() as u64;
    let start = Instant::now() + Duration::from_millis(5);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = opened
            .into_iter()
            .enumerate()
            .map(|(k, c)| {
                s.spawn(move || {
                    // Wake up within microseconds, not the default 50 µs slack.
                    let _ = nix::sys::prctl::set_timerslack(1);
                    let mut conn = Some(c);
                    let mut out = PacedResult::default();
                    let mut i = k as u64;
                    while i < total {
                        let due = intended(start, i, p.rate);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let sent = Instant::now();
                        let ok = request(&mut conn, addr, p.timeout).is_ok();
                        let done = Instant::now();
                        if i >= first_recorded {
                            if ok {
                                out.latency_ms.push((done - due).as_secs_f64() * 1e3);
                                out.service_ms.push((done - sent).as_secs_f64() * 1e3);
                            } else {
                                out.errors += 1;
                            }
                        }
                        i += conns as u64;
                    }
                    out
                })
            })
            .collect();
        let mut all = PacedResult::default();
        for h in handles {
            all.merge(h.join().expect("paced client thread panicked"));
        }
        all
    });
    Ok(results)
}

/// The order of `n` targets in round `round`: forwards in even rounds, backwards in odd ones
/// (A B C D, D C B A, …), so that over two rounds none is always first or always last.
pub fn round_order(n: usize, round: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// Opens `count` keep-alive connections to `addr`, one after another, each having completed one
/// `GET /` (so each is an established, idle, keep-alive connection on the server's side).
pub fn open_idle(addr: SocketAddr, count: usize, timeout: Duration) -> io::Result<Vec<Conn>> {
    let mut held = Vec::with_capacity(count);
    for n in 0..count {
        let mut c = Conn::connect(addr, timeout)
            .map_err(|e| io::Error::other(format!("connection {}: connect: {e}", n + 1)))?;
        let resp = c
            .get()
            .map_err(|e| io::Error::other(format!("connection {}: {e}", n + 1)))?;
        if resp.status != 200 || resp.close {
            return Err(io::Error::other(format!(
                "connection {}: HTTP {}{}",
                n + 1,
                resp.status,
                if resp.close { ", closed" } else { "" }
            )));
        }
        held.push(c);
    }
    Ok(held)
}

/// VmRSS in kB from a /proc/PID/status text.
pub fn parse_vm_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// VmRSS of a process, kB.
pub fn rss_kb(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    parse_vm_rss_kb(&text).ok_or_else(|| io::Error::other(format!("no VmRSS for pid {pid}")))
}

/// A sub-millisecond latency for a table: ms with 3 decimals below 1 ms, else
/// [`crate::stats::fmt_ms`].
pub fn fmt_latency(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3}")
    } else {
        crate::stats::fmt_ms(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::net::TcpListener;

    #[test]
    fn reads_length_chunked_and_close_delimited_bodies() {
        let text = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 503 Busy\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n\
                    HTTP/1.0 200 OK\r\n\r\nrest of the stream";
        let mut r = Cursor::new(text.as_bytes());
        assert_eq!(
            read_response(&mut r).unwrap(),
            Response {
                status: 200,
                close: false
            }
        );
        assert_eq!(
            read_response(&mut r).unwrap(),
            Response {
                status: 503,
                close: true
            }
        );
        assert_eq!(
            read_response(&mut r).unwrap(),
            Response {
                status: 200,
                close: true
            }
        );
        assert!(read_response(&mut r).is_err(), "end of stream");
        let mut short = Cursor::new(&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc"[..]);
        assert!(read_response(&mut short).is_err(), "truncated body");
    }

    #[test]
    fn rounds_alternate_direction() {
        assert_eq!(round_order(4, 0), [0, 1, 2, 3]);
        assert_eq!(round_order(4, 1), [3, 2, 1, 0]);
        assert_eq!(round_order(4, 2), [0, 1, 2, 3]);
    }

    #[test]
    fn schedule_is_evenly_spaced() {
        let t0 = Instant::now();
        assert_eq!(intended(t0, 0, 2000.0), t0);
        assert_eq!(intended(t0, 2000, 2000.0) - t0, Duration::from_secs(1));
        assert_eq!(intended(t0, 3, 2000.0) - t0, Duration::from_micros(1500));
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tnginx\nVmPeak:\t  10 kB\nVmRSS:\t    8123 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss_kb(status), Some(8123));
        assert_eq!(parse_vm_rss_kb("Name: x\n"), None);
        assert!(rss_kb(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn formats_latencies() {
        assert_eq!(fmt_latency(0.1234), "0.123");
        assert_eq!(fmt_latency(1.234), "1.23");
        assert_eq!(fmt_latency(123.4), "123");
    }

    /// A keep-alive server answering every request with a fixed body, for `n` connections.
    fn tiny_server(n: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().take(n) {
                let s = s.unwrap();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn paced_run_records_every_request_after_the_warmup() {
        let addr = tiny_server(3);
        wait_ready(addr, Duration::from_secs(2)).unwrap();
        let p = Paced {
            rate: 1000.0,
            duration: Duration::from_millis(200),
            warmup: Duration::from_millis(50),
            conns: 2,
            timeout: Duration::from_secs(2),
        };
        let r = run_paced(addr, &p).unwrap();
        assert_eq!(r.errors, 0);
        assert_eq!(r.latency_ms.len(), 200);
        let (lat, svc) = (r.latency().unwrap(), r.service().unwrap());
        assert!(lat.p50 >= svc.p50 && lat.p50 < 50.0, "{lat:?} {svc:?}");
    }

    #[test]
    fn holds_idle_connections() {
        let addr = tiny_server(10);
        let held = open_idle(addr, 10, Duration::from_secs(2)).unwrap();
        assert_eq!(held.len(), 10);
    }
}
