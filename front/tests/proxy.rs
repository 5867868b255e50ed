//! Black-box tests of the real binary: forwarding, headers, streaming,
//! WebSockets, errors, retry, framing, limits.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn forwards_with_keep_alive_reuse_and_probe_headers() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    let mut c = client(front.addr).await;
    for _ in 0..3 {
        let r = soon(c.send_request(get("/"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!r.headers().contains_key("x-handoff-front"));
        assert!(!r.headers().contains_key("x-handoff-release"));
        assert_eq!(text(r).await, "v1 body=0");
    }
    // One client connection, one pooled upstream connection.
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);

    let mut req = get("/");
    req.headers_mut().insert("x-handoff-probe", "1".parse().unwrap());
    let r = soon(c.send_request(req)).await.unwrap();
    assert_eq!(r.headers()["x-handoff-front"], "front-a");
    assert_eq!(r.headers()["x-handoff-release"], "v1");
}

#[tokio::test]
async fn forwarded_and_hop_by_hop_headers() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    let mut c = client(front.addr).await;
    let req = Request::builder()
        .uri("/headers")
        .header("host", "example.test")
        .header("connection", "keep-alive, x-drop")
        .header("x-drop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-connection", "keep-alive")
        .header("x-handoff-evil", "1")
        .header("x-handoff-probe", "1")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-forwarded-proto", "https")
        .header("x-app", "kept")
        .body(http_body_util::Full::new(Bytes::new()).boxed())
        .unwrap();
    let r = soon(c.send_request(req)).await.unwrap();
    let h = r.headers().clone();
    let seen = text(r).await;
    let has = |l: &str| seen.lines().any(|x| x == l);
    // No --trusted-proxies: what the client claims is replaced.
    assert!(has("x-forwarded-for: 127.0.0.1"), "{seen}");
    assert!(has("x-forwarded-proto: http"), "{seen}");
    assert!(has("x-forwarded-host: example.test"), "{seen}");
    assert!(has("host: example.test"), "{seen}");
    assert!(has("x-app: kept"), "{seen}");
    for gone in [
        "x-drop",
        "keep-alive",
        "te",
        "proxy-connection",
        "x-handoff-",
        "connection: keep-alive",
    ] {
        assert!(
            !seen.contains(&format!("\n{gone}")) && !seen.starts_with(gone),
            "{gone} reached the upstream: {seen}"
        );
    }
    // Back to the client: hop-by-hop removed, forged X-Handoff-* replaced.
    assert!(
        !h.contains_key("keep-alive") && !h.contains_key("x-up-hop"),
        "{h:?}"
    );
    assert_eq!(h["x-app"], "kept");
    assert_eq!(h["x-handoff-release"], "v1");
}

/// The headers the upstream received for `req`, sent on a connection from `from` (a loopback
/// address), one `name: value` line each.
async fn seen_from(from: &str, front: &Front, req: Request<UpBody>) -> Vec<String> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let s = soon(sock.connect(front.addr)).await.unwrap();
    let (mut c, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = soon(c.send_request(req)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    text(r).await.lines().map(str::to_owned).collect()
}

fn claiming_https() -> Request<UpBody> {
    Request::builder()
        .uri("/headers")
        .header("host", "shop.example")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-port", "443")
        .header("x-forwarded-host", "www.shop.example")
        .header("forwarded", "for=203.0.113.7;proto=https")
        .body(full(""))
        .unwrap()
}

#[tokio::test]
async fn forwarded_headers_kept_from_trusted_proxies_only() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &["--trusted-proxies", "127.0.0.1/32"]).await;
    let port = front.addr.port();

    // From 127.0.0.1 (trusted, like an HTTPS load balancer): kept, and the peer appended.
    let seen = seen_from("127.0.0.1", &front, claiming_https()).await;
    for line in [
        "x-forwarded-proto: https",
        "x-forwarded-for: 203.0.113.7, 127.0.0.1",
        "x-forwarded-port: 443",
        "x-forwarded-host: www.shop.example",
        "forwarded: for=203.0.113.7;proto=https",
    ] {
        assert!(seen.iter().any(|l| l == line), "{line} not seen: {seen:?}");
    }
    // Several X-Forwarded-For lines become one list, the peer last.
    let mut req = claiming_https();
    req.headers_mut()
        .append("x-forwarded-for", "198.51.100.2, 192.0.2.1".parse().unwrap());
    let seen = seen_from("127.0.0.1", &front, req).await;
    let xff: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("x-forwarded-for:"))
        .collect();
    assert_eq!(
        xff,
        ["x-forwarded-for: 203.0.113.7, 198.51.100.2, 192.0.2.1, 127.0.0.1"],
        "{seen:?}"
    );

    // From 127.0.0.2 (not trusted): every claim replaced, Forwarded removed.
    let seen = seen_from("127.0.0.2", &front, claiming_https()).await;
    let fwd: Vec<&String> = seen.iter().filter(|l| l.contains("forwarded")).collect();
    let port_line = format!("x-forwarded-port: {port}");
    let mut want = vec![
        "x-forwarded-for: 127.0.0.2",
        "x-forwarded-proto: http",
        "x-forwarded-host: shop.example",
        port_line.as_str(),
    ];
    want.sort_unstable();
    let mut fwd: Vec<&str> = fwd.iter().map(|s| s.as_str()).collect();
    fwd.sort_unstable();
    assert_eq!(fwd, want, "{seen:?}");
}

/// An ALB keeps its idle connections to a target open up to its own idle timeout (60 s): the
/// front's (75 s by default) must not close one first, nor must its upstream pool's expiry
/// (30 s) fail the request that comes after.
#[tokio::test]
async fn keep_alive_connection_idle_62_s_is_still_served() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    let mut c = client(front.addr).await;
    let r = soon(c.send_request(get("/"))).await.unwrap();
    assert_eq!(text(r).await, "v1 body=0");
    tokio::time::sleep(Duration::from_secs(62)).await;
    assert!(!c.is_closed(), "the front closed the idle connection");
    let r = soon(c.send_request(get("/"))).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(text(r).await, "v1 body=0");
    // The same client connection; the upstream one was renewed after the pool's expiry.
    assert_eq!(up.conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn streams_response_before_upstream_finishes() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    let mut c = client(front.addr).await;
    let r = soon(c.send_request(get("/stream"))).await.unwrap();
    let mut body = r.into_body();
    let first = soon(body.frame()).await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first\n");
    // The upstream has not sent its second chunk yet: it waits for us.
    up.stream_go.notify_one();
    let rest = soon(body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "second\n");
}

#[tokio::test]
async fn streams_upload_before_client_finishes() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    let mut c = client(front.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    });
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "x")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let resp = tokio::spawn(c.send_request(req));
    tx.send(Bytes::from(vec![b'a'; 1000])).await.unwrap();
    // The upstream sees the first part while the client still holds the rest.
    soon(up.first_frame.notified()).await;
    tx.send(Bytes::from(vec![b'b'; 500])).await.unwrap();
    drop(tx);
    let r = soon(resp).await.unwrap().unwrap();
    assert_eq!(text(r).await, "1500");
}

#[tokio::test]
async fn websocket_echo_and_upstream_close_forwarded() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    let (mut ws, resp) = soon(tokio_tungstenite::connect_async(
        front.url("/ws").replace("http", "ws"),
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(soon(ws.next()).await.unwrap().unwrap(), Message::text("v1"));
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(soon(ws.next()).await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        soon(ws.next()).await.unwrap().unwrap(),
        Message::binary(vec![1, 2, 3])
    );
    // The upstream closes with 4000: the client gets that close frame.
    ws.send(Message::text("bye")).await.unwrap();
    match soon(ws.next()).await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4000),
        m => panic!("expected close, got {m:?}"),
    }

    // An upstream that drops the connection: the client gets 1011.
    let (mut ws, _) = soon(tokio_tungstenite::connect_async(
        front.url("/ws").replace("http", "ws"),
    ))
    .await
    .unwrap();
    soon(ws.next()).await.unwrap().unwrap();
    ws.send(Message::text("drop")).await.unwrap();
    match soon(ws.next()).await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1011),
        m => panic!("expected close, got {m:?}"),
    }
}

#[tokio::test]
async fn bad_gateway_fast_when_upstream_is_down() {
    let front = Front::start(Some(("v9", dead_addr())), &[]).await;
    let t = Instant::now();
    let (st, body, _) = fetch(front.addr, "/").await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    assert!(!body.is_empty());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let mut front = front;
    let line = front.wait_log("refused the connection").await;
    assert!(line.contains("v9"), "{line}");
}

#[tokio::test]
async fn no_route_yet_is_503() {
    let front = Front::start(None, &[]).await;
    let (st, body, _) = fetch(front.addr, "/").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no release is routed yet\n");
    let s = front.control(r#"{"op":"status"}"#).await;
    assert_eq!(s["ok"], true);
    assert_eq!(s["release"], serde_json::Value::Null);
}

/// An upstream that reads a request head and closes without answering on
/// its first `closes` connections, then answers 200. Counts requests.
async fn flaky_upstream(
    closes: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                let i = count.fetch_add(1, Ordering::SeqCst);
                if i >= closes {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, n)
}

#[tokio::test]
async fn get_retried_once_post_never() {
    let (addr, n) = flaky_upstream(1).await;
    let front = Front::start(Some(("v1", addr)), &[]).await;
    let (st, body, _) = fetch(front.addr, "/").await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(n.load(Ordering::SeqCst), 2, "one retry");

    // Always closing: a GET is tried twice, then 502.
    let (addr, n) = flaky_upstream(usize::MAX).await;
    let front = Front::start(Some(("v1", addr)), &[]).await;
    let (st, _, _) = fetch(front.addr, "/").await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    assert_eq!(n.load(Ordering::SeqCst), 2, "exactly one retry");

    // POST (with or without a body) is never replayed.
    let (addr, n) = flaky_upstream(1).await;
    let front = Front::start(Some(("v1", addr)), &[]).await;
    let out = raw(
        front.addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert_eq!(n.load(Ordering::SeqCst), 1, "POST not replayed");
    // A GET with a body is not replayed either.
    let out = raw(
        front.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "fresh connection answers: {out}");
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn ambiguous_framing_never_forwarded() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    // CL + TE: hyper decodes chunked, drops Content-Length and closes the
    // connection after the response; the upstream never sees both.
    let out = raw(
        front.addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(!up.saw_cl_and_te.load(Ordering::SeqCst));
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        1,
        "connection closed after one response: {out}"
    );
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.1 400"),
        "{out}"
    );
    // A Content-Length list: 400 from the front, connection closed.
    let before = up.requests.load(Ordering::SeqCst);
    let out = raw(
        front.addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5, 5\r\n\r\nhello",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Conflicting Content-Length: 400 (hyper).
    let out = raw(
        front.addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(up.requests.load(Ordering::SeqCst), before, "nothing forwarded");
    // Another client is served.
    assert_eq!(fetch(front.addr, "/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn oversized_head_gets_431() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    let big = "a".repeat(20_000);
    let out = raw(
        front.addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn slowloris_closed_after_header_timeout_others_served() {
    let up = Upstream::start("v1").await;
    let front = Front::start(
        Some(("v1", up.addr)),
        &["--header-read-timeout-ms", "700", "--idle-timeout-ms", "60000"],
    )
    .await;
    let t = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(front.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    // Meanwhile a keep-alive client is served, and stays open past the
    // header timeout (idle keep-alive is governed by the idle timeout).
    let mut c = client(front.addr).await;
    assert_eq!(
        soon(c.send_request(get("/"))).await.unwrap().status(),
        StatusCode::OK
    );
    let mut buf = Vec::new();
    let n = soon(slow.read_to_end(&mut buf)).await;
    assert!(matches!(n, Ok(0)) || n.is_err(), "{n:?}");
    assert!(t.elapsed() >= Duration::from_millis(600), "{:?}", t.elapsed());
    let r = soon(c.send_request(get("/"))).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "idle keep-alive connection survived the header timeout"
    );
}

#[tokio::test]
async fn client_vanishing_mid_upload_does_not_disturb_others() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    let mut a = tokio::net::TcpStream::connect(front.addr).await.unwrap();
    a.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n0123456789")
        .await
        .unwrap();
    soon(up.first_frame.notified()).await;
    drop(a);
    for _ in 0..3 {
        let (st, body, _) = fetch(front.addr, "/").await;
        assert_eq!((st, body.as_str()), (StatusCode::OK, "v1 body=0"));
    }
}

#[tokio::test]
async fn bad_usage_exits_2() {
    let dir = temp_dir();
    let routes = dir.join("routes.json");
    std::fs::write(&routes, "{not json").unwrap();
    let out = bin()
        .args(["--bind", "127.0.0.1:0", "--id", "x", "--control"])
        .arg(dir.join("c.sock"))
        .arg("--routes")
        .arg(&routes)
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes.json"), "{err}");

    let out = bin()
        .args(["--id", "x", "--control"])
        .arg(dir.join("c.sock"))
        .arg("--routes")
        .arg(&routes)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("HANDOFF_FRONT_BIND")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LISTEN_FDS") && err.contains("LISTEN_PID"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file limit too small for `max_connections` (two descriptors per connection: the client's
/// and the one to the release): the front says so and serves what fits; a connection beyond
/// it waits in the socket's queue and is served once another closes, instead of an accept()
/// failing with EMFILE and a WebSocket answered 502.
#[tokio::test]
async fn a_file_limit_below_max_connections_is_named_and_the_rest_wait() {
    let up = Upstream::start("v1").await;
    // (300 - 256 kept aside) / 2 = 22 client connections.
    let front = Front::start_with_file_limit(Some(("v1", up.addr)), &[], Some(300)).await;
    assert!(
        front
            .startup
            .iter()
            .any(|l| l.contains("serving at most 22 client connections")),
        "{:?}",
        front.startup
    );
    let mut held = Vec::new();
    for _ in 0..22 {
        let mut c = client(front.addr).await;
        let r = soon(c.send_request(get("/"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        held.push(c);
    }
    let addr = front.addr;
    let waiting = tokio::spawn(async move {
        let mut c = client(addr).await;
        c.send_request(get("/")).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the 23rd connection was served past the limit"
    );
    drop(held.pop());
    assert_eq!(soon(waiting).await.unwrap().unwrap(), StatusCode::OK);
}

/// The body and the trailers of a response.
async fn body_and_trailers(r: hyper::Response<hyper::body::Incoming>) -> (String, Option<hyper::HeaderMap>) {
    let collected = soon(r.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned();
    (
        String::from_utf8(collected.to_bytes().to_vec()).unwrap(),
        trailers,
    )
}

#[tokio::test]
async fn http2_with_prior_knowledge_reaches_an_h2c_release_with_its_trailers_and_streams_across_a_switch() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let front = Front::start(Some(("v1", v1.addr)), &["--upstream", "h2c"]).await;
    let (mut h2, _) = client_h2(front.addr).await;

    // HTTP/2 both ways: TE: trailers reaches the release, its trailers reach the client.
    let r = soon(h2.send_request(get_h2("/trailers"))).await.unwrap();
    assert_eq!(
        (r.status(), r.version()),
        (StatusCode::OK, hyper::Version::HTTP_2)
    );
    let (body, trailers) = body_and_trailers(r).await;
    assert_eq!(body, "v1 HTTP/2.0 te=Some(\"trailers\")");
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    // Many streams on one client connection share one connection to the release per worker.
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut h2 = h2.clone();
        streams.push(tokio::spawn(async move {
            h2.send_request(get_h2("/")).await.unwrap().status()
        }));
    }
    for s in streams {
        assert_eq!(soon(s).await.unwrap(), StatusCode::OK);
    }
    assert!(
        v1.conns.load(Ordering::SeqCst) <= 4,
        "{} connections to v1",
        v1.conns.load(Ordering::SeqCst)
    );

    // An HTTP/1.1 client reaches the same release over HTTP/2 (its Host as the authority).
    let mut c = client(front.addr).await;
    let r = soon(c.send_request(get("/headers"))).await.unwrap();
    assert_eq!(r.version(), hyper::Version::HTTP_11);
    let seen = text(r).await;
    assert!(seen.lines().any(|l| l == "x-forwarded-for: 127.0.0.1"), "{seen}");

    // A stream in flight on v1 across a switch to v2 ends whole; the next ones go to v2.
    let streaming = tokio::spawn({
        let mut h2 = h2.clone();
        async move {
            let r = h2.send_request(get_h2("/stream")).await.unwrap();
            text(r).await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let switched = tokio::spawn({
        let control = front.control.clone();
        let to = format!(r#"{{"op":"route","release":"v2","upstream":"{}"}}"#, v2.addr);
        async move { control_at(&control, &to).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = soon(h2.send_request(get_h2("/trailers"))).await.unwrap();
    assert!(body_and_trailers(r).await.0.starts_with("v2 HTTP/2.0"));
    assert!(
        !switched.is_finished(),
        "the switch waits for the stream in flight"
    );
    v1.stream_go.notify_one();
    assert_eq!(soon(streaming).await.unwrap(), "first\nsecond\n");
    let reply = soon(switched).await.unwrap();
    assert_eq!(reply["drained"][0]["release"], "v1", "{reply}");
    assert_eq!(reply["drained"][0]["requests_left"], 0, "{reply}");

    // WebSockets are relayed only to HTTP/1.1 releases: 501, said plainly.
    let ws = tokio_tungstenite::connect_async(front.url("/ws").replace("http", "ws")).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(resp)) = ws else {
        panic!("a WebSocket to an h2c release: {ws:?}")
    };
    assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test]
async fn an_http2_client_of_a_draining_front_gets_goaway_after_its_stream_in_flight_ends() {
    let up = Upstream::start("v1").await;
    let mut front = Front::start(Some(("v1", up.addr)), &[]).await;
    let (mut h2, conn) = client_h2(front.addr).await;
    let r = soon(h2.send_request(get_h2("/trailers"))).await.unwrap();
    // An HTTP/1.1 release: the front speaks HTTP/2 to the client all the same.
    assert_eq!(r.version(), hyper::Version::HTTP_2);
    assert!(body_and_trailers(r).await.0.starts_with("v1 HTTP/1.1 te=None"));
    let held = tokio::spawn({
        let mut h2 = h2.clone();
        async move { text(h2.send_request(get_h2("/hold")).await.unwrap()).await }
    });
    soon(up.holding.notified()).await;
    front.sigterm();
    front.wait_log("draining").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !conn.is_finished(),
        "the connection is open while its stream is in flight"
    );
    up.release_hold.notify_one();
    assert_eq!(soon(held).await.unwrap(), "v1 held");
    // GOAWAY: the client's connection ends without an error, then the front exits drained.
    soon(conn).await.unwrap();
    assert_eq!(front.wait_exit().await, 0);
}

/// 16 streams at a time on one HTTP/2 connection, each sent as soon as the last one ended,
/// while the front drains: every request sent is answered, and once GOAWAY came, nothing more
/// is sent (the client takes back the request it had not sent). Then the connection ends.
#[tokio::test]
async fn http2_streams_sent_without_pause_across_the_fronts_drain_are_all_answered() {
    let up = Upstream::start("v1").await;
    let front = Front::start(Some(("v1", up.addr)), &[]).await;
    let (h2, conn) = client_h2(front.addr).await;
    let mut streams = Vec::new();
    for _ in 0..16 {
        let mut h2 = h2.clone();
        streams.push(tokio::spawn(async move {
            let (mut answered, mut failed) = (0, Vec::new());
            while h2.ready().await.is_ok() {
                match h2.try_send_request(get_h2("/")).await {
                    Ok(r) => match r.into_body().collect().await {
                        Ok(_) => answered += 1,
                        Err(e) => failed.push(format!("body: {e}")),
                    },
                    Err(mut e) => match e.take_message() {
                        // Not sent: the connection was going away.
                        Some(_) => break,
                        None => failed.push(e.into_error().to_string()),
                    },
                }
            }
            (answered, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    front.sigterm();
    let mut answered = 0;
    for s in streams {
        let (n, failed) = soon(s).await.unwrap();
        assert!(failed.is_empty(), "requests sent and not answered: {failed:?}");
        answered += n;
    }
    assert!(answered > 100, "{answered} answered");
    soon(conn).await.unwrap();
}
