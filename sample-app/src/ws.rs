//! WebSocket endpoint (`GET /ws`): greets with the release id, then echoes.
//!
//! The handshake is answered by hyper (101 + `Sec-WebSocket-Accept`); the
//! upgraded connection is handed to tokio-tungstenite with
//! `WebSocketStream::from_raw_socket`. Each WebSocket is a task of its own,
//! counted by the tracker from the moment the 101 is decided, so the drain
//! cannot miss one that is still being upgraded.
//!
//! Drain: at [`Phase::Closing`], at its turn in the spread of closes (see
//! [`crate::state::WsTurns`]), the server sends a close frame with code 1012
//! ("service restart": reconnect, the service is coming back) and waits up to
//! the WebSocket close timeout for the client's close frame, then drops the
//! connection. A client thus sees a clean close, never an abnormal 1006.
//!
//! [`Phase::Closing`]: crate::state::Phase::Closing

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::debug;

use crate::state::{Body, Shared, Stats, text};

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

pub use handoff_drain::ws::small_buffers;

/// Answers a `GET /ws` request: 101 and a spawned WebSocket task, or an error.
pub(crate) fn upgrade(mut req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let h = req.headers();
    if !has_token(h, header::UPGRADE, "websocket") || !has_token(h, header::CONNECTION, "upgrade") {
        let mut r = text(StatusCode::UPGRADE_REQUIRED, "websocket upgrade required\n");
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = text(StatusCode::BAD_REQUEST, "unsupported websocket version\n");
        r.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);

    let guard = shared.tracker.ws();
    let task_shared = shared.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let shared = task_shared;
        let run = async {
            match on_upgrade.await {
                Ok(upgraded) => serve(TokioIo::new(upgraded), &shared).await,
                Err(e) => debug!("websocket upgrade failed: {e}"),
            }
        };
        tokio::select! {
            () = run => {}
            () = shared.wait_abort() => debug!("drain timeout: dropping websocket"),
        }
    });

    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    r
}

/// Answers one incoming message: text and binary are echoed. False once the WebSocket is over.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    msg: Option<Result<Message, WsError>>,
) -> bool {
    match msg {
        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => match ws.send(m).await {
            Ok(()) => true,
            Err(e) => {
                debug!("websocket echo failed: {e}");
                false
            }
        },
        // Close: tungstenite queues the reply, flushed by the next poll, after which the
        // stream ends. Ping: the pong is queued likewise.
        Some(Ok(_)) => true,
        Some(Err(e)) => {
            debug!("websocket error: {e}");
            false
        }
        None => false,
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(io: S, shared: &Shared) {
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(small_buffers())).await;
    Stats::inc(&shared.stats.websockets);
    if let Err(e) = ws.send(Message::text(shared.identity.release.clone())).await {
        debug!("websocket greeting failed: {e}");
        return;
    }
    // Echo until this WebSocket's turn to close comes in the drain (the closes are spread, so
    // the reconnects do not arrive at the successor all at once); then close with 1012 and
    // wait for the client's close frame.
    let turn = shared.ws_turns.wait();
    tokio::pin!(turn);
    loop {
        tokio::select! {
            msg = ws.next() => if !echo(&mut ws, msg).await { return },
            () = &mut turn => break,
        }
    }
    let frame = CloseFrame {
        code: CloseCode::Restart,
        reason: "service restart".into(),
    };
    let handshake = async {
        ws.close(Some(frame)).await?;
        while let Some(msg) = ws.next().await {
            msg?;
        }
        Ok::<(), WsError>(())
    };
    match tokio::time::timeout(shared.ws_close_timeout, handshake).await {
        Ok(Ok(()) | Err(WsError::ConnectionClosed)) => {
            Stats::inc(&shared.stats.ws_close_acked);
            debug!("websocket closed with 1012");
        }
        Ok(Err(e)) => {
            Stats::inc(&shared.stats.ws_close_unacked);
            debug!("websocket close handshake failed: {e}");
        }
        Err(_) => {
            Stats::inc(&shared.stats.ws_close_unacked);
            debug!("websocket client did not answer close within the timeout");
        }
    }
}
