//! WebSocket settings shared by the processes that hold many WebSockets.

/// Buffers sized for many mostly idle WebSockets: tungstenite reserves 128 KiB to read into
/// by default, 1.3 GB for 10,000 connections; larger messages still grow the buffer.
pub fn small_buffers() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}
