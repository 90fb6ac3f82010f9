//! gRPC serving helpers shared by the services.

use crate::accept::{H2_PREFACE_LEN, Rewind};
use crate::limits::{
    Admitted, BodyIdleTimeoutLayer, ConnLimit, InFlightLimitLayer, ListenerArgs, Protocol,
    UnaryDeadlineLayer,
};
use crate::observe::ServerLayer;
use crate::tls::MeshTls;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tower::layer::util::{Identity, Stack};

/// Adds server reflection in both versions: grpcurl >= 1.8.8 asks for
/// `grpc.reflection.v1`, while grpcurl 1.8.6 (the one on PyPI), Postman and
/// grpcui still speak only `v1alpha`.
///
/// Only `services` (fully qualified names) and health are listed: the
/// descriptor set holds every contract of the mesh, not just this server's.
pub fn with_reflection(
    routes: Routes,
    descriptor_sets: &[&'static [u8]],
    services: &[&str],
) -> anyhow::Result<Routes> {
    let builder = || {
        let b = descriptor_sets.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, set| b.register_encoded_file_descriptor_set(set),
        );
        services
            .iter()
            .chain(["grpc.health.v1.Health"].iter())
            .fold(b, |b, name| b.with_service_name(*name))
    };
    Ok(routes
        .add_service(builder().build_v1()?)
        .add_service(builder().build_v1alpha()?))
}

/// Serves `routes` on `listener` until `token` is cancelled, then lets
/// in-flight calls finish. `limits` bound connections, requests in flight,
/// streams per connection, idle request streams and unary calls' time;
/// `streaming` names the methods (`/pkg.Service/Method`) that get no
/// deadline. With `tls`, every connection is mutual TLS and its client
/// certificate must name an allowed identity ([`crate::tls`]).
pub async fn serve_with(
    routes: Routes,
    listener: TcpListener,
    limits: &ListenerArgs,
    streaming: &'static [&'static str],
    tls: Option<&MeshTls>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let conns = ConnLimit::new(limits.max_connections, "grpc");
    let router = tonic::transport::Server::builder()
        // Keep idle connections through NATs and load balancers, and notice dead
        // peers.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .layer(request_layers(limits, streaming))
        .add_routes(routes);
    if let Some(tls) = tls {
        let config = tls.server_config(&[b"h2"])?;
        let incoming = crate::tls::incoming(
            listener,
            config,
            tls.clone(),
            conns,
            limits.header_read_timeout,
            token.clone(),
        );
        return Ok(router
            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
            .await?);
    }
    // Our own accept loop (see `accept`): the builder's tcp_nodelay does not
    // apply, so it sets it per socket, or Nagle + delayed ACKs add ~40 ms to
    // small responses.
    let first_bytes = limits.header_read_timeout;
    let incoming = crate::accept::incoming(
        listener,
        conns,
        token.clone(),
        move |mut tcp, _peer, permit| async move {
            let preface = crate::accept::first_bytes(&mut tcp, H2_PREFACE_LEN, first_bytes)
                .await?
                .ok()?;
            Some(Admitted::new(Rewind::new(preface, tcp), permit))
        },
    );
    Ok(router
        .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
        .await?)
}

/// [`serve_with`] the default limits, no streaming method and no TLS.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(routes, listener, &ListenerArgs::default(), &[], None, token).await
}

/// Binds a TCP listener, with the address in the error.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// A channel to `routes` within this process (see [`in_process`]).
pub type InProcess = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    std::convert::Infallible,
>;

/// `routes` as a channel within this process: the layers of [`serve_with`]
/// (the span and metrics, requests in flight, the unary deadline, idle
/// request bodies) without the socket, HTTP/2 framing or TLS in between. A
/// process calling its own gRPC API (the gateway's REST edge) uses it: the
/// same semantics as a client over the network, none of the cost.
pub fn in_process(
    routes: Routes,
    limits: &ListenerArgs,
    streaming: &'static [&'static str],
) -> InProcess {
    use tower::ServiceExt;
    let stack = request_layers(limits, streaming).service(routes);
    let stack = ServiceExt::<http::Request<tonic::body::Body>>::map_response(stack, |res| {
        res.map(tonic::body::Body::new)
    });
    tower::util::BoxCloneSyncService::new(stack)
}

/// The stack [`request_layers`] builds, innermost first.
type RequestLayers = Stack<
    BodyIdleTimeoutLayer,
    Stack<UnaryDeadlineLayer, Stack<InFlightLimitLayer, Stack<ServerLayer, Identity>>>,
>;

/// The layers every gRPC request meets, over the network or in-process.
/// Outermost first: the span and the metrics cover the limits, auth and the
/// handler.
fn request_layers(
    limits: &ListenerArgs,
    streaming: &'static [&'static str],
) -> tower::ServiceBuilder<RequestLayers> {
    tower::ServiceBuilder::new()
        .layer(ServerLayer::grpc())
        .layer(InFlightLimitLayer::new(
            limits.max_requests_in_flight,
            Protocol::Grpc,
        ))
        .layer(UnaryDeadlineLayer::new(limits.request_timeout, streaming))
        .layer(BodyIdleTimeoutLayer::new(
            limits.body_idle_timeout,
            Protocol::Grpc,
        ))
}
