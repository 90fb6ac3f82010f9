//! Client spans and metrics for the gRPC calls a service makes.

use super::{
    BoxFuture, HeaderInjector, InFlight, Labels, Observation, ObservedBody, grpc_names, inject,
};
use http::{Request, Response};
use std::{
    task::{Context as TaskContext, Poll},
    time::Instant,
};
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};

/// Client spans for gRPC calls, with the trace context sent along.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClientLayer;

impl<S> Layer<S> for GrpcClientLayer {
    type Service = GrpcClient<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcClient { inner }
    }
}

/// A traced gRPC channel: `SomeClient::new(GrpcClientLayer.layer(channel))`.
#[derive(Debug, Clone)]
pub struct GrpcClient<S> {
    inner: S,
}

/// The channel type the services' gRPC clients use.
pub type TracedChannel = GrpcClient<tonic::transport::Channel>;

impl<S, B, RB> Service<Request<B>> for GrpcClient<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<ObservedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let (service, method) = grpc_names(req.uri().path());
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
        );
        inject(&span, &mut HeaderInjector(req.headers_mut()));
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(async move {
            let mut obs = Observation {
                labels: Labels::GrpcClient { service, method },
                started,
                span: span.clone(),
                code: None,
                active: Some(InFlight::new(metrics::gauge!(
                    "grpc_client_active_requests"
                ))),
            };
            match fut.instrument(span).await {
                Ok(res) => Ok(obs.attach(res)),
                Err(e) => {
                    // Never reached the server (connect failure, timeout).
                    obs.code = Some(tonic::Code::Unavailable as i32);
                    obs.finish();
                    Err(e)
                }
            }
        })
    }
}
