//! WebSocket clients: each stays connected to `/ws`, sends an echo every interval, and
//! reconnects at once when the server closes — with 1012 (service restart) during a switch,
//! which is expected; any other close, a dropped connection or a failed handshake is a
//! failure. Counts the sessions, the releases that greeted each client, and how long every
//! reconnect took, for the report's reconnect picture.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use super::Clock;
use crate::data::WsCounts;

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

/// A WebSocket client that stays connected, echoes every `interval`, and reconnects after the
/// server closes (expected: code 1012, service restart), until `stop` turns true. `connected`
/// hears of its first session. `make bench`'s loadgen and the end-to-end tests run it alike.
pub async fn ws_client(
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
