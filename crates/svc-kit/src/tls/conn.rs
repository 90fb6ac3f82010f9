//! Connections over mutual TLS: the server side's accepted connections
//! (identity checked, HTTP/2 preface read) and the client side's connector.

use super::{MeshTls, TlsError};
use rustls::{
    ClientConfig, ServerConfig,
    pki_types::{CertificateDer, ServerName},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

/// An accepted TLS connection, holding its slot of the listener's
/// connection limit. Its identity was checked before it was handed over;
/// handlers find the peer in [`MeshConnectInfo`] (see [`peer_addr`]).
pub struct TlsConn {
    inner: crate::accept::Rewind<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    info: MeshConnectInfo,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// What a gRPC handler can know of a mutual-TLS peer: its address and the
/// certificate it proved it holds (in the request's extensions).
#[derive(Debug, Clone)]
pub struct MeshConnectInfo {
    pub remote_addr: Option<SocketAddr>,
    pub local_addr: Option<SocketAddr>,
    cert: Option<CertificateDer<'static>>,
}

impl MeshConnectInfo {
    pub fn new(
        remote_addr: Option<SocketAddr>,
        local_addr: Option<SocketAddr>,
        cert: Option<CertificateDer<'static>>,
    ) -> Self {
        Self {
            remote_addr,
            local_addr,
            cert,
        }
    }

    /// Whether the peer's verified certificate names `identity` (a DNS
    /// name, as `TLS_ALLOWED_CLIENTS` does).
    pub fn names(&self, identity: &str) -> bool {
        let (Some(cert), Ok(name)) = (&self.cert, ServerName::try_from(identity)) else {
            return false;
        };
        webpki::EndEntityCert::try_from(cert)
            .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

/// The address of a gRPC request's peer, over mutual TLS or not.
pub fn peer_addr<T>(req: &tonic::Request<T>) -> Option<SocketAddr> {
    req.remote_addr().or_else(|| {
        req.extensions()
            .get::<MeshConnectInfo>()
            .and_then(|i| i.remote_addr)
    })
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("peer", &self.info.remote_addr)
            .finish()
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = MeshConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until `token` (see [`crate::accept`]),
/// completing each TLS handshake, checking the client's identity, and
/// reading its HTTP/2 preface within `first_bytes`; yields the connections
/// that pass. Refusals are counted in `mp3converter_tls_refused_total{reason}`.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    tls: MeshTls,
    conns: crate::limits::ConnLimit,
    first_bytes: Duration,
    token: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    crate::accept::incoming(listener, conns, token, move |tcp, peer, permit| {
        let (acceptor, tls) = (acceptor.clone(), tls.clone());
        async move {
            let local = tcp.local_addr().ok();
            let refused = |reason: &'static str| {
                metrics::counter!("mp3converter_tls_refused_total", "reason" => reason)
                    .increment(1);
            };
            let mut stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        refused("handshake");
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                        return None;
                    }
                    Err(_) => {
                        refused("handshake_timeout");
                        return None;
                    }
                };
            let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
            let Some(identity) = tls.authorize(certs) else {
                refused("identity");
                tracing::warn!(%peer, "a client whose certificate names no allowed identity was refused");
                return None;
            };
            tracing::debug!(%peer, %identity, "TLS client accepted");
            let cert = certs.first().map(|c| c.clone().into_owned());
            let preface =
                crate::accept::first_bytes(&mut stream, crate::accept::H2_PREFACE_LEN, first_bytes)
                    .await?
                    .ok()?;
            Some(TlsConn {
                inner: crate::accept::Rewind::new(preface, stream),
                info: MeshConnectInfo::new(Some(peer), local, cert),
                _permit: permit,
            })
        }
    })
}

/// Connects gRPC channels over mutual TLS (for `Endpoint::connect_with_connector_lazy`):
/// the server's certificate must name the URL's host, or `server_name`
/// when given (a service calling itself over loopback expects its own
/// identity).
#[derive(Clone, Debug)]
pub struct Connector {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
}

impl Connector {
    pub fn new(tls: &MeshTls, server_name: Option<String>) -> Result<Self, TlsError> {
        Ok(Self {
            config: tls.client_config()?,
            server_name,
        })
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        let expected = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other("a URL without a host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name =
                ServerName::try_from(expected.unwrap_or(host)).map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
