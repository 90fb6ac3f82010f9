//! Accepting connections under a listener's limits: at most
//! `MAX_CONNECTIONS` at once, each prepared in a task of its own (a TLS
//! handshake, the client's first bytes) so a slow client holds up no one
//! else, and a client that connects and says nothing within
//! `HEADER_READ_TIMEOUT` is closed. Without that, idle sockets would hold
//! every slot of a listener for as long as an attacker likes.

use crate::limits::ConnLimit;
use bytes::{Bytes, BytesMut};
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::OwnedSemaphorePermit,
};
use tokio_util::sync::CancellationToken;

/// The length of HTTP/2's connection preface, which every gRPC client sends
/// before anything else.
pub const H2_PREFACE_LEN: usize = 24;

/// Accepts connections on `listener` until `token`, admits those `conns`
/// has room for, runs `prepare` on each in a task of its own, and yields
/// what it returns (`None`: the connection was refused and is dropped).
pub fn incoming<C, F, Fut>(
    listener: TcpListener,
    conns: ConnLimit,
    token: CancellationToken,
    prepare: F,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<C>>
where
    C: Send + 'static,
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<C>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = token.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // One connection too many: closed at once (the client sees
            // UNAVAILABLE and retries elsewhere).
            let Some(permit) = conns.try_admit() else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (prepare, tx) = (prepare.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(conn) = prepare(tcp, peer, permit).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The client's first `len` bytes (fewer if it closes), read within
/// `timeout`; `None` if they did not come (counted in
/// `mp3converter_requests_refused_total{reason="header_timeout"}`).
pub async fn first_bytes<S: AsyncRead + Unpin>(
    stream: &mut S,
    len: usize,
    timeout: Duration,
) -> Option<std::io::Result<Bytes>> {
    let read = read_ahead(stream, len, |buf, _| buf.len() >= len);
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => Some(r),
        Err(_) => {
            count_header_timeout();
            None
        }
    }
}

/// Counts a client that did not send its request (or preface) in time.
pub(crate) fn count_header_timeout() {
    metrics::counter!("mp3converter_requests_refused_total", "reason" => "header_timeout")
        .increment(1);
}

/// Reads until `enough(read so far, where the new bytes start)`, the end of
/// the stream, or `max` bytes; what was read.
pub(crate) async fn read_ahead<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    enough: impl Fn(&[u8], usize) -> bool,
) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(max.min(4096));
    while buf.len() < max {
        let before = buf.len();
        let mut limited = (&mut *stream).take((max - before) as u64);
        if limited.read_buf(&mut buf).await? == 0 || enough(&buf, before) {
            break;
        }
    }
    Ok(buf.freeze())
}

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Rewind<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn what_was_read_ahead_is_read_again_first() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        client.write_all(b"\r\nrest").await.unwrap();
        let head = read_ahead(&mut server, 1024, |b, from| {
            b[from.saturating_sub(3)..]
                .windows(4)
                .any(|w| w == b"\r\n\r\n")
        })
        .await
        .unwrap();
        assert!(head.starts_with(b"GET / HTTP/1.1\r\n"));
        let mut all = Vec::new();
        drop(client);
        Rewind::new(head, server)
            .read_to_end(&mut all)
            .await
            .unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\nrest");
    }

    #[tokio::test]
    async fn reading_ahead_stops_at_the_limit_and_waits_no_longer_than_told() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[7; 40]).await.unwrap();
        let got = first_bytes(&mut server, H2_PREFACE_LEN, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), H2_PREFACE_LEN);
        let (_quiet, mut server) = tokio::io::duplex(64);
        let t = std::time::Instant::now();
        assert!(
            first_bytes(&mut server, 1, Duration::from_millis(200))
                .await
                .is_none()
        );
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
