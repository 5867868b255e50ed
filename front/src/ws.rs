//! WebSocket relay.
//!
//! A `GET` with `Upgrade: websocket` is forwarded like any request (without
//! `Sec-WebSocket-Extensions`: the relay does not implement compression). If
//! the upstream answers `101`, the client gets that 101 with the upstream's
//! headers, and both upgraded connections are wrapped in tungstenite
//! (`WebSocketStream::from_raw_socket`: server role toward the client, client
//! role toward the upstream). Text and binary messages are relayed both ways;
//! pings are answered by tungstenite on each side. Any other answer is passed
//! through as a normal response.
//!
//! The relay is counted under its upstream's release from the moment the 101
//! is decided, so a drain cannot miss it. It ends:
//!
//! * **upstream sends Close**: the frame is forwarded to the client;
//! * **upstream connection drops** without a Close: the client gets 1011;
//! * **client sends Close** (or drops): forwarded to the upstream (1001 if it dropped);
//! * **the upstream is drained** (`route` switched away from it) or **the
//!   front drains** (SIGTERM): 1012 (service restart) to the client and 1001
//!   (going away) to the upstream, at this WebSocket's turn: the closes of one
//!   drain are spread at `--ws-close-rate` per second, so the clients'
//!   reconnects reach the new release at a rate it accepts (relaying goes on
//!   until then);
//!
//! each time waiting up to `--ws-close-timeout-ms` for the close handshakes to
//! finish. At the drain's `Abort` phase the relay is dropped.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use handoff_drain::Phase;
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tracing::debug;

use crate::client::ConnInfo;
use crate::headers::has_token;
use crate::route::Upstream;
use crate::state::Shared;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// `GET` with `Upgrade: websocket` and `Connection: upgrade`.
pub fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && has_token(req.headers(), &header::UPGRADE, "websocket")
        && has_token(req.headers(), &header::CONNECTION, "upgrade")
}

fn close(code: CloseCode, reason: &'static str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// Starts relaying once both sides are upgraded. Counted at once (under the
/// upstream and as an open WebSocket of the front).
pub fn spawn_relay(
    on_client: OnUpgrade,
    on_upstream: OnUpgrade,
    upstream: Arc<Upstream>,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
) {
    let ws_guard = upstream.ws_guard();
    let open_guard = shared.open_guard(true);
    tokio::spawn(async move {
        let _guards = (ws_guard, open_guard, conn);
        let run = async {
            let (c, u) = match tokio::try_join!(on_client, on_upstream) {
                Ok(both) => both,
                Err(e) => return debug!("websocket upgrade failed: {e}"),
            };
            let client = WebSocketStream::from_raw_socket(
                TokioIo::new(c),
                Role::Server,
                Some(handoff_drain::ws::small_buffers()),
            )
            .await;
            let up = WebSocketStream::from_raw_socket(
                TokioIo::new(u),
                Role::Client,
                Some(handoff_drain::ws::small_buffers()),
            )
            .await;
            relay(client, up, &upstream, &shared).await;
        };
        tokio::select! {
            () = run => {}
            _ = shared.wait_phase(Phase::is_abort) => debug!("drain timeout: dropping websocket"),
        }
    });
}

/// Drives a closing WebSocket until its close handshake is over.
async fn finish(ws: &mut Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}

async fn relay(mut client: Ws, mut up: Ws, upstream: &Upstream, shared: &Shared) {
    let release = &upstream.release;
    // Each WebSocket queues for its close turn from the start, in the release's drain and in
    // the front's own (handoff_drain::WsTurns): only the one whose turn came wakes.
    let release_turn = upstream.ws_turns.wait();
    tokio::pin!(release_turn);
    let front_turn = shared.ws_turns.wait();
    tokio::pin!(front_turn);
    loop {
        tokio::select! {
            m = up.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if client.send(m).await.is_err() {
                        let _ = up.close(close(CloseCode::Away, "client went away")).await;
                        break;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    debug!(%release, ?frame, "upstream closed the websocket");
                    let _ = client.send(Message::Close(frame)).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    debug!(%release, "upstream websocket connection dropped: closing the client with 1011");
                    let _ = client.close(close(CloseCode::Error, "upstream went away")).await;
                    let _ = tokio::time::timeout(shared.ws_close_timeout, finish(&mut client)).await;
                    return;
                }
            },
            m = client.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if up.send(m).await.is_err() {
                        let _ = client.close(close(CloseCode::Error, "upstream went away")).await;
                        break;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = up.send(Message::Close(frame)).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    let _ = up.close(close(CloseCode::Away, "client went away")).await;
                    let _ = tokio::time::timeout(shared.ws_close_timeout, finish(&mut up)).await;
                    return;
                }
            },
            () = &mut release_turn => {
                debug!(%release, "release drained: closing websocket with 1012");
                upstream.note_ws_closed();
                restart(&mut client, &mut up).await;
                break;
            }
            () = &mut front_turn => {
                debug!(%release, "front draining: closing websocket with 1012");
                restart(&mut client, &mut up).await;
                break;
            }
        }
    }
    // Both close handshakes: tungstenite answers a received Close and ends the
    // stream once ours is acknowledged.
    let both = async { tokio::join!(finish(&mut client), finish(&mut up)) };
    if tokio::time::timeout(shared.ws_close_timeout, both).await.is_err() {
        debug!(%release, "websocket close handshake not finished within the timeout");
    }
}

async fn restart(client: &mut Ws, up: &mut Ws) {
    let _ = tokio::join!(
        client.close(close(CloseCode::Restart, "service restart")),
        up.close(close(CloseCode::Away, "going away")),
    );
}
