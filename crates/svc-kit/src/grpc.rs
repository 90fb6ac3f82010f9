//! gRPC serving helpers shared by the services.

use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::server::TcpIncoming};

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
/// in-flight calls finish.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    token: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        // Keep idle connections through NATs and load balancers, and notice dead
        // peers.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Outermost: the span and the metrics cover auth and the handler.
        .layer(crate::observe::ServerLayer::grpc())
        .add_routes(routes)
        // Our own listener, so the builder's tcp_nodelay does not apply: set
        // it per accepted socket, or Nagle + delayed ACKs add ~40 ms to small
        // responses.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            token.cancelled_owned(),
        )
        .await
}

/// Binds a TCP listener, with the address in the error.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
