//! The public HTTPS edge's certificate (no client certificate), reloaded
//! like the mesh's.

use super::{TlsError, load_pair, provider};
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};
use tokio_util::sync::CancellationToken;

/// The public edge's certificate (HTTPS for browsers and curl: no client
/// certificate), re-read like the mesh's.
#[derive(Debug)]
struct EdgeCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Vec<Option<SystemTime>>)>,
}

impl EdgeCert {
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.cert, &self.key]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

impl ResolvesServerCert for EdgeCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0
                .clone(),
        )
    }
}

/// A server config for the public HTTPS edge (ALPN h2 and http/1.1): the
/// certificate in `cert`/`key`, re-read every `reload` while they change,
/// until `token`.
pub fn edge_server_config(
    cert: &Path,
    key: &Path,
    reload: Duration,
    token: CancellationToken,
) -> Result<Arc<ServerConfig>, TlsError> {
    let edge = Arc::new(EdgeCert {
        cert: cert.to_owned(),
        key: key.to_owned(),
        current: RwLock::new((Arc::new(load_pair(cert, key)?.0), Vec::new())),
    });
    edge.current
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .1 = edge.stamp();
    let watched = edge.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(reload);
        tick.tick().await;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stamp = watched.stamp();
            if stamp
                == watched
                    .current
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .1
            {
                continue;
            }
            match load_pair(&watched.cert, &watched.key) {
                Ok((k, _)) => {
                    *watched
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = (Arc::new(k), stamp);
                    tracing::info!(cert = %watched.cert.display(), "edge TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new edge TLS files do not load yet; keeping the current ones")
                }
            }
        }
    });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(edge);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
