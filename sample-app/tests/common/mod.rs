//! Test helpers: a tiny HTTP/1.1 client, a WebSocket client, an sd_notify
//! receiver, and a way to start the real binary on a passed socket the way
//! systemd does.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sample-app");

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The server announced it will close the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn pid(&self) -> u32 {
        self.header("x-pid")
            .and_then(|p| p.parse().ok())
            .expect("response without a numeric X-Pid")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 client connection: no retries, no pooling. Any error is
/// reported as is.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(s),
        })
    }

    /// Sends `GET path` and reads the whole response.
    pub async fn get(&mut self, path: &str) -> std::io::Result<Resp> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: sample-app-test\r\n\r\n");
        self.send_raw(req.as_bytes()).await?;
        self.read_response().await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes).await
    }

    pub async fn read_response(&mut self) -> std::io::Result<Resp> {
        use std::io::{Error, ErrorKind};
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(Error::new(ErrorKind::UnexpectedEof, "EOF in headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| Error::new(ErrorKind::InvalidData, format!("bad header {l:?}")))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if status != 101 {
            let len: usize = resp
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no content-length"))?;
            resp.body = vec![0; len];
            self.stream.read_exact(&mut resp.body).await?;
        }
        Ok(resp)
    }

    /// True if the server closed the connection (EOF) within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(
            timeout(within, self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Resp> {
    let mut c = HttpConn::connect(addr).await?;
    c.get(path).await
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `/ws` and returns it with the greeting (the release).
pub async fn ws_connect(addr: SocketAddr) -> Result<(Ws, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    assert!(resp.headers().contains_key("x-release"), "101 without X-Release");
    let greeting = match timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => t.to_string(),
        other => return Err(format!("no greeting: {other:?}")),
    };
    Ok((ws, greeting))
}

/// A listening socket on 127.0.0.1 with an ephemeral port, to pass to children.
pub fn listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// An sd_notify endpoint owned by the test (a unix datagram socket).
pub struct Notify {
    pub path: PathBuf,
    rx: mpsc::UnboundedReceiver<(Instant, String)>,
    /// Every line received so far, with its arrival time.
    pub seen: Vec<(Instant, String)>,
}

impl Notify {
    pub fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "sa-notify-{}-{}-{nanos}.sock",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                let now = Instant::now();
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    if tx.send((now, line.to_owned())).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            path,
            rx,
            seen: Vec::new(),
        }
    }

    fn drain_now(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
    }

    /// Waits up to `within` for a line equal to `line`; returns when it arrived.
    pub async fn wait_for(&mut self, line: &str, within: Duration) -> Option<Instant> {
        self.drain_now();
        if let Some((t, _)) = self.seen.iter().find(|(_, l)| l == line) {
            return Some(*t);
        }
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((t, l))) => {
                    let hit = l == line;
                    self.seen.push((t, l));
                    if hit {
                        return Some(t);
                    }
                }
                _ => return None,
            }
        }
    }

    /// All lines received so far.
    pub fn lines(&mut self) -> Vec<String> {
        self.drain_now();
        self.seen.iter().map(|(_, l)| l.clone()).collect()
    }

    pub fn has(&mut self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A running instance of the binary.
pub struct App {
    pub child: Child,
    pub pid: u32,
    /// stderr lines, collected in the background (also echoed for diagnosis).
    pub stderr: Arc<Mutex<Vec<String>>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Starts the binary the way systemd's socket activation does: `fd` as fd 3,
    /// `LISTEN_FDS=1`, `LISTEN_PID` = the child's pid (set by a shell that then
    /// execs the binary, so the pid stays the same), `NOTIFY_SOCKET` if given.
    /// The environment is otherwise empty except for `env`.
    pub fn spawn(fd: Option<RawFd>, notify: Option<&Notify>, env: &[(&str, &str)], args: &[&str]) -> App {
        let mut cmd = if let Some(fd) = fd {
            let mut c = Command::new("/bin/sh");
            c.env_clear()
                .arg("-c")
                .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
                .arg(BIN)
                .args(args)
                .env("LISTEN_FDS", "1")
                .env("LISTEN_FDNAMES", "http");
            // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    if fd != 3 && nix::libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // dup2 clears FD_CLOEXEC on the copy, but not when fd == 3.
                    if nix::libc::fcntl(3, nix::libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            c
        } else {
            let mut c = Command::new(BIN);
            c.env_clear().args(args);
            c
        };
        cmd.env("PATH", "/usr/bin:/bin")
            .env("RUST_LOG", "info,sample_app=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", &n.path);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sample-app");
        let pid = child.id().expect("child pid");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stderr.take().unwrap();
        let lines = stderr.clone();
        let stderr_task = tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                eprintln!("[sample-app {pid}] {l}");
                lines.lock().unwrap().push(l);
            }
        });
        App {
            child,
            pid,
            stderr,
            stderr_task: Some(stderr_task),
        }
    }

    /// Starts the binary on `listener` (see [`App::spawn`]).
    pub fn on_socket(l: &std::net::TcpListener, notify: &Notify, env: &[(&str, &str)]) -> App {
        Self::spawn(Some(l.as_raw_fd()), Some(notify), env, &[])
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig).unwrap();
    }

    /// Waits for the exit; returns the exit code (None if killed by a signal).
    pub async fn wait(&mut self, within: Duration) -> Option<i32> {
        match timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap().code(),
            Err(_) => panic!("sample-app {} did not exit within {within:?}", self.pid),
        }
    }

    /// stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// All of stderr, once the process has exited (waits for EOF).
    pub async fn stderr_all(&mut self) -> String {
        if let Some(t) = self.stderr_task.take() {
            let _ = timeout(Duration::from_secs(5), t).await;
        }
        self.stderr_text()
    }

    /// Waits until a stderr line contains `needle`; returns that line.
    pub async fn wait_stderr(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.stderr.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
