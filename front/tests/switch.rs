//! The `route` switch and the front's own SIGTERM drain.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn route_switch_drains_the_old_release() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let front = Front::start(Some(("v1", v1.addr)), &[]).await;
    let mode = std::fs::metadata(&front.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A WebSocket and a slow request on v1.
    let (mut ws, _) = soon(tokio_tungstenite::connect_async(
        front.url("/ws").replace("http", "ws"),
    ))
    .await
    .unwrap();
    assert_eq!(soon(ws.next()).await.unwrap().unwrap(), Message::text("v1"));
    let addr = front.addr;
    let slow = tokio::spawn(async move { fetch(addr, "/hold").await });
    soon(v1.holding.notified()).await;
    let s = front.control(r#"{"op":"status"}"#).await;
    assert_eq!(s["release"], "v1");
    assert_eq!(s["id"], "front-a");
    assert_eq!(s["in_flight"]["v1"], 1);
    assert_eq!(s["websockets"]["v1"], 1);

    // Switch to v2 while the slow request is in flight.
    let ctl = front.control.clone();
    let req = format!(
        r#"{{"op":"route","release":"v2","upstream":"{}","drain_ms":20000}}"#,
        v2.addr
    );
    let route = tokio::spawn(async move { control_at(&ctl, &req).await });

    // The WebSocket to v1 is closed with 1012; v1 gets 1001.
    match soon(ws.next()).await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012),
        m => panic!("expected close 1012, got {m:?}"),
    }
    soon(v1.ws_closed.notified()).await;
    assert_eq!(v1.ws_closes.lock().unwrap().as_slice(), &[Some(1001)]);

    // New requests and WebSockets go to v2 (the switch is in effect once
    // the WebSocket was closed).
    let (st, body, _) = fetch(front.addr, "/").await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "v2 body=0"));
    let (mut ws2, _) = soon(tokio_tungstenite::connect_async(
        front.url("/ws").replace("http", "ws"),
    ))
    .await
    .unwrap();
    assert_eq!(soon(ws2.next()).await.unwrap().unwrap(), Message::text("v2"));
    ws2.send(Message::text("x")).await.unwrap();

    // The reply waits for the slow request.
    assert!(
        !route.is_finished(),
        "route replied while a request to v1 was in flight"
    );
    assert!(!slow.is_finished());
    v1.release_hold.notify_one();
    let (st, body, _) = soon(slow).await.unwrap();
    assert_eq!((st, body.as_str()), (StatusCode::OK, "v1 held"));
    let reply = soon(route).await.unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["release"], "v2");
    assert_eq!(reply["drained"][0]["release"], "v1", "{reply}");
    assert_eq!(reply["drained"][0]["requests_left"], 0, "{reply}");
    assert_eq!(reply["drained"][0]["websockets_closed"], 1, "{reply}");
    assert!(reply["ms"].as_u64().is_some());

    // Routing to the current release again: at once, nothing drained.
    let again = front
        .control(&format!(
            r#"{{"op":"route","release":"v2","upstream":"{}"}}"#,
            v2.addr
        ))
        .await;
    assert_eq!(again["ok"], true);
    assert_eq!(again["drained"].as_array().unwrap().len(), 0);
    let s = front.control(r#"{"op":"status"}"#).await;
    assert_eq!(s["release"], "v2");
    assert_eq!(s["upstream"], v2.addr.to_string());
    assert_eq!(s["websockets"]["v2"], 1);
    assert!(s["in_flight"].get("v1").is_none(), "{s}");

    // Invalid requests.
    for bad in [
        r#"{"op":"nope"}"#,
        "not json",
        r#"{"op":"route","release":"v3","upstream":"localhost"}"#,
    ] {
        let r = front.control(bad).await;
        assert_eq!(r["ok"], false, "{bad}: {r}");
        assert!(r["error"].as_str().is_some());
    }
}

#[tokio::test]
async fn sigterm_finishes_the_slow_request_and_exits_0() {
    let v1 = Upstream::start("v1").await;
    let mut front = Front::start(Some(("v1", v1.addr)), &["--lame-duck-ms", "300"]).await;
    let (mut ws, _) = soon(tokio_tungstenite::connect_async(
        front.url("/ws").replace("http", "ws"),
    ))
    .await
    .unwrap();
    soon(ws.next()).await.unwrap().unwrap();
    let addr = front.addr;
    let slow = tokio::spawn(async move { fetch(addr, "/hold").await });
    soon(v1.holding.notified()).await;

    front.sigterm();
    front.wait_log("listeners closed").await;
    // Listener really closed: nobody else holds it in this test.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // WebSocket: 1012 to the client, 1001 to the upstream.
    match soon(ws.next()).await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012),
        m => panic!("expected close 1012, got {m:?}"),
    }
    soon(v1.ws_closed.notified()).await;
    assert_eq!(v1.ws_closes.lock().unwrap().as_slice(), &[Some(1001)]);

    assert!(!slow.is_finished());
    v1.release_hold.notify_one();
    let (st, body, headers) = soon(slow).await.unwrap();
    assert_eq!((st, body.as_str()), (StatusCode::OK, "v1 held"));
    assert_eq!(headers["connection"], "close", "lame duck");
    assert_eq!(front.wait_exit().await, 0);
}

#[tokio::test]
async fn sigterm_drain_timeout_exits_1() {
    let v1 = Upstream::start("v1").await;
    let mut front = Front::start(
        Some(("v1", v1.addr)),
        &["--lame-duck-ms", "100", "--drain-timeout-ms", "500"],
    )
    .await;
    let addr = front.addr;
    let slow = tokio::spawn(async move {
        let mut c = client(addr).await;
        c.send_request(get("/hold")).await
    });
    soon(v1.holding.notified()).await;
    front.sigterm();
    assert_eq!(front.wait_exit().await, 1);
    // The cut request is not a fake success.
    let r = soon(slow).await.unwrap();
    assert!(r.is_err(), "{r:?}");
    tokio::time::sleep(Duration::ZERO).await;
}

/// `GET /metrics` at `addr`: the exposition.
async fn scrape(addr: &str) -> String {
    let (status, body, headers) = fetch(addr.parse().unwrap(), "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    body
}

/// Waits until the front serves its metrics (it may have said so before it was ready).
async fn metrics_bound(front: &mut Front) {
    if !front.startup.iter().any(|l| l.contains("metrics: serving")) {
        front.wait_log("metrics: serving").await;
    }
}

/// The value of the series written exactly `series` (name and labels), if present.
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_each_release_and_pass_promtool_and_each_request_has_an_access_log_line() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let metrics = dead_addr().to_string();
    let mut front = Front::start(Some(("v1", v1.addr)), &["--metrics", &metrics]).await;
    metrics_bound(&mut front).await;
    let mut c = client(front.addr).await;
    for _ in 0..3 {
        let r = soon(c.send_request(get("/?token=secret"))).await.unwrap();
        assert_eq!(soon(text(r)).await, "v1 body=0");
    }
    let route = |release: &str, addr: String| {
        format!(r#"{{"op":"route","release":"{release}","upstream":"{addr}"}}"#)
    };
    assert_eq!(front.control(&route("v2", v2.addr.to_string())).await["ok"], true);
    for _ in 0..2 {
        let r = soon(c.send_request(get("/"))).await.unwrap();
        assert_eq!(soon(text(r)).await, "v2 body=0");
    }
    // A release that is not listening: refused, retried once, 502.
    assert_eq!(
        front.control(&route("v3", dead_addr().to_string())).await["ok"],
        true
    );
    let r = soon(c.send_request(get("/gone"))).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);

    let m = scrape(&metrics).await;
    for (series, want) in [
        (
            r#"handoff_front_requests_total{release="v1",method="GET",status_class="2xx"}"#,
            3.0,
        ),
        (
            r#"handoff_front_requests_total{release="v2",method="GET",status_class="2xx"}"#,
            2.0,
        ),
        (
            r#"handoff_front_requests_total{release="v3",method="GET",status_class="5xx"}"#,
            1.0,
        ),
        (
            r#"handoff_front_request_duration_seconds_count{release="v1"}"#,
            3.0,
        ),
        (
            r#"handoff_front_request_duration_seconds_bucket{release="v2",le="+Inf"}"#,
            2.0,
        ),
        (
            r#"handoff_front_upstream_errors_total{release="v3",cause="refused"}"#,
            2.0,
        ),
        (
            r#"handoff_front_upstream_errors_total{release="v1",cause="refused"}"#,
            0.0,
        ),
        ("handoff_front_release_drains_total", 2.0),
        ("handoff_front_open_connections", 1.0),
        (
            r#"handoff_front_info{id="front-a",version="0.1.0",release="v3"}"#,
            1.0,
        ),
    ] {
        assert_eq!(value(&m, series), Some(want), "{series} in:\n{m}");
    }
    assert!(!m.contains(r#"status_class="4xx""#), "{m}");

    // Prometheus' own linter accepts the exposition (Debian's prometheus package, which
    // scripts/setup unpacks promtool from).
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool: run scripts/setup test, which installs it");
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), m.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n{m}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The access log: one JSON line per request, in order on one connection; the query
    // string is not logged.
    let lines = front.access_lines(6).await;
    let fields = |l: &serde_json::Value| {
        (
            l["method"].as_str().unwrap().to_string(),
            l["path"].as_str().unwrap().to_string(),
            l["status"].as_u64().unwrap(),
            l["release"].as_str().unwrap().to_string(),
        )
    };
    let seen: Vec<_> = lines.iter().map(fields).collect();
    let want = |p: &str, s, r: &str| ("GET".to_string(), p.to_string(), s, r.to_string());
    assert_eq!(
        seen,
        [
            want("/", 200, "v1"),
            want("/", 200, "v1"),
            want("/", 200, "v1"),
            want("/", 200, "v2"),
            want("/", 200, "v2"),
            want("/gone", 502, "v3"),
        ]
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for l in &lines {
        assert_eq!(l["client"], "127.0.0.1", "{l}");
        let t = l["time"].as_f64().unwrap();
        assert!(t <= now && t > now - 60.0, "{l}");
        assert!(l["duration_ms"].as_f64().unwrap() < 10_000.0, "{l}");
        assert!(l.get("aborted").is_none(), "{l}");
    }
    assert_eq!(lines[0]["bytes"], "v1 body=0".len());
    assert!(lines[5]["bytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn without_the_access_log_nothing_is_written_and_the_next_front_takes_over_the_metrics_address() {
    let up = Upstream::start("v1").await;
    let metrics = dead_addr().to_string();
    let mut old = Front::start(
        Some(("v1", up.addr)),
        &["--metrics", &metrics, "--access-log", "false"],
    )
    .await;
    metrics_bound(&mut old).await;
    assert_eq!(fetch(old.addr, "/").await.0, StatusCode::OK);
    // The next front starts while the old one holds the address, and serves clients at once.
    let mut next = Front::start(Some(("v1", up.addr)), &["--metrics", &metrics]).await;
    assert_eq!(fetch(next.addr, "/").await.0, StatusCode::OK);
    let m = scrape(&metrics).await;
    assert_eq!(
        value(&m, "handoff_front_connections_accepted_total"),
        Some(1.0),
        "the old front's:\n{m}"
    );
    // The old front lets the address go at its SIGTERM; the next one binds it within 100 ms.
    old.sigterm();
    next.wait_log("metrics: serving").await;
    assert_eq!(old.wait_exit().await, 0);
    let m = scrape(&metrics).await;
    assert_eq!(
        value(&m, "handoff_front_connections_accepted_total"),
        Some(1.0),
        "the next front's:\n{m}"
    );
    assert_eq!(
        value(
            &m,
            r#"handoff_front_requests_total{release="v1",method="GET",status_class="2xx"}"#
        ),
        Some(1.0)
    );
    // The old front, without its access log, wrote nothing on standard output.
    assert_eq!(soon(old.access.recv()).await, None);
}
