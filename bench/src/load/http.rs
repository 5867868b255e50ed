//! HTTP/1.1 by hand, as loadgen's clients speak it: a response head read off the socket, one
//! GET over a new connection (the probe, slow requests, and the readiness probes of
//! hooks/tests/e2e/load.rs), whether an idle keep-alive connection was closed by the server,
//! and the short words a failed request is counted under in the `detail` column. Nothing
//! here retries: a refused connect, a reset or a close before the answer during a switch
//! reaches the counts as it happened.

use std::collections::BTreeMap;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Failure reasons, counted, for the `detail` column.
#[derive(Debug, Default)]
pub(super) struct Reasons(pub(super) BTreeMap<String, u64>);

impl Reasons {
    pub(super) fn add(&mut self, why: &str) {
        *self.0.entry(why.to_string()).or_default() += 1;
    }
    pub(super) fn text(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The short word a failed request is counted under.
pub(super) fn reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        ConnectionAborted => "aborted".into(),
        BrokenPipe => "broken pipe".into(),
        UnexpectedEof => "closed before the answer".into(),
        TimedOut => "timeout".into(),
        _ => {
            let s = e.to_string();
            s.chars().take(60).collect()
        }
    }
}

/// A response head: status and whether the server closes the connection after it.
pub(super) struct Head {
    pub(super) status: u16,
    pub(super) close: bool,
    pub(super) content_length: Option<usize>,
    pub(super) release: String,
}

/// Reads a response head: the status line and the headers up to the blank line.
pub(super) async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Head> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {:.40}", line.trim())))?;
    let http10 = line.starts_with("HTTP/1.0");
    let mut head = Head {
        status,
        close: http10,
        content_length: None,
        release: String::new(),
    };
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok(head);
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => head.content_length = v.parse().ok(),
                "connection" => head.close = v.eq_ignore_ascii_case("close"),
                "x-release" => head.release = v.to_string(),
                _ => {}
            }
        }
    }
}

/// One GET over a new connection (`Connection: close`); the release that answered.
pub async fn one_request(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut r = BufReader::new(s);
    let head = read_head(&mut r).await?;
    let mut body = Vec::new();
    match head.content_length {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).await?;
        }
        None => {
            r.read_to_end(&mut body).await?;
        }
    }
    if head.status != 200 {
        return Err(std::io::Error::other(format!("HTTP {}", head.status)));
    }
    Ok(head.release)
}

/// Whether the peer closed (or reset) an idle connection: readable with nothing to read.
pub(super) fn peer_closed(s: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match s.try_read(&mut byte) {
        Ok(_) => true, // EOF, or bytes nobody asked for: either way, not reusable
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[cfg(test)]
mod tests;
