//! Every door has a timeout and a limit: the listeners' connection limits and
//! timeouts, and tower layers for what happens inside a connection.
//!
//! - [`ConnLimit`]: at most N connections per listener; beyond it, a new
//!   connection is answered "busy" (HTTP 503) or simply closed (gRPC).
//! - [`BodyIdleTimeoutLayer`]: a request body that delivers no byte for a
//!   while fails (HTTP 408, gRPC DEADLINE_EXCEEDED). Bytes, not messages,
//!   count as progress, so a slow but moving upload lives on.
//! - [`InFlightLimitLayer`]: at most N requests at once; beyond it, HTTP 503
//!   or gRPC RESOURCE_EXHAUSTED at once, never an unbounded queue.
//! - [`UnaryDeadlineLayer`]: gRPC calls other than the named streaming ones
//!   get a deadline (DEADLINE_EXCEEDED).
//!
//! The request body's idle timeout is in `body`; the rest is here.

use http::{Request, Response};
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

mod body;

pub use body::{BodyIdle, BodyIdleTimeout, BodyIdleTimeoutLayer, FromBody, IdleTimeoutBody};

/// The listener settings every service shares (`--help` documents them).
#[derive(Debug, Clone, clap::Args)]
pub struct ListenerArgs {
    /// Connections at once per listener; more are refused (HTTP 503).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Requests in progress at once per listener; more get HTTP 503 /
    /// gRPC RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_REQUESTS_IN_FLIGHT", default_value_t = 512)]
    pub max_requests_in_flight: usize,

    /// HTTP/2 streams at once per connection.
    #[arg(long, env = "MAX_STREAMS_PER_CONNECTION", default_value_t = 128)]
    pub max_streams_per_connection: u32,

    /// How long a client may take to send a request's headers (HTTP/1).
    #[arg(long, env = "HEADER_READ_TIMEOUT", value_parser = crate::config::parse_duration, default_value = "10s")]
    pub header_read_timeout: Duration,

    /// How long a request body (an upload) may deliver no byte at all.
    #[arg(long, env = "BODY_IDLE_TIMEOUT", value_parser = crate::config::parse_duration, default_value = "30s")]
    pub body_idle_timeout: Duration,

    /// Deadline of every call that is not a stream (gRPC unary calls; the
    /// REST routes that make them).
    #[arg(long, env = "REQUEST_TIMEOUT", value_parser = crate::config::parse_duration, default_value = "30s")]
    pub request_timeout: Duration,
}

impl Default for ListenerArgs {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_requests_in_flight: 512,
            max_streams_per_connection: 128,
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Connections of one listener.
#[derive(Debug, Clone)]
pub struct ConnLimit {
    permits: Arc<Semaphore>,
    listener: &'static str,
}

impl ConnLimit {
    pub fn new(max: usize, listener: &'static str) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.max(1))),
            listener,
        }
    }

    /// A slot for a new connection, held for its life; `None` when full
    /// (counted in `mp3converter_connections_refused_total{listener}`).
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        let p = self.permits.clone().try_acquire_owned().ok();
        if p.is_none() {
            metrics::counter!("mp3converter_connections_refused_total", "listener" => self.listener)
                .increment(1);
        }
        p
    }
}

/// What a refusal looks like on each protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}
/// At most `max` requests at once; the rest are refused at once.
#[derive(Debug, Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
    protocol: Protocol,
}

impl InFlightLimitLayer {
    pub fn new(max: usize, protocol: Protocol) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.max(1))),
            protocol,
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            permits: self.permits.clone(),
            protocol: self.protocol,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    protocol: Protocol,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The "busy" answer of each protocol.
pub fn busy<B: Default>(protocol: Protocol, message: &str) -> Response<B> {
    match protocol {
        Protocol::Grpc => tonic::Status::resource_exhausted(message.to_owned()).into_http(),
        Protocol::Http => {
            let mut res = Response::new(B::default());
            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            res.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            res
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for InFlightLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: BusyBody + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!("mp3converter_requests_refused_total", "reason" => "in_flight")
                .increment(1);
            let res = ResB::busy(self.protocol);
            return Box::pin(async move { Ok(res) });
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let res = inner.call(req).await;
            // Held until the response (headers) is out; a streamed body is
            // bounded by the connection and stream limits.
            drop(permit);
            res
        })
    }
}

/// A response body that can say "busy" in its protocol.
pub trait BusyBody: Sized {
    fn busy(protocol: Protocol) -> Response<Self>;
}

impl BusyBody for axum::body::Body {
    fn busy(protocol: Protocol) -> Response<Self> {
        let mut res = busy::<axum::body::Body>(protocol, "the server is busy; retry shortly");
        if protocol == Protocol::Http {
            *res.body_mut() = axum::body::Body::from(
                r#"{"code":"unavailable","message":"the server is busy; retry shortly"}"#,
            );
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        res
    }
}

impl BusyBody for tonic::body::Body {
    fn busy(protocol: Protocol) -> Response<Self> {
        busy(protocol, "the server is busy; retry shortly")
    }
}

/// A deadline on every gRPC call but the named streaming methods.
#[derive(Debug, Clone)]
pub struct UnaryDeadlineLayer {
    deadline: Duration,
    streaming: &'static [&'static str],
}

impl UnaryDeadlineLayer {
    /// `streaming`: method paths (`/pkg.Service/Method`) without a deadline.
    pub fn new(deadline: Duration, streaming: &'static [&'static str]) -> Self {
        Self {
            deadline,
            streaming,
        }
    }
}

impl<S> Layer<S> for UnaryDeadlineLayer {
    type Service = UnaryDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        UnaryDeadline {
            inner,
            deadline: self.deadline,
            streaming: self.streaming,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UnaryDeadline<S> {
    inner: S,
    deadline: Duration,
    streaming: &'static [&'static str],
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for UnaryDeadline<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if self.streaming.contains(&req.uri().path()) {
            return Box::pin(async move { inner.call(req).await });
        }
        let deadline = self.deadline;
        Box::pin(async move {
            match tokio::time::timeout(deadline, inner.call(req)).await {
                Ok(res) => res,
                Err(_) => {
                    metrics::counter!("mp3converter_requests_refused_total", "reason" => "deadline")
                        .increment(1);
                    Ok(tonic::Status::deadline_exceeded(format!(
                        "the call took longer than {deadline:?}"
                    ))
                    .into_http())
                }
            }
        })
    }
}

pin_project! {
    /// A connection admitted by a [`ConnLimit`]: holds its slot until closed.
    pub struct Admitted<IO> {
        #[pin]
        io: IO,
        _permit: OwnedSemaphorePermit,
    }
}

impl<IO> Admitted<IO> {
    pub fn new(io: IO, permit: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            _permit: permit,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: tokio::io::AsyncRead> tokio::io::AsyncRead for Admitted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Admitted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod defaults {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        listener: ListenerArgs,
    }

    #[test]
    fn the_default_limits_are_the_flags_defaults() {
        let parsed = Flags::try_parse_from(["t"]).unwrap().listener;
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", ListenerArgs::default())
        );
    }
}
