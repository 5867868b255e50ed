//! The zero-loss handover, end to end with the real binary: instance A serves a
//! passed socket under load, instance B starts on the same socket, A gets
//! SIGTERM and drains while B takes over. No client may see a failure.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{App, HttpConn, Notify, Resp, Ws, get, listener, ws_connect};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use sample_app::BODY_LEN;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

const LONG: Duration = Duration::from_secs(10);
const REQ_TIMEOUT: Duration = Duration::from_secs(5);
const DRAIN_BUDGET_MS: u64 = 6000;

#[derive(Default)]
struct Log {
    /// (finished at, serving pid) of every successful request.
    ok: Mutex<Vec<(Instant, u32)>>,
    failures: Mutex<Vec<String>>,
}

impl Log {
    fn record(&self, who: &str, r: Result<Resp, String>) -> Option<Resp> {
        match r {
            Ok(resp) if resp.status == 200 && resp.body.len() == BODY_LEN => {
                self.ok.lock().unwrap().push((Instant::now(), resp.pid()));
                Some(resp)
            }
            Ok(resp) => {
                self.fail(format!("{who}: status {} body {:?}", resp.status, resp.text()));
                None
            }
            Err(e) => {
                self.fail(format!("{who}: {e}"));
                None
            }
        }
    }

    fn fail(&self, what: String) {
        eprintln!("FAILURE {what}");
        self.failures.lock().unwrap().push(what);
    }
}

async fn timed<T>(f: impl Future<Output = std::io::Result<T>>) -> Result<T, String> {
    match timeout(REQ_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// A new connection for every request (like `ab` without -k).
async fn fresh_client(id: usize, addr: SocketAddr, log: Arc<Log>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        log.record(&format!("fresh-{id}"), timed(get(addr, "/")).await);
        sleep(Duration::from_millis(4)).await;
    }
}

/// One keep-alive connection, no retries: a failed request is a failure. It
/// only reconnects after the server said `Connection: close`.
async fn keepalive_client(id: usize, addr: SocketAddr, log: Arc<Log>, stop: Arc<AtomicBool>) -> usize {
    let who = format!("keepalive-{id}");
    let mut conn: Option<HttpConn> = None;
    let mut connections = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match timed(HttpConn::connect(addr)).await {
                Ok(c) => {
                    connections += 1;
                    conn.insert(c)
                }
                Err(e) => {
                    log.fail(format!("{who}: connect: {e}"));
                    continue;
                }
            },
        };
        match log.record(&who, timed(c.get("/")).await) {
            Some(r) if !r.closes() => {}
            _ => conn = None,
        }
        sleep(Duration::from_millis(4)).await;
    }
    connections
}

#[derive(Debug, Default)]
struct WsOutcome {
    echoes: usize,
    close_code: Option<u16>,
    errors: Vec<String>,
}

/// Sends a message every 40 ms and checks the echoes until the server closes.
async fn ws_client(mut ws: Ws, stop: Arc<AtomicBool>) -> WsOutcome {
    let mut out = WsOutcome::default();
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    loop {
        tokio::select! {
            _ = tick.tick(), if out.close_code.is_none() => {
                if stop.load(Ordering::Relaxed) {
                    out.errors.push("still open when the load stopped".to_owned());
                    return out;
                }
                sent += 1;
                if let Err(e) = ws.send(Message::text(format!("m{sent}"))).await {
                    out.errors.push(format!("send: {e}"));
                    return out;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    out.echoes += 1;
                    if t.as_str() != format!("m{}", out.echoes) {
                        out.errors.push(format!("echo {} is {t:?}", out.echoes));
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    out.close_code = Some(f.map_or(1005, |f| u16::from(f.code)));
                    // Keep polling: that sends our close reply and sees the end.
                }
                Some(Ok(other)) => out.errors.push(format!("unexpected {other:?}")),
                Some(Err(e)) => {
                    out.errors.push(format!("error: {e}"));
                    return out;
                }
                None => {
                    if out.close_code.is_none() {
                        out.errors.push("ended without a close frame".to_owned());
                    }
                    return out;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_under_load_loses_nothing() {
    // The test plays systemd: it owns the listening socket and passes it on.
    let (socket, addr) = listener();
    let budget = DRAIN_BUDGET_MS.to_string();
    let env_a = [
        ("RELEASE", "vA"),
        ("INSTANCE", "a"),
        ("SAMPLE_DRAIN_TIMEOUT_MS", budget.as_str()),
        ("SAMPLE_HARD_DEADLINE_MS", "8000"),
    ];
    let mut notify_a = Notify::new();
    let mut a = App::on_socket(&socket, &notify_a, &env_a);
    notify_a.wait_for("READY=1", LONG).await.expect("A: no READY=1");

    let log = Arc::new(Log::default());
    let stop = Arc::new(AtomicBool::new(false));

    // WebSockets and slow requests, all on A (the only instance yet).
    let mut wss = Vec::new();
    for _ in 0..3 {
        let (ws, greeting) = ws_connect(addr).await.expect("ws connect");
        assert_eq!(greeting, "vA");
        wss.push(tokio::spawn(ws_client(ws, stop.clone())));
    }
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut c = HttpConn::connect(addr).await.unwrap();
        c.send_raw(b"GET /?sleep_ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let sent = Instant::now();
        slow.push(tokio::spawn(async move {
            (timed(c.read_response()).await, sent.elapsed())
        }));
    }
    // Accept order is FIFO: once this is answered by A, A accepted the above.
    assert_eq!(get(addr, "/version").await.unwrap().pid(), a.pid);

    let mut load = Vec::new();
    for i in 0..2 {
        load.push(tokio::spawn(fresh_client(i, addr, log.clone(), stop.clone())));
    }
    let mut keepalive = Vec::new();
    for i in 0..2 {
        keepalive.push(tokio::spawn(keepalive_client(i, addr, log.clone(), stop.clone())));
    }
    sleep(Duration::from_millis(300)).await;

    // B starts on the same socket.
    let mut notify_b = Notify::new();
    let mut b = App::on_socket(&socket, &notify_b, &[("RELEASE", "vB"), ("INSTANCE", "b")]);
    notify_b.wait_for("READY=1", LONG).await.expect("B: no READY=1");
    sleep(Duration::from_millis(200)).await;

    // A drains.
    let term = Instant::now();
    a.signal(Signal::SIGTERM);
    notify_a
        .wait_for("STOPPING=1", LONG)
        .await
        .expect("A: no STOPPING=1");
    sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);

    for t in load {
        t.await.unwrap();
    }
    let mut ka_connections = 0;
    for t in keepalive {
        ka_connections += t.await.unwrap();
    }

    // Every slow request in flight at SIGTERM finished, on A, and told its
    // client to leave.
    for t in slow {
        let (r, took) = t.await.unwrap();
        let r = r.expect("slow request failed");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), BODY_LEN);
        assert_eq!(r.pid(), a.pid, "slow request served by A");
        assert!(r.closes(), "finished during the drain: Connection: close");
        assert!(took >= Duration::from_millis(1500));
    }

    // Every WebSocket on A was closed with 1012, cleanly.
    for t in wss {
        let o = t.await.unwrap();
        assert_eq!(o.close_code, Some(1012), "{o:?}");
        assert!(o.errors.is_empty(), "{o:?}");
        assert!(o.echoes > 0, "{o:?}");
    }

    // A exited 0 within its drain budget.
    let code = a.wait(Duration::from_millis(DRAIN_BUDGET_MS)).await;
    assert_eq!(code, Some(0), "A's exit code");
    assert!(term.elapsed() < Duration::from_millis(DRAIN_BUDGET_MS));
    let a_status = notify_a.lines();
    assert!(
        a_status.iter().any(|l| l.starts_with("STATUS=draining: ")),
        "{a_status:?}"
    );
    let a_log = a.stderr_all().await;
    assert!(a_log.contains("drain finished"), "{a_log}");

    // Zero failures, and real traffic on both sides of the handover.
    let failures = log.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:#?}",
        failures.len()
    );
    let ok = log.ok.lock().unwrap().clone();
    let by_a_before = ok.iter().filter(|(t, p)| *t < term && *p == a.pid).count();
    let by_b_after = ok.iter().filter(|(t, p)| *t > term && *p == b.pid).count();
    let by_a_after = ok.iter().filter(|(t, p)| *t > term && *p == a.pid).count();
    eprintln!(
        "{} requests ok: {by_a_before} by A before SIGTERM, {by_a_after} by A after, {by_b_after} by B after; {ka_connections} keep-alive connections",
        ok.len()
    );
    assert!(ok.len() >= 40, "too little load to mean anything: {}", ok.len());
    assert!(by_a_before > 0 && by_b_after > 0);
    assert!(ka_connections >= 2);

    // B keeps serving, including new WebSockets.
    let r = get(addr, "/").await.unwrap();
    assert_eq!((r.status, r.pid()), (200, b.pid));
    let (ws, greeting) = ws_connect(addr).await.unwrap();
    assert_eq!(greeting, "vB");
    drop(ws);
    b.signal(Signal::SIGTERM);
    assert_eq!(b.wait(LONG).await, Some(0));
}
