//! The clients of loadgen, after hooks/tests/e2e/load.rs: a paced probe (a new connection per
//! request, every request recorded), keep-alive clients that never retry, WebSocket clients
//! (close codes, reconnects), slow requests on demand, and ab / wrk as child processes.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::data::{Control, Counts, Mark, Sample, Summary, WsCounts, parse_control, write_samples};

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

/// Failure reasons, counted, for the `detail` column.
#[derive(Debug, Default)]
struct Reasons(BTreeMap<String, u64>);

impl Reasons {
    fn add(&mut self, why: &str) {
        *self.0.entry(why.to_string()).or_default() += 1;
    }
    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn reason(e: &std::io::Error) -> String {
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
struct Head {
    status: u16,
    close: bool,
    content_length: Option<usize>,
    release: String,
}

async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Head> {
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

struct Probe {
    samples: Vec<Sample>,
    reasons: Reasons,
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
fn probe_on_its_own_thread(
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

/// A keep-alive connection, one request every `interval`, never retried. A `Connection:
/// close` answer is honoured (reconnect for the next request); anything else that ends a
/// request without a 200 is a failure.
async fn keepalive_client(
    port: u16,
    interval: Duration,
    timeout: Duration,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> (Counts, Reasons) {
    let mut c = Counts::default();
    let mut reasons = Reasons::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let t_ms = clock.now_ms();
        c.requests += 1;
        // Like every HTTP client's pool: a connection the server has closed while it sat idle
        // (its FIN is in) is not reused. Only a close that crosses the request is a failure.
        if let Some(r) = &conn
            && peer_closed(r.get_ref())
        {
            conn = None;
        }
        let attempt = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                conn = Some(BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?));
            }
            let r = conn.as_mut().expect("connected above");
            r.get_mut()
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await?;
            let head = read_head(r).await?;
            let mut body = vec![0; head.content_length.unwrap_or(0)];
            r.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(head)
        })
        .await;
        let why = match attempt {
            Ok(Ok(head)) if head.status == 200 => {
                if head.close || head.content_length.is_none() {
                    conn = None;
                }
                None
            }
            Ok(Ok(head)) => Some(format!("HTTP {}", head.status)),
            Ok(Err(e)) => Some(reason(&e)),
            Err(_) => Some("timeout".into()),
        };
        if let Some(why) = why {
            conn = None;
            c.failed += 1;
            c.failure_t_ms.push(t_ms);
            reasons.add(&why);
        }
    }
    (c, reasons)
}

/// A WebSocket client connection with buffers for thousands of clients in one process
/// (tungstenite reserves 128 KiB per connection to read into by default: 1.3 GB for 10,000).
async fn connect_ws(
    url: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    tokio_tungstenite::connect_async_with_config(url, Some(config), false).await
}

/// Whether the peer closed (or reset) an idle connection: readable with nothing to read.
fn peer_closed(s: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match s.try_read(&mut byte) {
        Ok(_) => true, // EOF, or bytes nobody asked for: either way, not reusable
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// A WebSocket client that stays connected, echoes every 100 ms, and reconnects after the
/// server closes (expected: code 1012, service restart).
async fn ws_client(
    port: u16,
    interval: Duration,
    connected: mpsc::UnboundedSender<()>,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> WsCounts {
    let mut c = WsCounts {
        clients: 1,
        ..Default::default()
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    // When the server last closed with 1012: the next greeting ends the reconnect.
    let mut closed_at: Option<f64> = None;
    let mut last_release: Option<String> = None;
    let mut connected = Some(connected);
    'outer: while !*stop.borrow() {
        let t_ms = clock.now_ms();
        let connect = tokio::time::timeout(Duration::from_secs(10), connect_ws(&url)).await;
        let mut ws = match connect {
            Ok(Ok((ws, _))) => ws,
            failed => {
                if std::env::var_os("LOADGEN_DEBUG").is_some() {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no handshake within 10 s".into(),
                    };
                    eprintln!("loadgen: websocket connect failed at {t_ms:.0} ms: {why}");
                }
                c.abnormal += 1;
                c.failure_t_ms.push(t_ms);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => break 'outer,
                }
                continue;
            }
        };
        c.sessions += 1;
        if let Some(tx) = connected.take() {
            let _ = tx.send(());
        }
        let mut n = 0u64;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let t = t.to_string();
                        if t.starts_with("echo ") {
                            c.echoes += 1
                        } else {
                            if let Some(at) = closed_at.take() {
                                c.reconnects.push((at, clock.now_ms() - at));
                            }
                            if !c.releases_seen.contains(&t) {
                                c.releases_seen.push(t.clone())
                            }
                            last_release = Some(t);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        match frame.map(|f| u16::from(f.code)) {
                            Some(1012) => { c.closes_1012 += 1; closed_at = Some(clock.now_ms()) }
                            Some(code) => { c.other_closes.push(code); c.failure_t_ms.push(clock.now_ms()) }
                            None => { c.other_closes.push(1005); c.failure_t_ms.push(clock.now_ms()) }
                        }
                        // Answer the close and let the old connection finish on its own while
                        // this client reconnects at once, as browsers do.
                        tokio::spawn(async move {
                            let _ = ws.close(None).await;
                            while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {}
                        });
                        continue 'outer;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        c.abnormal += 1;
                        c.failure_t_ms.push(clock.now_ms());
                        break;
                    }
                },
                _ = tick.tick() => {
                    n += 1;
                    if ws.send(Message::text(format!("echo {n}"))).await.is_err() {
                        c.abnormal += 1;
                        c.failure_t_ms.push(clock.now_ms());
                        break;
                    }
                }
                _ = stop.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    break 'outer;
                }
            }
        }
    }
    if let Some(r) = last_release {
        c.last_releases.insert(r, 1);
    }
    c
}

/// Raises this process's soft limit of open files to its hard limit: thousands of clients
/// need thousands of descriptors, and the soft limit is often 1,024.
pub fn raise_file_limit() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// ab or wrk, run until told to stop (SIGINT makes both print their results).
struct Tool {
    name: &'static str,
    child: tokio::process::Child,
}

impl Tool {
    fn spawn(name: &'static str, args: &[String]) -> Result<Tool> {
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
    async fn finish(mut self) -> (String, String, bool) {
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

/// Follows the control file (or stdin) on a thread; sends each complete line with the time it
/// was read.
fn follow_control(source: String, clock: Clock, tx: mpsc::UnboundedSender<(String, f64)>) -> Result<()> {
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

/// Runs every client until the duration is over or a `stop` line comes; writes samples.csv,
/// marks.json, summary.json (and ab.txt, wrk.txt) into `cfg.out`.
pub async fn run(cfg: Config) -> Result<Summary> {
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("create {}", cfg.out.display()))?;
    let clock = Clock::start();
    let (stop_tx, stop_rx) = watch::channel(false);
    let url = format!("http://127.0.0.1:{}/", cfg.port);
    let secs = cfg.duration.as_secs().max(1) + 5;

    let ab = match cfg.ab {
        Some(c) => Some(Tool::spawn(
            "ab",
            &[
                "-r".into(),
                "-c".into(),
                c.to_string(),
                "-t".into(),
                secs.to_string(),
                // After -t, which would cap the count at 50000.
                "-n".into(),
                "5000000".into(),
                url.clone(),
            ],
        )?),
        None => None,
    };
    let wrk = match cfg.wrk {
        Some(c) => Some(Tool::spawn(
            "wrk",
            &[
                "-t".into(),
                "2".into(),
                "-c".into(),
                c.to_string(),
                "-d".into(),
                format!("{secs}s"),
                // A stalled request is slow, not failed: the probe shows the stall.
                "--timeout".into(),
                "10s".into(),
                url.clone(),
            ],
        )?),
        None => None,
    };
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
            let c = h.await?;
            all.clients += c.clients;
            all.sessions += c.sessions;
            all.echoes += c.echoes;
            all.closes_1012 += c.closes_1012;
            all.other_closes.extend(c.other_closes);
            all.abnormal += c.abnormal;
            all.failure_t_ms.extend(c.failure_t_ms);
            for r in c.releases_seen {
                if !all.releases_seen.contains(&r) {
                    all.releases_seen.push(r);
                }
            }
            all.reconnects.extend(c.reconnects);
            for (r, n) in c.last_releases {
                *all.last_releases.entry(r).or_default() += n;
            }
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

#[cfg(test)]
mod tests;
