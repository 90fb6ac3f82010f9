//! A request body that delivers no byte for a while fails (HTTP 408, gRPC
//! DEADLINE_EXCEEDED). Bytes, not messages, count as progress, so a slow
//! but moving upload lives on.

use super::Protocol;
use http::Request;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tower::{Layer, Service};

/// The error a timed-out request body reports.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyIdle(pub Duration);

impl BodyIdle {
    /// Whether `err` (or one of its causes) is a body idle timeout.
    pub fn in_chain(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if e.is::<Self>() {
                return true;
            }
            if let Some(s) = e.downcast_ref::<tonic::Status>()
                && s.code() == tonic::Code::DeadlineExceeded
            {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

pin_project! {
    /// A body that fails once no frame has arrived for `timeout`.
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        protocol: Protocol,
    }
}

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, timeout: Duration, protocol: Protocol) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            protocol,
        }
    }
}

impl<B> http_body::Body for IdleTimeoutBody<B>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.timeout)));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            metrics::counter!("mp3converter_request_body_timeouts_total").increment(1);
            let err: Self::Error = match this.protocol {
                // tonic finds a Status in the error and hands it to the
                // handler as is.
                Protocol::Grpc => Box::new(tonic::Status::deadline_exceeded(format!(
                    "the request stream sent nothing for {:?}",
                    this.timeout
                ))),
                Protocol::Http => Box::new(BodyIdle(*this.timeout)),
            };
            return Poll::Ready(Some(Err(err)));
        }
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        // Something arrived: the clock starts again.
        this.sleep.set(None);
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps every request body in an [`IdleTimeoutBody`], converted back to
/// the body type `S` expects (`axum::body::Body`, `tonic::body::Body`).
#[derive(Debug, Clone, Copy)]
pub struct BodyIdleTimeoutLayer {
    timeout: Duration,
    protocol: Protocol,
}

impl BodyIdleTimeoutLayer {
    pub fn new(timeout: Duration, protocol: Protocol) -> Self {
        Self { timeout, protocol }
    }
}

impl<S> Layer<S> for BodyIdleTimeoutLayer {
    type Service = BodyIdleTimeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyIdleTimeout {
            inner,
            timeout: self.timeout,
            protocol: self.protocol,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BodyIdleTimeout<S> {
    inner: S,
    timeout: Duration,
    protocol: Protocol,
}

/// Bodies that can be built from any `http_body::Body` of bytes.
pub trait FromBody: Sized {
    fn from_body<B>(body: B) -> Self
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>;
}

impl FromBody for axum::body::Body {
    fn from_body<B>(body: B) -> Self
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        axum::body::Body::new(body)
    }
}

impl FromBody for tonic::body::Body {
    fn from_body<B>(body: B) -> Self
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        tonic::body::Body::new(body)
    }
}

impl<S, B> Service<Request<B>> for BodyIdleTimeout<S>
where
    S: Service<Request<B>>,
    B: http_body::Body<Data = bytes::Bytes> + FromBody + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (timeout, protocol) = (self.timeout, self.protocol);
        self.inner
            .call(req.map(|b| B::from_body(IdleTimeoutBody::new(b, timeout, protocol))))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_times_out_only_after_a_silence() {
        let (mut tx, body) =
            http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(1);
        let mut body = std::pin::pin!(IdleTimeoutBody::new(
            body,
            Duration::from_millis(300),
            Protocol::Http
        ));
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = tx.send_data(bytes::Bytes::from_static(b"x")).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        // 5 bytes 200 ms apart: 1 s in all, never 300 ms of silence.
        for _ in 0..5 {
            let f = body.as_mut().frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), "x");
        }
        let err = body.as_mut().frame().await.unwrap().unwrap_err();
        assert!(BodyIdle::in_chain(err.as_ref()), "{err}");
    }
}
