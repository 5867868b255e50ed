//! Black-box tests of the real binary: start contract, sd_notify contract, knobs.

mod common;

use std::time::Duration;

use common::{App, Notify, get, listener};
use nix::sys::signal::Signal;
use tokio::time::{Instant, timeout};

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn refuses_to_start_without_listen_fds_or_bind() {
    let mut app = App::spawn(None, None, &[], &[]);
    assert_eq!(app.wait(LONG).await, Some(2));
    let err = app.stderr_all().await;
    assert!(err.contains("LISTEN_FDS"), "{err}");
    assert!(err.contains("--bind"), "{err}");
    assert!(!err.contains("ready"), "{err}");
}

#[tokio::test]
async fn refuses_sockets_meant_for_another_process() {
    // LISTEN_PID names some other process: the variables were inherited.
    let mut app = App::spawn(None, None, &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")], &[]);
    assert_eq!(app.wait(LONG).await, Some(2));
    let err = app.stderr_all().await;
    assert!(err.contains("LISTEN_PID=1"), "{err}");
}

#[tokio::test]
async fn refuses_a_passed_fd_that_is_not_a_tcp_listener() {
    // A connected (not listening) socket passed as fd 3.
    let (l, addr) = listener();
    let conn = std::net::TcpStream::connect(addr).unwrap();
    let notify = Notify::new();
    let mut app = App::spawn(
        Some(std::os::fd::AsRawFd::as_raw_fd(&conn)),
        Some(&notify),
        &[],
        &[],
    );
    assert_eq!(app.wait(LONG).await, Some(2));
    let err = app.stderr_all().await;
    assert!(
        err.contains("not listening") && err.contains("LISTEN_FDS"),
        "{err}"
    );
    drop(l);
}

#[tokio::test]
async fn bind_flag_serves_for_local_runs() {
    let mut app = App::spawn(None, None, &[("RELEASE", "local-1")], &["--bind", "127.0.0.1:0"]);
    let line = app
        .wait_stderr("sockets=", LONG)
        .await
        .expect("no start line naming the bound address");
    let addr: std::net::SocketAddr = line
        .split("sockets=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot find the address in {line:?}"));
    app.wait_stderr("ready", LONG).await.expect("not ready");
    let r = get(addr, "/version").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "local-1\n"));
    assert_eq!(r.pid(), app.pid);
    app.signal(Signal::SIGINT);
    assert_eq!(app.wait(LONG).await, Some(0));
}

/// READY=1 comes only once the passed socket is being served (here after a
/// startup delay, during which a request waits in the kernel queue), and
/// STOPPING=1 on SIGTERM, followed by a clean exit.
#[tokio::test]
async fn notify_ready_after_serving_and_stopping_on_sigterm() {
    let (l, addr) = listener();
    let mut notify = Notify::new();
    let started = Instant::now();
    let mut app = App::on_socket(
        &l,
        &notify,
        &[
            ("RELEASE", "vN"),
            ("INSTANCE", "n1"),
            ("SAMPLE_STARTUP_DELAY_MS", "400"),
        ],
    );
    // Queued in the kernel until the app serves.
    let early = tokio::spawn(async move {
        let r = get(addr, "/").await;
        (r, Instant::now())
    });

    let ready = notify.wait_for("READY=1", LONG).await.expect("no READY=1");
    assert!(
        ready - started >= Duration::from_millis(400),
        "READY=1 before the startup delay was over: {:?}",
        ready - started
    );
    let lines = notify.lines();
    assert!(
        lines.iter().any(|l| l == "STATUS=serving release vN on 1 socket"),
        "{lines:?}"
    );
    let (r, answered) = timeout(LONG, early).await.unwrap().unwrap();
    let r = r.expect("queued request lost");
    assert_eq!(r.status, 200);
    assert_eq!(r.pid(), app.pid);
    assert_eq!(r.header("x-instance"), Some("n1"));
    assert!(
        answered - started >= Duration::from_millis(400),
        "answered before serving"
    );

    assert!(!notify.has("STOPPING=1"));
    let term = Instant::now();
    app.signal(Signal::SIGTERM);
    notify
        .wait_for("STOPPING=1", LONG)
        .await
        .expect("no STOPPING=1 on SIGTERM");
    assert_eq!(app.wait(LONG).await, Some(0));
    assert!(
        term.elapsed() < Duration::from_secs(3),
        "idle drain took {:?}",
        term.elapsed()
    );
    let lines = notify.lines();
    assert!(
        lines.iter().any(|l| l.starts_with("STATUS=draining: ")),
        "{lines:?}"
    );
    let err = app.stderr_all().await;
    for needle in ["starting", "ready", "draining", "drain finished", "exit"] {
        assert!(err.contains(needle), "log lacks {needle:?}: {err}");
    }
}

#[tokio::test]
async fn fail_start_exits_nonzero_without_ready() {
    let (l, _addr) = listener();
    let mut notify = Notify::new();
    let mut app = App::on_socket(&l, &notify, &[("SAMPLE_FAIL_START", "1")]);
    let code = app.wait(LONG).await;
    assert_eq!(code, Some(1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!notify.has("READY=1"), "{:?}", notify.lines());
    let err = app.stderr_all().await;
    assert!(err.contains("SAMPLE_FAIL_START"), "{err}");
}

#[tokio::test]
async fn never_ready_serves_but_never_sends_ready() {
    let (l, addr) = listener();
    let mut notify = Notify::new();
    let mut app = App::on_socket(&l, &notify, &[("SAMPLE_NEVER_READY", "1")]);
    let r = timeout(LONG, get(addr, "/")).await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.pid(), app.pid);
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);
    // Serving for a while now: still no READY.
    assert!(
        notify
            .wait_for("READY=1", Duration::from_millis(500))
            .await
            .is_none()
    );
    assert!(
        notify
            .lines()
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("never ready")),
        "{:?}",
        notify.lines()
    );
    app.signal(Signal::SIGTERM);
    assert_eq!(app.wait(LONG).await, Some(0));
    assert!(!notify.has("READY=1"));
}

#[tokio::test]
async fn crash_after_exits_3() {
    let (l, addr) = listener();
    let mut notify = Notify::new();
    let started = Instant::now();
    let mut app = App::on_socket(&l, &notify, &[("SAMPLE_CRASH_AFTER_MS", "400")]);
    notify.wait_for("READY=1", LONG).await.expect("no READY=1");
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);
    assert_eq!(app.wait(LONG).await, Some(3));
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn unhealthy_knob_is_ready_but_503() {
    let (l, addr) = listener();
    let mut notify = Notify::new();
    let mut app = App::on_socket(&l, &notify, &[("SAMPLE_UNHEALTHY", "1")]);
    notify.wait_for("READY=1", LONG).await.expect("no READY=1");
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 503);
    assert_eq!(get(addr, "/").await.unwrap().status, 200);
    app.signal(Signal::SIGTERM);
    assert_eq!(app.wait(LONG).await, Some(0));
}

/// The hard deadline ends the process whatever is still in flight.
#[tokio::test]
async fn hard_deadline_exits_1_regardless() {
    let (l, addr) = listener();
    let mut notify = Notify::new();
    let mut app = App::on_socket(
        &l,
        &notify,
        &[
            ("SAMPLE_DRAIN_TIMEOUT_MS", "20000"),
            ("SAMPLE_HARD_DEADLINE_MS", "400"),
        ],
    );
    notify.wait_for("READY=1", LONG).await.expect("no READY=1");
    let mut slow = common::HttpConn::connect(addr).await.unwrap();
    slow.send_raw(b"GET /?sleep_ms=10000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Make sure the slow request is in flight on the app.
    assert_eq!(get(addr, "/version").await.unwrap().status, 200);
    let term = Instant::now();
    app.signal(Signal::SIGTERM);
    assert_eq!(app.wait(LONG).await, Some(1));
    let took = term.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "exited after {took:?}"
    );
    assert!(slow.read_response().await.is_err());
    let err = app.stderr_all().await;
    assert!(err.contains("hard deadline"), "{err}");
}

/// The hooks' idle hold (`HANDOFF_IDLE_HOLD_MS`, deploy.yml `drain.idle_hold`) outlasts the
/// drain timeout, which bounds busy work only: once nothing but an idle keep-alive connection
/// is left, `STATUS=idle hold: …` says so (the hooks stop waiting then); the connection is
/// still served past the drain timeout, with `Connection: close`, and the drain ends clean.
#[tokio::test]
async fn an_idle_connection_is_held_past_the_drain_timeout_and_announced() {
    let (l, addr) = listener();
    let mut notify = Notify::new();
    let mut app = App::on_socket(
        &l,
        &notify,
        &[
            ("HANDOFF_IDLE_HOLD_MS", "4000"),
            ("SAMPLE_DRAIN_TIMEOUT_MS", "1000"),
            ("SAMPLE_HARD_DEADLINE_MS", "1500"),
            ("SAMPLE_LAME_DUCK_MS", "100"),
        ],
    );
    notify.wait_for("READY=1", LONG).await.expect("no READY=1");
    let mut idle = common::HttpConn::connect(addr).await.unwrap();
    assert_eq!(idle.get("/").await.unwrap().status, 200);
    let term = Instant::now();
    app.signal(Signal::SIGTERM);
    let announced = loop {
        let line = notify
            .lines()
            .into_iter()
            .find(|l| l.starts_with("STATUS=idle hold: 1 idle keep-alive connection,"));
        if let Some(line) = line {
            break line;
        }
        assert!(
            term.elapsed() < Duration::from_secs(2),
            "no idle hold status: {:?}",
            notify.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(announced.contains("at most 4 s"), "{announced}");
    // Past the drain timeout (1 s) and the app's own hard deadline (1.5 s, raised to the hold + 2 s).
    tokio::time::sleep_until(term + Duration::from_millis(2500)).await;
    let resp = idle.get("/").await.expect("the held connection was closed");
    assert_eq!(resp.status, 200);
    assert!(
        resp.closes(),
        "a request during the hold must be answered with Connection: close"
    );
    assert_eq!(app.wait(LONG).await, Some(0), "{}", app.stderr_text());
    assert!(
        term.elapsed() < Duration::from_secs(4),
        "the drain waited for the hold although the connection closed"
    );
}
