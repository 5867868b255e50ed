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
