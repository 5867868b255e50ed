//! The control channel: a unix socket (mode 0600) on which the hooks send one
//! JSON request line and read one JSON response line; then the connection
//! closes. Connections are served concurrently, each in its own task, so a
//! slow control client never blocks proxying or another control client.
//!
//! * `{"op":"route","release":"v2","upstream":"127.0.0.1:21001","drain_ms":30000}`:
//!   new requests and WebSocket upgrades go to v2 from now on; then every other
//!   upstream is drained (see [`crate::route::Upstream::drain`]) and the reply
//!   says what was left:
//!   `{"ok":true,"release":"v2","drained":[{"release":"v1","requests_left":0,"websockets_closed":3}],"ms":12}`.
//!   Routing to the current release and address again replies at once with
//!   nothing drained. `drain_ms` defaults to `--drain-timeout-ms`.
//! * `{"op":"status"}`: `{"ok":true,"id":"…","release":"v2","upstream":"127.0.0.1:21001",
//!   "connections":N,"in_flight":{"v2":3},"websockets":{"v2":5}}`.
//! * anything else: `{"ok":false,"error":"…"}`.
//!
//! The hooks write the routes file themselves before `route`; the front never
//! writes files.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::join_all;
use nix::sys::stat::{Mode, umask};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::route::{Route, Switch};
use crate::state::Shared;

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// How long a control client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Command {
    Route {
        release: String,
        upstream: String,
        drain_ms: Option<u64>,
    },
    Status,
}

/// Binds the control socket: removes a stale socket file first, creates the
/// new one with mode 0600 (umask while binding, then chmod).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("control socket {}: cannot remove the old file", path.display()));
        }
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let res = std::os::unix::net::UnixListener::bind(path);
    umask(old);
    let l = res.with_context(|| format!("control socket {}: cannot bind", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("control socket {}: chmod 0600", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(UnixListener::from_std(l)?)
}

/// Serves control connections until the task is dropped.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>, default_drain: Duration) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &shared, default_drain).await {
                        debug!("control connection: {e:#}");
                    }
                });
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, shared: &Shared, default_drain: Duration) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_LINE));
    tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line))
        .await
        .context("no request line within 10 s")??;
    let reply = answer(line.trim(), shared, default_drain).await;
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await?;
    Ok(())
}

fn error(msg: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": msg.to_string()})
}

/// Answers one request line.
pub async fn answer(line: &str, shared: &Shared, default_drain: Duration) -> Value {
    let cmd: Command = match serde_json::from_str(line) {
        Ok(c) => c,
        Err(e) => return error(format!("invalid request: {e}")),
    };
    match cmd {
        Command::Status => status(shared),
        Command::Route {
            release,
            upstream,
            drain_ms,
        } => {
            if release.is_empty() {
                return error("\"release\" is empty");
            }
            let upstream: SocketAddr = match upstream.parse() {
                Ok(a) => a,
                Err(e) => {
                    return error(format!(
                        "\"upstream\" {upstream:?} is not an IP:port address: {e}"
                    ));
                }
            };
            let budget = drain_ms.map_or(default_drain, Duration::from_millis);
            route(Route { release, upstream }, shared, budget).await
        }
    }
}

async fn route(route: Route, shared: &Shared, budget: Duration) -> Value {
    let t0 = Instant::now();
    let old = match shared.router.switch(&route) {
        Switch::Unchanged => {
            return json!({"ok": true, "release": route.release, "drained": [], "ms": 0});
        }
        Switch::Switched(old) => old,
    };
    info!(
        release = %route.release,
        upstream = %route.upstream,
        draining = ?old.iter().map(|u| u.release.as_str()).collect::<Vec<_>>(),
        "routed"
    );
    let drained = join_all(
        old.iter()
            .map(|u| u.drain(budget, shared.ws_close_timeout, shared.ws_close_rate)),
    )
    .await;
    shared.router.prune();
    let ms = t0.elapsed().as_millis() as u64;
    for d in &drained {
        if d.requests_left > 0 {
            warn!(
                release = %d.release,
                requests_left = d.requests_left,
                "drain budget of {} ms ran out with requests in flight",
                budget.as_millis()
            );
        } else {
            info!(release = %d.release, websockets_closed = d.websockets_closed, ms, "drained");
        }
    }
    json!({"ok": true, "release": route.release, "drained": drained, "ms": ms})
}

fn status(shared: &Shared) -> Value {
    let cur = shared.router.current();
    let (in_flight, websockets) = shared.router.counts();
    let open = shared.open();
    json!({
        "ok": true,
        "id": shared.id,
        "release": cur.as_ref().map(|u| u.release.clone()),
        "upstream": cur.as_ref().map(|u| u.addr.to_string()),
        "connections": open.http + open.ws,
        "in_flight": in_flight,
        "websockets": websockets,
    })
}
