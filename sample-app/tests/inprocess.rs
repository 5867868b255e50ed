//! In-process tests: `sample_app::run` on a 127.0.0.1:0 listener, with a
//! shutdown future the test controls.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{HttpConn, get, listener, ws_connect};
use futures_util::{SinkExt, StreamExt};
use sample_app::{BODY_LEN, Config, Outcome, fixed_body};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<Outcome>>,
}

impl Server {
    fn start(config: Config) -> Self {
        let (l, addr) = listener();
        let (tx, rx) = oneshot::channel::<()>();
        let config = Config {
            notify: false,
            ..config
        };
        let task = tokio::spawn(sample_app::run(vec![l], config, async {
            let _ = rx.await;
        }));
        Server {
            addr,
            stop: Some(tx),
            task,
        }
    }

    fn shutdown(&mut self) -> Instant {
        let _ = self.stop.take().unwrap().send(());
        Instant::now()
    }

    async fn outcome(self, within: Duration) -> Outcome {
        timeout(within, self.task)
            .await
            .expect("run() did not return in time")
            .unwrap()
            .expect("run() failed")
    }
}

fn cfg() -> Config {
    Config {
        release: "t-rel".into(),
        instance: "inst-a".into(),
        ..Config::default()
    }
}

/// Proves every connection opened before this call was accepted: the accept
/// queue is FIFO and served by one accept loop, so once a later connection
/// got an answer, the earlier ones were accepted.
async fn barrier(addr: SocketAddr) {
    let r = get(addr, "/version").await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn endpoints_round_trip() {
    let mut s = Server::start(cfg());
    let pid = std::process::id();
    let mut c = HttpConn::connect(s.addr).await.unwrap();

    let r = c.get("/").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), BODY_LEN);
    assert_eq!(r.text(), fixed_body("t-rel", pid, "inst-a"));
    assert!(r.text().contains(&format!("pid={pid:010}")));
    assert_eq!(r.header("x-release"), Some("t-rel"));
    assert_eq!(r.header("x-instance"), Some("inst-a"));
    assert_eq!(r.pid(), pid);
    assert!(!r.closes(), "keep-alive while serving");

    // Same keep-alive connection.
    let r = c.get("/healthz").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = c.get("/version").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "t-rel\n"));
    assert_eq!(r.header("x-instance"), Some("inst-a"));
    let r = c.get("/nope").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-release"), Some("t-rel"));
    assert_eq!(r.pid(), pid);
    let r = c.get("/ws").await.unwrap();
    assert_eq!(r.status, 426, "plain GET /ws is not an upgrade");

    c.send_raw(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let r = c.read_response().await.unwrap();
    assert_eq!(r.status, 405);

    // In-flight work: delayed, same body.
    let t = Instant::now();
    let r = c.get("/?sleep_ms=300").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), fixed_body("t-rel", pid, "inst-a"));
    let r = c.get("/?sleep_ms=abc").await.unwrap();
    assert_eq!(r.status, 400);

    drop(c);
    s.shutdown();
    let Outcome::Drained(rep) = s.outcome(Duration::from_secs(5)).await else {
        panic!("expected a clean drain")
    };
    assert_eq!(rep.requests, 8);
    assert_eq!(rep.dropped.total(), 0);
}

#[tokio::test]
async fn websocket_greets_and_echoes() {
    let mut s = Server::start(cfg());
    let (mut ws, greeting) = ws_connect(s.addr).await.unwrap();
    assert_eq!(greeting, "t-rel");
    ws.send(Message::text("hello")).await.unwrap();
    let m = timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let m = timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::binary(vec![1u8, 2, 3]));
    // Client-initiated close is answered.
    ws.close(None).await.unwrap();
    let end = timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if m.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap();
    assert!(end, "clean close expected");
    s.shutdown();
    let Outcome::Drained(rep) = s.outcome(Duration::from_secs(5)).await else {
        panic!("expected a clean drain")
    };
    assert_eq!(rep.websockets, 1);
}

#[tokio::test]
async fn healthz_503_when_configured_unhealthy() {
    let mut s = Server::start(Config {
        unhealthy: true,
        ..cfg()
    });
    let r = get(s.addr, "/healthz").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (503, "unhealthy\n"));
    let r = get(s.addr, "/").await.unwrap();
    assert_eq!(r.status, 200, "unhealthy still serves");
    s.shutdown();
    s.outcome(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn healthz_turns_503_after_the_configured_time() {
    let mut s = Server::start(Config {
        unhealthy_after_ms: Some(300),
        ..cfg()
    });
    let r = get(s.addr, "/healthz").await.unwrap();
    assert_eq!(r.status, 200, "healthy at first");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = get(s.addr, "/healthz").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (503, "unhealthy\n"));
    assert_eq!(get(s.addr, "/").await.unwrap().status, 200, "still serves");
    s.shutdown();
    s.outcome(Duration::from_secs(5)).await;
}

/// The whole drain protocol, observed from clients: listener closed at once,
/// lame duck (`Connection: close`, /healthz 503), in-flight request finished,
/// WebSocket closed with 1012 after the lame duck, clean outcome.
#[tokio::test]
async fn drain_protocol_step_by_step() {
    let lame_duck = Duration::from_millis(1200);
    let mut s = Server::start(Config {
        lame_duck_ms: lame_duck.as_millis() as u64,
        ..cfg()
    });
    let addr = s.addr;

    let mut keep = HttpConn::connect(addr).await.unwrap();
    assert_eq!(keep.get("/healthz").await.unwrap().status, 200);
    let (mut ws, _) = ws_connect(addr).await.unwrap();
    let mut slow = HttpConn::connect(addr).await.unwrap();
    slow.send_raw(b"GET /?sleep_ms=800 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let slow_sent = Instant::now();
    let slow_task = tokio::spawn(async move { slow.read_response().await });
    barrier(addr).await;

    let t0 = s.shutdown();

    // (1) The listener is closed at once: we held the only copy, so new
    // connections are refused.
    let refused = timeout(Duration::from_secs(2), async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "listener still open after shutdown");

    // (3) Lame duck on the keep-alive connection: still healthy (the health path speaks
    // for the host, which the successor serves) but Connection: close, then the server
    // closes it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = keep.get("/healthz").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert!(r.closes(), "lame duck must say Connection: close");
    assert!(
        keep.closed_within(Duration::from_secs(1)).await,
        "closed after Connection: close"
    );

    // (6) The WebSocket gets 1012, but only after the lame duck.
    let close = timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => {}
                other => panic!("websocket ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("no close frame");
    let waited = t0.elapsed();
    let frame = close.expect("close frame without a code");
    assert_eq!(frame.code, CloseCode::Restart);
    assert_eq!(u16::from(frame.code), 1012);
    assert!(
        waited >= lame_duck - Duration::from_millis(50),
        "closed too early: {waited:?}"
    );
    // Let tungstenite send our close reply.
    while let Some(Ok(_)) = ws.next().await {}

    // (5) The in-flight request finished, and told its client to leave.
    let r = timeout(Duration::from_secs(5), slow_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(slow_sent.elapsed() >= Duration::from_millis(800));
    assert_eq!(r.body.len(), BODY_LEN);
    assert!(r.closes());

    // (7) Clean outcome.
    let Outcome::Drained(rep) = s.outcome(Duration::from_secs(5)).await else {
        panic!("expected a clean drain")
    };
    assert_eq!(rep.open_at_shutdown.ws, 1);
    assert!(rep.open_at_shutdown.http >= 2, "{rep:?}");
    assert_eq!(rep.ws_close_acked, 1, "{rep:?}");
    assert_eq!(rep.ws_close_unacked, 0);
    assert_eq!(rep.dropped.total(), 0);
    assert!(rep.elapsed < Duration::from_secs(5), "{rep:?}");
}

/// A connection accepted before shutdown whose first request arrives after it
/// is still served (first-request grace); one that never sends is closed once
/// the grace is over.
#[tokio::test]
async fn first_request_grace() {
    let grace = Duration::from_millis(1000);
    let mut s = Server::start(Config {
        lame_duck_ms: 0,
        first_request_grace_ms: grace.as_millis() as u64,
        idle_hold_ms: grace.as_millis() as u64,
        ..cfg()
    });
    let mut late = HttpConn::connect(s.addr).await.unwrap();
    let mut silent = HttpConn::connect(s.addr).await.unwrap();
    barrier(s.addr).await;

    let t0 = s.shutdown();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = late.get("/").await.expect("late first request must be served");
    assert_eq!(r.status, 200);
    assert!(r.closes());

    assert!(silent.closed_within(Duration::from_secs(3)).await);
    assert!(
        t0.elapsed() >= grace - Duration::from_millis(20),
        "closed before the grace: {:?}",
        t0.elapsed()
    );
    let Outcome::Drained(rep) = s.outcome(Duration::from_secs(5)).await else {
        panic!("expected a clean drain")
    };
    assert_eq!(rep.dropped.total(), 0);
}

/// An idle keep-alive connection is not closed when the lame duck ends: its client's next
/// request, sent after that, is answered (with `Connection: close`). A load balancer sends on
/// its pooled connections at any moment, and one closed under it fails a client's request.
/// Once the hold is over, a connection still idle is closed.
#[tokio::test]
async fn idle_keep_alive_connections_are_held_past_the_lame_duck() {
    let hold = Duration::from_millis(1500);
    let mut s = Server::start(Config {
        lame_duck_ms: 200,
        idle_hold_ms: hold.as_millis() as u64,
        ..cfg()
    });
    let mut pooled = HttpConn::connect(s.addr).await.unwrap();
    let mut idle = HttpConn::connect(s.addr).await.unwrap();
    assert_eq!(pooled.get("/").await.unwrap().status, 200);
    assert_eq!(idle.get("/").await.unwrap().status, 200);

    let t0 = s.shutdown();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = pooled
        .get("/")
        .await
        .expect("a request on an idle connection after the lame duck must be answered");
    assert_eq!(r.status, 200);
    assert!(r.closes(), "answered with Connection: close");

    assert!(idle.closed_within(Duration::from_secs(3)).await);
    assert!(
        t0.elapsed() >= hold - Duration::from_millis(20),
        "closed before the hold was over: {:?}",
        t0.elapsed()
    );
    let Outcome::Drained(rep) = s.outcome(Duration::from_secs(5)).await else {
        panic!("expected a clean drain")
    };
    assert_eq!(rep.dropped.total(), 0);
}

/// A WebSocket client that never answers the close is dropped after the ws
/// close timeout; the drain still finishes cleanly.
#[tokio::test]
async fn unanswered_websocket_close_times_out() {
    let mut s = Server::start(Config {
        lame_duck_ms: 0,
        ws_close_timeout_ms: 300,
        ..cfg()
    });
    let (ws, greeting) = ws_connect(s.addr).await.unwrap();
    assert_eq!(greeting, "t-rel");
    let t0 = s.shutdown();
    // `ws` is never polled again, so it never answers the close frame.
    let Outcome::Drained(rep) = s.outcome(Duration::from_secs(5)).await else {
        panic!("expected a clean drain")
    };
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!((rep.ws_close_acked, rep.ws_close_unacked), (0, 1), "{rep:?}");
    drop(ws);
}

/// In-flight work beyond the drain budget is cut, and the outcome says so.
#[tokio::test]
async fn drain_timeout_drops_stragglers() {
    let mut s = Server::start(Config {
        lame_duck_ms: 0,
        drain_timeout_ms: 300,
        ..cfg()
    });
    let mut slow = HttpConn::connect(s.addr).await.unwrap();
    slow.send_raw(b"GET /?sleep_ms=5000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    barrier(s.addr).await;
    let t0 = s.shutdown();
    let outcome = s.outcome(Duration::from_secs(3)).await;
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(outcome.exit_code(), 1);
    let Outcome::DrainTimedOut(rep) = outcome else {
        panic!("expected a drain timeout, got {outcome:?}")
    };
    assert_eq!(rep.dropped.http, 1, "{rep:?}");
    assert!(
        slow.read_response().await.is_err(),
        "the cut request has no response"
    );
}

#[tokio::test]
async fn crash_knob_ends_run_with_exit_code_3() {
    let t = Instant::now();
    let s = Server::start(Config {
        crash_after_ms: Some(300),
        ..cfg()
    });
    assert_eq!(get(s.addr, "/healthz").await.unwrap().status, 200);
    let outcome = s.outcome(Duration::from_secs(5)).await;
    assert_eq!(outcome, Outcome::Crashed);
    assert_eq!(outcome.exit_code(), 3);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn fail_start_knob_is_an_error_before_serving() {
    let s = Server::start(Config {
        fail_start: true,
        ..cfg()
    });
    let err = timeout(Duration::from_secs(5), s.task)
        .await
        .unwrap()
        .unwrap()
        .expect_err("fail_start must fail");
    assert!(err.to_string().contains("SAMPLE_FAIL_START"), "{err}");
}
