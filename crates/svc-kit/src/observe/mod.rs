//! Traces and request metrics at a service's edges, as tower layers:
//!
//! - [`ServerLayer`] on every gRPC server and on the REST edge: one server
//!   span per request, continuing the caller's W3C trace context
//!   (`traceparent`), and the request counters and latency histograms
//!   operators expect (`grpc_server_handled_total`,
//!   `grpc_server_handling_seconds`, `http_server_requests_total`,
//!   `http_server_request_duration_seconds`). Both are finished when the
//!   response body ends, so a streamed download is measured whole and its
//!   gRPC status comes from the trailers.
//! - [`GrpcClientLayer`] on gRPC channels: a client span whose context goes
//!   out in the request's metadata, and `grpc_client_handled_total` /
//!   `grpc_client_handling_seconds` (what a dependency costs us).
//! - [`inject`] / [`extract`] for other carriers (AMQP headers).
//!
//! The server side is here; the client layer is in `client`, the carriers
//! in `propagate`.

use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::Instant,
};
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty};

mod client;
mod propagate;

pub use client::{GrpcClient, GrpcClientLayer, TracedChannel};
pub use propagate::{HeaderExtractor, HeaderInjector, continue_remote, extract, inject};

/// Counts itself in a gauge while it lives: work in progress (saturation),
/// right even when the work is dropped half-way.
#[derive(Debug)]
pub struct InFlight(metrics::Gauge);

impl InFlight {
    pub fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn grpc_names(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

/// The service and method labels of a finished call. Paths that name no
/// service of ours (UNIMPLEMENTED from the server) share one series: anyone
/// can send any path, and a label per path would grow the registry without
/// bound.
fn metric_names<'a>(
    service: &'a str,
    method: &'a str,
    code: tonic::Code,
    client: bool,
) -> (&'a str, &'a str) {
    if !client && code == tonic::Code::Unimplemented {
        ("unknown", "unknown")
    } else {
        (service, method)
    }
}

/// The services of the mesh's servers. Anyone can send a request to any
/// path, so labels built from a path before routing are kept to this closed
/// set; the rest share `unknown`.
const KNOWN_SERVICES: &[&str] = &[
    "mp3converter.auth.v1.AuthService",
    "mp3converter.media.v1.MediaService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn known_service(service: &str) -> &'static str {
    KNOWN_SERVICES
        .iter()
        .find(|s| **s == service)
        .copied()
        .unwrap_or("unknown")
}

/// HTTP methods as a closed set of label values.
fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Probes and reflection get metrics but no spans: they would drown the
/// traces that matter.
fn is_infrastructure(service: &str) -> bool {
    service.starts_with("grpc.health.") || service.starts_with("grpc.reflection.")
}

/// gRPC codes that mean the server failed (OpenTelemetry semantic
/// conventions for server spans); the others are the client's doing.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(v))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Grpc,
}

/// Server spans and request metrics; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct ServerLayer {
    protocol: Protocol,
}

impl ServerLayer {
    /// For a tonic server (`Server::builder().layer(..)`).
    pub fn grpc() -> Self {
        Self {
            protocol: Protocol::Grpc,
        }
    }

    /// For an axum router (`Router::layer(..)`, so the matched route is known).
    pub fn http() -> Self {
        Self {
            protocol: Protocol::Http,
        }
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ServerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerService {
            inner,
            protocol: self.protocol,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerService<S> {
    inner: S,
    protocol: Protocol,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, RB> Service<Request<B>> for ServerService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ObservedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let (span, active, labels) = match self.protocol {
            Protocol::Grpc => {
                let (service, method) = grpc_names(req.uri().path());
                let span = if is_infrastructure(&service) {
                    Span::none()
                } else {
                    tracing::info_span!(
                        "grpc.server",
                        otel.name = %format_args!("{service}/{method}"),
                        otel.kind = "server",
                        otel.status_code = Empty,
                        rpc.system = "grpc",
                        rpc.service = %service,
                        rpc.method = %method,
                        rpc.grpc.status_code = Empty,
                    )
                };
                // Before routing: only the service, and only a known one.
                let active = InFlight::new(metrics::gauge!(
                    "grpc_server_active_requests",
                    "grpc_service" => known_service(&service),
                ));
                (span, active, Labels::Grpc { service, method })
            }
            Protocol::Http => {
                // The route template, never the raw path: ids in paths would
                // make a metric series per request.
                let matched = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|m| m.as_str().to_owned());
                let method = method_label(req.method()).to_owned();
                // Semantic conventions: `METHOD route`, or just `METHOD` when
                // no route matched.
                let name = match &matched {
                    Some(route) => format!("{method} {route}"),
                    None => method.clone(),
                };
                let route = matched.unwrap_or_else(|| "unmatched".to_owned());
                let span = tracing::info_span!(
                    "http.server",
                    otel.name = %name,
                    otel.kind = "server",
                    otel.status_code = Empty,
                    http.request.method = %method,
                    http.route = %route,
                    http.response.status_code = Empty,
                );
                let active = InFlight::new(metrics::gauge!(
                    "http_server_active_requests",
                    "method" => method.clone(),
                    "route" => route.clone(),
                ));
                (span, active, Labels::Http { method, route })
            }
        };
        continue_remote(&span, &HeaderExtractor(req.headers()));
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(async move {
            let res = fut.instrument(span.clone()).await?;
            let obs = Observation {
                labels,
                started,
                span,
                code: None,
                active: Some(active),
            };
            Ok(obs.attach(res))
        })
    }
}

#[derive(Debug)]
enum Labels {
    Grpc {
        service: String,
        method: String,
    },
    /// A call we make: the same names, the client-side metrics.
    GrpcClient {
        service: String,
        method: String,
    },
    Http {
        method: String,
        route: String,
    },
}

impl Labels {
    fn is_grpc(&self) -> bool {
        matches!(self, Self::Grpc { .. } | Self::GrpcClient { .. })
    }
}

/// One request's measurements, recorded once: at the end of the body, or
/// when the body is dropped early (the client went away).
#[derive(Debug)]
struct Observation {
    labels: Labels,
    started: Instant,
    span: Span,
    /// gRPC code or HTTP status, once known.
    code: Option<i32>,
    /// Until finished.
    active: Option<InFlight>,
}

impl Observation {
    /// Wraps the response body so the observation finishes when it ends; a
    /// trailers-only gRPC response (errors, mostly) finishes it now.
    fn attach<B>(mut self, res: Response<B>) -> Response<ObservedBody<B>> {
        if self.labels.is_grpc() {
            self.code = grpc_status(res.headers()).map(|c| c as i32);
            if self.code.is_some() {
                self.finish();
            }
        } else {
            self.code = Some(i32::from(res.status().as_u16()));
        }
        res.map(|inner| ObservedBody {
            inner,
            obs: Some(self),
        })
    }

    fn finish(&mut self) {
        if self.active.take().is_none() {
            return; // already finished
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        match &self.labels {
            Labels::Grpc { service, method } | Labels::GrpcClient { service, method } => {
                // No trailers before the body ended: the call was cancelled.
                let code =
                    tonic::Code::from_i32(self.code.unwrap_or(tonic::Code::Cancelled as i32));
                // The names grpc-go and its dashboards use: `OK`, `NotFound`.
                let code_name = match code {
                    tonic::Code::Ok => "OK".to_owned(),
                    c => format!("{c:?}"),
                };
                let client = matches!(self.labels, Labels::GrpcClient { .. });
                let (service, method) = metric_names(service, method, code, client);
                let labels = [
                    ("grpc_service", service.to_owned()),
                    ("grpc_method", method.to_owned()),
                    ("grpc_code", code_name),
                ];
                if client {
                    metrics::counter!("grpc_client_handled_total", &labels).increment(1);
                    metrics::histogram!("grpc_client_handling_seconds", &labels).record(elapsed);
                } else {
                    metrics::counter!("grpc_server_handled_total", &labels).increment(1);
                    metrics::histogram!("grpc_server_handling_seconds", &labels).record(elapsed);
                }
                self.span.record("rpc.grpc.status_code", code as i32);
                // A client span fails with any status but OK; a server span
                // only with the server's own faults.
                let failed = if client {
                    code != tonic::Code::Ok
                } else {
                    is_server_error(code)
                };
                if failed {
                    self.span.record("otel.status_code", "ERROR");
                }
            }
            Labels::Http { method, route } => {
                let status = self.code.unwrap_or(500);
                let labels = [
                    ("method", method.clone()),
                    ("route", route.clone()),
                    ("status", status.to_string()),
                ];
                metrics::counter!("http_server_requests_total", &labels).increment(1);
                metrics::histogram!("http_server_request_duration_seconds", &labels)
                    .record(elapsed);
                self.span.record("http.response.status_code", status);
                if status >= 500 {
                    self.span.record("otel.status_code", "ERROR");
                }
            }
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        self.finish();
    }
}

pin_project! {
    /// A response body that finishes its request's [`Observation`] when it
    /// ends.
    #[derive(Debug)]
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        obs: Option<Observation>,
    }
}

impl<B: http_body::Body> http_body::Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(obs) = this.obs.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref()
                        && let Some(code) = grpc_status(trailers)
                    {
                        obs.code = Some(code as i32);
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    if obs.labels.is_grpc() && obs.code.is_none() {
                        obs.code = Some(tonic::Code::Internal as i32);
                    }
                    obs.finish();
                }
                Poll::Ready(None) => {
                    if obs.labels.is_grpc() && obs.code.is_none() {
                        obs.code = Some(tonic::Code::Unknown as i32);
                    }
                    obs.finish();
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            grpc_names("/mp3converter.auth.v1.AuthService/Validate"),
            ("mp3converter.auth.v1.AuthService".into(), "Validate".into())
        );
        assert_eq!(
            grpc_names("/nonsense"),
            ("unknown".into(), "unknown".into())
        );
        assert!(is_infrastructure("grpc.health.v1.Health"));
        assert!(!is_infrastructure("mp3converter.media.v1.MediaService"));
    }

    #[test]
    fn labels_come_from_closed_sets() {
        assert_eq!(
            known_service("mp3converter.media.v1.MediaService"),
            "mp3converter.media.v1.MediaService"
        );
        assert_eq!(known_service("evil.Service123"), "unknown");
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(
            method_label(&http::Method::from_bytes(b"M300").unwrap()),
            "other"
        );
    }

    #[test]
    fn unknown_paths_share_one_metric_series() {
        use tonic::Code;
        assert_eq!(metric_names("x.Svc", "M", Code::Ok, false), ("x.Svc", "M"));
        assert_eq!(
            metric_names("random123", "junk", Code::Unimplemented, false),
            ("unknown", "unknown")
        );
        // What we called is known; keep it.
        assert_eq!(
            metric_names("x.Svc", "M", Code::Unimplemented, true),
            ("x.Svc", "M")
        );
    }

    #[test]
    fn only_server_faults_mark_a_server_span_as_failed() {
        assert!(is_server_error(tonic::Code::Unavailable));
        assert!(is_server_error(tonic::Code::Internal));
        assert!(!is_server_error(tonic::Code::NotFound));
        assert!(!is_server_error(tonic::Code::Unauthenticated));
        assert!(!is_server_error(tonic::Code::InvalidArgument));
    }
}
