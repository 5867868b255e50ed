//! Keep-alive clients: one connection each, one request every interval, never retried — the
//! way a browser or another service's connection pool meets a deployment. A connection the
//! server closed while idle is not reused (as every pool does); a close or reset that crosses
//! a request, a non-200 or a timeout is a failure, counted with its time and reason.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Clock;
use super::http::{Reasons, peer_closed, read_head, reason};
use crate::data::Counts;

/// A keep-alive connection, one request every `interval`, never retried. A `Connection:
/// close` answer is honoured (reconnect for the next request); anything else that ends a
/// request without a 200 is a failure.
pub(super) async fn keepalive_client(
    port: u16,
    interval: Duration,
    timeout: Duration,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> (Counts, Reasons) {
    let mut c = Counts::default();
    let mut reasons = Reasons::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let t_ms = clock.now_ms();
        c.requests += 1;
        // Like every HTTP client's pool: a connection the server has closed while it sat idle
        // (its FIN is in) is not reused. Only a close that crosses the request is a failure.
        if let Some(r) = &conn
            && peer_closed(r.get_ref())
        {
            conn = None;
        }
        let attempt = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                conn = Some(BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?));
            }
            let r = conn.as_mut().expect("connected above");
            r.get_mut()
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await?;
            let head = read_head(r).await?;
            let mut body = vec![0; head.content_length.unwrap_or(0)];
            r.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(head)
        })
        .await;
        let why = match attempt {
            Ok(Ok(head)) if head.status == 200 => {
                if head.close || head.content_length.is_none() {
                    conn = None;
                }
                None
            }
            Ok(Ok(head)) => Some(format!("HTTP {}", head.status)),
            Ok(Err(e)) => Some(reason(&e)),
            Err(_) => Some("timeout".into()),
        };
        if let Some(why) = why {
            conn = None;
            c.failed += 1;
            c.failure_t_ms.push(t_ms);
            reasons.add(&why);
        }
    }
    (c, reasons)
}
