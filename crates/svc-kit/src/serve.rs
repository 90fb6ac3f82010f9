//! Serving HTTP (the REST edge, the admin ports) with the limits of
//! [`ListenerArgs`]: our own accept loop over hyper, because `axum::serve`
//! exposes neither a header-read timeout nor a connection limit.
//!
//! - HTTP/1: request headers must arrive within `HEADER_READ_TIMEOUT`
//!   (slowloris; the first request of a connection is answered 408), and
//!   bodies never pause longer than `BODY_IDLE_TIMEOUT`.
//! - HTTP/2: at most `MAX_STREAMS_PER_CONNECTION` streams per connection.
//! - At most `MAX_CONNECTIONS` connections; one more is answered 503 and
//!   closed.
//! - The peer's address is in each request's extensions
//!   (`axum::extract::ConnectInfo<SocketAddr>`).

use crate::accept::{Rewind, count_header_timeout, read_ahead};
use crate::limits::{ConnLimit, ListenerArgs};
use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
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
/// are bounded by hyper's own timeout, which only closes (an idle
/// connection is not owed an answer).
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
    let stream = Rewind::new(head.map_err(|e| e.to_string())?, stream);
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .into_owned();
    watcher.watch(conn).await.map_err(|e| e.to_string())
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
