//! Serving HTTP (the REST edge, the admin ports) with the limits of
//! [`ListenerArgs`]: our own accept loop over hyper, because `axum::serve`
//! exposes neither a header-read timeout nor a connection limit.
//!
//! - HTTP/1: request headers must arrive within `HEADER_READ_TIMEOUT`
//!   (slowloris), and bodies never pause longer than `BODY_IDLE_TIMEOUT`.
//! - HTTP/2: at most `MAX_STREAMS_PER_CONNECTION` streams per connection.
//! - At most `MAX_CONNECTIONS` connections; one more is answered 503 and
//!   closed.
//! - The peer's address is in each request's extensions
//!   (`axum::extract::ConnectInfo<SocketAddr>`).

use crate::limits::{ConnLimit, ListenerArgs};
use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{io::AsyncWriteExt, net::TcpListener};
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
    let handshake_timeout = limits.header_read_timeout;
    let conns = ConnLimit::new(limits.max_connections, name);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(64 << 10);
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
        let svc =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
        let Some(acceptor) = acceptor.clone() else {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                drop(permit);
            });
            continue;
        };
        // The handshake runs in the connection's own task: a slow client
        // holds up no one else.
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
