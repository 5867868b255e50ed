//! Test harness: the real `handoff-front` binary, in-test upstreams, clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Generous bound for anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(10);

pub async fn soon<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(SOON, f).await.expect("timed out")
}

/// A running front.
pub struct Front {
    pub child: Child,
    pub addr: SocketAddr,
    pub control: PathBuf,
    pub dir: PathBuf,
    pub log: mpsc::UnboundedReceiver<String>,
    /// Its standard output's lines: the access log.
    pub access: mpsc::UnboundedReceiver<String>,
    /// What the front logged before it was ready.
    pub startup: Vec<String>,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "handoff-front-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_handoff-front"))
}

impl Front {
    /// Starts a front routed to `route` (release, upstream), with extra flags.
    pub async fn start(route: Option<(&str, SocketAddr)>, extra: &[&str]) -> Front {
        Self::start_with_file_limit(route, extra, None).await
    }

    /// Like [`Front::start`], with the process's file limit (soft and hard) set to `files`.
    pub async fn start_with_file_limit(
        route: Option<(&str, SocketAddr)>,
        extra: &[&str],
        files: Option<u64>,
    ) -> Front {
        let dir = temp_dir();
        let routes = dir.join("routes.json");
        if let Some((r, a)) = route {
            std::fs::write(&routes, format!(r#"{{"release":"{r}","upstream":"{a}"}}"#)).unwrap();
        }
        let control = dir.join("control.sock");
        let mut cmd = bin();
        if let Some(n) = files {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd
            .args(["--bind", "127.0.0.1:0", "--id", "front-a", "-v"])
            .arg("--routes")
            .arg(&routes)
            .arg("--control")
            .arg(&control)
            .args(extra)
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (to_access, access) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = to_access.send(line);
            }
        });
        let (tx, mut log) = mpsc::unbounded_channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[front] {line}");
                let _ = tx.send(line);
            }
        });
        let mut startup = Vec::new();
        let addr = loop {
            let line = soon(log.recv()).await.expect("front exited before ready");
            if line.contains(" ready") {
                let s = line.split("addrs=[").nth(1).unwrap();
                break s.split(']').next().unwrap().parse().unwrap();
            }
            startup.push(line);
        };
        Front {
            child,
            addr,
            control,
            dir,
            log,
            access,
            startup,
        }
    }

    /// Waits for a log line containing `needle`.
    pub async fn wait_log(&mut self, needle: &str) -> String {
        loop {
            let line = soon(self.log.recv()).await.expect("front log ended");
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The next `n` access log lines, each parsed.
    pub async fn access_lines(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let line = soon(self.access.recv())
                .await
                .expect("front's standard output ended");
            out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")));
        }
        out
    }

    /// One control request.
    pub async fn control(&self, req: &str) -> Value {
        control_at(&self.control, req).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Waits for the process to exit; its exit code.
    pub async fn wait_exit(&mut self) -> i32 {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().expect("exit code");
            }
            assert!(tokio::time::Instant::now() < deadline, "front did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub type UpBody = BoxBody<Bytes, Infallible>;

pub fn full(s: impl Into<Bytes>) -> UpBody {
    Full::new(s.into()).boxed()
}

/// An in-test upstream (one "release").
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub conns: AtomicUsize,
    /// Requests received.
    pub requests: AtomicUsize,
    /// `/hold` arrived (notified once per request).
    pub holding: Notify,
    /// Releases `/hold`.
    pub release_hold: Notify,
    /// `/upload` saw its first body frame.
    pub first_frame: Notify,
    /// Lets `/stream` send its second chunk.
    pub stream_go: Notify,
    /// A request carried both Content-Length and Transfer-Encoding.
    pub saw_cl_and_te: AtomicBool,
    /// Close codes received from the front on WebSockets.
    pub ws_closes: Mutex<Vec<Option<u16>>>,
    pub ws_closed: Notify,
}

impl Upstream {
    pub async fn start(name: &str) -> Arc<Upstream> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Arc::new(Upstream {
            name: name.to_owned(),
            addr: l.local_addr().unwrap(),
            conns: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            holding: Notify::new(),
            release_hold: Notify::new(),
            first_frame: Notify::new(),
            stream_go: Notify::new(),
            saw_cl_and_te: AtomicBool::new(false),
            ws_closes: Mutex::new(Vec::new()),
            ws_closed: Notify::new(),
        });
        let u = up.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                u.conns.fetch_add(1, Ordering::SeqCst);
                let u = u.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let u = u.clone();
                        async move { Ok::<_, Infallible>(u.handle(req).await) }
                    });
                    // HTTP/1.1 (with upgrades) or, from a client that starts with its preface,
                    // HTTP/2 (the front's --upstream h2c).
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(s), svc)
                            .await;
                });
            }
        });
        up
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<UpBody> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if req.headers().contains_key(header::CONTENT_LENGTH)
            && req.headers().contains_key(header::TRANSFER_ENCODING)
        {
            self.saw_cl_and_te.store(true, Ordering::SeqCst);
        }
        let mut resp = match req.uri().path() {
            "/headers" => {
                let mut s = String::new();
                for (k, v) in req.headers() {
                    s.push_str(&format!("{k}: {}\n", v.to_str().unwrap()));
                }
                let mut r = Response::new(full(s));
                let h = r.headers_mut();
                h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
                h.insert(header::CONNECTION, HeaderValue::from_static("x-up-hop"));
                h.insert("x-up-hop", HeaderValue::from_static("1"));
                h.insert("x-handoff-release", HeaderValue::from_static("forged"));
                h.insert("x-app", HeaderValue::from_static("kept"));
                r
            }
            "/hold" => {
                self.holding.notify_one();
                self.release_hold.notified().await;
                Response::new(full(format!("{} held", self.name)))
            }
            // What a gRPC server answers: its body, then trailers; the head tells the protocol
            // the request came in and its TE.
            "/trailers" => {
                let te = req
                    .headers()
                    .get(header::TE)
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = format!("{} {:?} te={te:?}", self.name, req.version());
                let mut trailers = hyper::HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let frames = futures_util::stream::iter([
                    Ok::<_, Infallible>(Frame::data(Bytes::from(body))),
                    Ok(Frame::trailers(trailers)),
                ]);
                Response::new(BodyExt::boxed(StreamBody::new(frames)))
            }
            "/stream" => {
                let u = self.clone();
                let s = futures_util::stream::unfold(0u8, move |n| {
                    let u = u.clone();
                    async move {
                        match n {
                            0 => Some((Ok::<_, Infallible>(Frame::data(Bytes::from("first\n"))), 1)),
                            1 => {
                                u.stream_go.notified().await;
                                Some((Ok(Frame::data(Bytes::from("second\n"))), 2))
                            }
                            _ => None,
                        }
                    }
                });
                Response::new(BodyExt::boxed(StreamBody::new(s)))
            }
            "/upload" => {
                let mut body = req.into_body();
                let mut n = 0usize;
                let mut first = true;
                while let Some(f) = body.frame().await {
                    let Ok(f) = f else {
                        return Response::new(full("upload aborted"));
                    };
                    if let Some(d) = f.data_ref() {
                        n += d.len();
                        if first && !d.is_empty() {
                            first = false;
                            self.first_frame.notify_one();
                        }
                    }
                }
                Response::new(full(format!("{n}")))
            }
            "/ws" => return self.ws(&mut req),
            _ => {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().len())
                    .unwrap_or(0);
                Response::new(full(format!("{} body={body}", self.name)))
            }
        };
        resp.headers_mut()
            .insert("x-upstream", HeaderValue::from_str(&self.name).unwrap());
        resp
    }

    fn ws(self: Arc<Self>, req: &mut Request<Incoming>) -> Response<UpBody> {
        assert!(
            !req.headers().contains_key(header::SEC_WEBSOCKET_EXTENSIONS),
            "extensions must be stripped"
        );
        let key = req.headers()[header::SEC_WEBSOCKET_KEY].clone();
        let on = hyper::upgrade::on(req);
        let u = self.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(on.await.unwrap());
            let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            ws.send(Message::text(u.name.clone())).await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Text(t) if t.as_str() == "bye" => {
                        let _ = ws
                            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                                code: 4000.into(),
                                reason: "bye".into(),
                            }))
                            .await;
                    }
                    Message::Text(t) if t.as_str() == "drop" => return,
                    m @ (Message::Text(_) | Message::Binary(_)) => {
                        let _ = ws.send(m).await;
                    }
                    Message::Close(f) => {
                        u.ws_closes.lock().unwrap().push(f.map(|f| u16::from(f.code)));
                        u.ws_closed.notify_one();
                    }
                    _ => {}
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
        );
        r
    }
}

/// One control request on the socket at `path`.
pub async fn control_at(path: &std::path::Path, req: &str) -> Value {
    let mut s = UnixStream::connect(path).await.unwrap();
    s.write_all(format!("{req}\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

/// A free loopback port with nothing listening.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Sends raw bytes on a new connection and reads until EOF (or `SOON`).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = soon(s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/2 client connection to `addr`, with prior knowledge (h2c); the task driving it ends
/// when the connection does.
pub async fn client_h2(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<UpBody>,
    tokio::task::JoinHandle<()>,
) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

/// A request to `path` for an HTTP/2 client (the authority in the URI) with `te: trailers`.
pub fn get_h2(path: &str) -> Request<UpBody> {
    Request::builder()
        .uri(format!("http://example.test{path}"))
        .version(hyper::Version::HTTP_2)
        .header(header::TE, "trailers")
        .body(full(""))
        .unwrap()
}

/// A keep-alive HTTP/1.1 client connection to `addr`.
pub async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<UpBody> {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

pub fn get(path: &str) -> Request<UpBody> {
    Request::builder()
        .uri(path)
        .header(header::HOST, "example.test")
        .body(full(""))
        .unwrap()
}

pub async fn text(resp: Response<Incoming>) -> String {
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// GET on a new connection: status and body.
pub async fn fetch(addr: SocketAddr, path: &str) -> (StatusCode, String, hyper::HeaderMap) {
    let mut c = client(addr).await;
    let r = soon(c.send_request(get(path))).await.unwrap();
    let (st, h) = (r.status(), r.headers().clone());
    (st, soon(text(r)).await, h)
}
