//! The first byte of a connection: hyper's `graceful_shutdown()` closes a connection it has
//! not read a byte from, even when the request already sits in the kernel buffer, so a drain
//! waits for [`FirstRead`]'s signal (or a grace) before it closes one.
//!
//! [`OnRead`] is the pass-through stream under it: it calls a hook on every non-empty read and
//! forwards everything else. [`FirstRead`] is its use that fires once; the front's connections
//! also note every read for their timeouts, with one `OnRead` that does both.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// What runs after each read that returned bytes: a closure, or [`FirstByte`].
pub trait ReadHook {
    fn bytes_read(&mut self);
}

impl<F: FnMut()> ReadHook for F {
    fn bytes_read(&mut self) {
        self()
    }
}

/// Wraps a stream and calls its hook after each read that returned bytes.
#[derive(Debug)]
pub struct OnRead<S, H> {
    inner: S,
    hook: H,
}

impl<S, H: ReadHook> OnRead<S, H> {
    pub fn new(inner: S, hook: H) -> Self {
        Self { inner, hook }
    }
}

/// The hook of [`FirstRead`]: sends once, on the first non-empty read.
#[derive(Debug)]
pub struct FirstByte(Option<oneshot::Sender<()>>);

impl FirstByte {
    pub fn new(tx: oneshot::Sender<()>) -> Self {
        Self(Some(tx))
    }

    /// Sends the signal if it has not been sent.
    pub fn fire(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl ReadHook for FirstByte {
    fn bytes_read(&mut self) {
        self.fire()
    }
}

/// A stream that fires a oneshot when its first byte has been read.
pub type FirstRead<S> = OnRead<S, FirstByte>;

/// Wraps `inner`; `tx` fires on the first non-empty read.
pub fn first_read<S>(inner: S, tx: oneshot::Sender<()>) -> FirstRead<S> {
    OnRead::new(inner, FirstByte::new(tx))
}

impl<S: AsyncRead + Unpin, H: ReadHook + Unpin> AsyncRead for OnRead<S, H> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.hook.bytes_read();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin, H: Unpin> AsyncWrite for OnRead<S, H> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_hook_runs_on_each_read_with_bytes_and_first_read_fires_once() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut reads = 0;
        let mut s = OnRead::new(a, || reads += 1);
        b.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        b.write_all(b"yz").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 2);
        drop(b);
        assert_eq!(s.read(&mut buf).await.unwrap(), 0, "end of stream");
        drop(s);
        assert_eq!(reads, 2, "an empty read (EOF) is not a read with bytes");

        let (a, mut b) = tokio::io::duplex(64);
        let (tx, mut rx) = oneshot::channel();
        let mut fr = first_read(a, tx);
        assert!(rx.try_recv().is_err());
        b.write_all(b"x").await.unwrap();
        assert_eq!(fr.read(&mut buf).await.unwrap(), 1);
        assert!(rx.try_recv().is_ok());
    }
}
