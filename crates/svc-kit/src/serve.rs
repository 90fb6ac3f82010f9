//! Serving HTTP (the REST edge, the admin ports) with the limits of
//! [`ListenerArgs`]: our own accept loop over hyper, because `axum::serve`
//! exposes neither a header-read timeout nor a connection limit.
//!
//! - HTTP/1: request headers must arrive within `HEADER_READ_TIMEOUT`
//!   (slowloris: a head begun and not finished is answered 408; a kept-alive
//!   connection that sends nothing is closed), and bodies never pause
//!   longer than `BODY_IDLE_TIMEOUT`.
//! - HTTP/2: at most `MAX_STREAMS_PER_CONNECTION` streams per connection.
//! - At most `MAX_CONNECTIONS` connections; one more is answered 503 and
//!   closed.
//! - The peer's address is in each request's extensions
//!   (`axum::extract::ConnectInfo<SocketAddr>`).
//! - A connection closed while the client still sends (an answer given
//!   before the body was read: 413, a refused upload) lingers: what still
//!   comes is read and dropped for a moment ([`linger`]), so the close does
//!   not reset the connection and destroy the answer before the client
//!   reads it.

use crate::accept::{Rewind, count_header_timeout, read_ahead};
use crate::limits::{ConnLimit, ListenerArgs};
use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `router` on `listener` until `token` is cancelled, then waits for
/// the connections to finish (bound that wait with
/// [`crate::shutdown::drain_within`]).
/// With `tls`, every connection is HTTPS (ALPN picks HTTP/2 or HTTP/1.1);
/// the handshake must end within `HEADER_READ_TIMEOUT` too.
pub async fn http(
    listener: TcpListener,
    router: Router,
    limits: &ListenerArgs,
    tls: Option<Arc<rustls::ServerConfig>>,
    name: &'static str,
    token: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let header_timeout = limits.header_read_timeout;
    let conns = ConnLimit::new(limits.max_connections, name);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, listener = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some(permit) = conns.try_admit() else {
            // Over TLS a plaintext answer would only be a handshake error:
            // close instead.
            if acceptor.is_none() {
                tokio::spawn(refuse(stream));
            }
            continue;
        };
        let router = router.clone();
        // The handshake and the first request's head are read in the
        // connection's own task: a slow client holds up no one else.
        let (builder, watcher, acceptor) = (builder.clone(), graceful.watcher(), acceptor.clone());
        tokio::spawn(async move {
            let served = match acceptor {
                None => {
                    serve_connection(&builder, stream, router, peer, watcher, header_timeout).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            serve_connection(&builder, s, router, peer, watcher, header_timeout)
                                .await
                        }
                        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                        Err(_) => Err("TLS handshake timed out".to_owned()),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The most a request head may take (hyper's read buffer): more is 431.
const MAX_HEAD: usize = 64 << 10;

/// Serves one connection (after its TLS handshake, if any): the first
/// request's head must arrive within `header_timeout`, or the client gets a
/// 408 and the connection is closed. Later heads on a kept-alive connection
/// are bounded by hyper's own timeout, which only closes: then a head that
/// had begun is answered 408 here, and an idle connection (not owed an
/// answer) is just closed.
async fn serve_connection<S>(
    builder: &auto::Builder<TokioExecutor>,
    mut stream: S,
    router: Router,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
    header_timeout: Duration,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(head) = tokio::time::timeout(header_timeout, read_head(&mut stream)).await else {
        count_header_timeout();
        request_timeout(stream, header_timeout).await;
        return Ok(());
    };
    let head = head.map_err(|e| e.to_string())?;
    // hyper's header timeout is HTTP/1's; an HTTP/2 connection is never
    // answered in HTTP/1.
    let http1 = !head.starts_with(b"PRI * HTTP/2.0");
    let (back, returned) = tokio::sync::oneshot::channel();
    let stream = Returned::new(Rewind::new(head, stream), back);
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .into_owned();
    let served = watcher.watch(conn).await;
    let head_timed_out = served.as_ref().is_err_and(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
    });
    // hyper has answered and shut its side down; the socket is ours again.
    if let Ok((stream, mid_head)) = returned.await {
        if http1 && head_timed_out && mid_head {
            count_header_timeout();
            request_timeout(stream, header_timeout).await;
            return Ok(());
        }
        linger(stream).await;
    }
    served.map_err(|e| e.to_string())
}

/// How long a closing connection waits for more of what the client sends.
const LINGER_IDLE: Duration = Duration::from_millis(500);
/// How long a closing connection may keep reading in all.
const LINGER_MAX: Duration = Duration::from_secs(3);

/// Reads and drops what the client still sends, until it stops (or closes)
/// or [`LINGER_MAX`], before the socket is closed: closing a socket with
/// unread data makes the kernel reset the connection, and a client still
/// sending its body would lose the answer that was already on its way.
async fn linger<S: AsyncRead + Unpin>(mut stream: S) {
    let mut sink = vec![0u8; 16 << 10];
    let _ = tokio::time::timeout(LINGER_MAX, async {
        while let Ok(Ok(n)) = tokio::time::timeout(LINGER_IDLE, stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// An I/O stream handed back through a channel when the one using it drops
/// it (hyper's connection owns it until then), with whether the client has
/// sent anything since the last answer was written (a head begun).
struct Returned<S> {
    inner: Option<S>,
    back: Option<tokio::sync::oneshot::Sender<(S, bool)>>,
    read_since_write: bool,
}

impl<S> Returned<S> {
    fn new(inner: S, back: tokio::sync::oneshot::Sender<(S, bool)>) -> Self {
        Self {
            inner: Some(inner),
            back: Some(back),
            read_since_write: false,
        }
    }

    fn io(self: std::pin::Pin<&mut Self>) -> std::pin::Pin<&mut S>
    where
        S: Unpin,
    {
        std::pin::Pin::new(
            self.get_mut()
                .inner
                .as_mut()
                .expect("present until dropped"),
        )
    }
}

impl<S> Drop for Returned<S> {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            let _ = back.send((inner, self.read_since_write));
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Returned<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut *this).io().poll_read(cx, buf);
        if buf.filled().len() > before {
            this.read_since_write = true;
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Returned<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let res = std::pin::Pin::new(&mut *this).io().poll_write(cx, buf);
        if matches!(res, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.read_since_write = false;
        }
        res
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let res = std::pin::Pin::new(&mut *this)
            .io()
            .poll_write_vectored(cx, bufs);
        if matches!(res, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.read_since_write = false;
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }
}

/// Reads until the end of the first request's head (its blank line; the
/// HTTP/2 preface has one too), the end of the stream, or [`MAX_HEAD`]
/// bytes; what was read, for hyper to parse.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<bytes::Bytes> {
    read_ahead(stream, MAX_HEAD, |buf, new| {
        buf[new.saturating_sub(3)..]
            .windows(4)
            .any(|w| w == b"\r\n\r\n")
    })
    .await
}

/// The answer to a client that did not send its request in time.
async fn request_timeout<S: AsyncWrite + Unpin>(mut stream: S, waited: Duration) {
    let body = format!(
        r#"{{"code":"deadline_exceeded","message":"the request headers did not arrive within {} s"}}"#,
        waited.as_secs_f64()
    );
    let answer = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The answer to one connection too many: 503 with `Retry-After`, then
/// close (a client that sends nothing gets it anyway).
async fn refuse(mut stream: tokio::net::TcpStream) {
    const BODY: &str = r#"{"code":"unavailable","message":"too many connections; retry shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The limits of the admin ports (probes, metrics): few connections, short
/// timeouts.
pub fn admin_limits() -> ListenerArgs {
    ListenerArgs {
        max_connections: 64,
        max_requests_in_flight: 32,
        max_streams_per_connection: 8,
        header_read_timeout: Duration::from_secs(5),
        body_idle_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
    }
}

/// The address a client connected from, when the server recorded it.
pub fn peer(req: &http::Request<axum::body::Body>) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}
