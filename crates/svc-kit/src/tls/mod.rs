//! Mutual TLS for the mesh's own gRPC hops (rustls, ring).
//!
//! Every service presents the certificate in `TLS_CERT_FILE` and accepts
//! only peers whose certificate chains to `TLS_CA_FILE`; a server may also
//! require the client to *be* someone in particular (`TLS_ALLOWED_CLIENTS`:
//! DNS names in the client certificate, e.g. only `gateway-svc` may call
//! auth-svc). The files are re-read every `TLS_RELOAD_INTERVAL` when they
//! change, so a rotated certificate (cert-manager renews the Secret, the
//! kubelet updates the mounted files) is used for new connections without a
//! restart; a half-written pair is ignored until it is whole.
//!
//! Plaintext is the explicit `TLS_MODE=off`; a service given certificate
//! files without `TLS_MODE=mtls`, or the reverse, refuses to start.
//!
//! Here: the settings, the files and the [`MeshTls`] built from them; the
//! rustls roles answered from the current files are in `verify`, the
//! public edge's certificate in `edge`, accepted and outgoing connections
//! in `conn`.

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::WebPkiServerVerifier,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::CertifiedKey,
};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};
use tokio_util::sync::CancellationToken;

mod conn;
mod edge;
mod verify;

pub use conn::{Connector, MeshConnectInfo, TlsConn, incoming, peer_addr};
pub use edge::edge_server_config;
use verify::Current;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TlsMode {
    /// Plaintext (local development only).
    #[default]
    Off,
    /// Mutual TLS: present our certificate, require the peer's.
    Mtls,
}

/// The TLS settings of a service's gRPC hops (`--help` documents them).
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// `off` (plaintext; explicit, for local development) or `mtls`.
    #[arg(long = "tls-mode", env = "TLS_MODE", value_enum, default_value = "off")]
    pub tls_mode: TlsMode,

    /// This service's certificate chain (PEM).
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// This service's private key (PEM).
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// The CA peers' certificates must chain to (PEM).
    #[arg(long, env = "TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Identities (DNS names of client certificates) this service's gRPC
    /// server accepts, comma-separated; empty: any certificate of the CA.
    #[arg(long, env = "TLS_ALLOWED_CLIENTS", value_delimiter = ',')]
    pub tls_allowed_clients: Vec<String>,

    /// How often the certificate files are checked for a new version.
    #[arg(long, env = "TLS_RELOAD_INTERVAL", value_parser = crate::config::parse_duration, default_value = "60s")]
    pub tls_reload_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "TLS_MODE=off, yet TLS certificate files are set ({0}): set TLS_MODE=mtls, or unset them"
    )]
    HalfOff(String),
    #[error("TLS_MODE=mtls needs {0}")]
    HalfOn(&'static str),
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What is read from the files; replaced whole on reload.
struct Material {
    key: Arc<CertifiedKey>,
    chain: Vec<CertificateDer<'static>>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
    stamp: Vec<Option<SystemTime>>,
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Files {
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.cert, &self.key, &self.ca]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn load(&self) -> Result<Material, TlsError> {
        let stamp = self.stamp();
        let (certified, chain) = load_pair(&self.cert, &self.key)?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&self.ca).map_err(|e| file_err(&self.ca, e))? {
            roots
                .add(ca.map_err(|e| file_err(&self.ca, e))?)
                .map_err(|e| file_err(&self.ca, e))?;
        }
        if roots.is_empty() {
            return Err(file_err(&self.ca, "no CA certificate in the file"));
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| file_err(&self.ca, e))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| file_err(&self.ca, e))?;
        Ok(Material {
            key: Arc::new(certified),
            chain,
            client_verifier,
            server_verifier,
            stamp,
        })
    }
}

/// A certificate chain and its key, checked to match.
fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(CertifiedKey, Vec<CertificateDer<'static>>), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| file_err(key, e))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    // A key that does not match its certificate (a rotation caught half
    // way) is refused here rather than at every handshake.
    certified
        .keys_match()
        .map_err(|e| file_err(key, format!("does not match the certificate: {e}")))?;
    Ok((certified, chain))
}
/// A service's TLS material, kept current.
#[derive(Clone)]
pub struct MeshTls {
    files: Arc<Files>,
    current: Arc<RwLock<Arc<Material>>>,
    allowed: Arc<Vec<String>>,
    reload: Duration,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("cert", &self.files.cert)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl TlsArgs {
    /// Checks the settings and loads the files; `None` for plaintext.
    pub fn load(&self) -> Result<Option<MeshTls>, TlsError> {
        let set: Vec<&str> = [
            ("TLS_CERT_FILE", self.tls_cert_file.is_some()),
            ("TLS_KEY_FILE", self.tls_key_file.is_some()),
            ("TLS_CA_FILE", self.tls_ca_file.is_some()),
        ]
        .iter()
        .filter(|(_, s)| *s)
        .map(|(n, _)| *n)
        .collect();
        match self.tls_mode {
            TlsMode::Off if !set.is_empty() => Err(TlsError::HalfOff(set.join(", "))),
            TlsMode::Off if !self.tls_allowed_clients.is_empty() => {
                Err(TlsError::HalfOff("TLS_ALLOWED_CLIENTS".into()))
            }
            TlsMode::Off => Ok(None),
            TlsMode::Mtls => {
                let need = |p: &Option<PathBuf>, name| p.clone().ok_or(TlsError::HalfOn(name));
                let files = Files {
                    cert: need(&self.tls_cert_file, "TLS_CERT_FILE")?,
                    key: need(&self.tls_key_file, "TLS_KEY_FILE")?,
                    ca: need(&self.tls_ca_file, "TLS_CA_FILE")?,
                };
                let material = files.load()?;
                Ok(Some(MeshTls {
                    files: Arc::new(files),
                    current: Arc::new(RwLock::new(Arc::new(material))),
                    allowed: Arc::new(
                        self.tls_allowed_clients
                            .iter()
                            .map(|s| s.trim().to_owned())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    ),
                    reload: self.tls_reload_interval,
                }))
            }
        }
    }
}

impl MeshTls {
    /// The same certificates (reloaded together), admitting other clients:
    /// for a second listener of the same service.
    pub fn admitting(&self, clients: &[String]) -> Self {
        Self {
            allowed: Arc::new(
                clients
                    .iter()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
            ..self.clone()
        }
    }

    fn material(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the files every reload interval while they change, until
    /// `token`. A set that does not load (half written) keeps the old one.
    pub fn spawn_reloader(&self, token: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.reload);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if this.files.stamp() == this.material().stamp {
                    continue;
                }
                match this.files.load() {
                    Ok(m) => {
                        *this
                            .current
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(m);
                        metrics::counter!("mp3converter_tls_reloads_total", "outcome" => "ok")
                            .increment(1);
                        tracing::info!(cert = %this.files.cert.display(), "TLS certificates reloaded");
                    }
                    Err(e) => {
                        metrics::counter!("mp3converter_tls_reloads_total", "outcome" => "failed")
                            .increment(1);
                        tracing::warn!(error = %e, "new TLS files do not load yet; keeping the current ones");
                    }
                }
            }
        });
    }

    /// A server config requiring client certificates of the CA (ALPN `alpn`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(Current(self.clone())))
            .with_cert_resolver(Arc::new(Current(self.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// A client config presenting our certificate and verifying the
    /// server's against the CA (ALPN h2, for gRPC).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Current(self.clone())))
            .with_client_cert_resolver(Arc::new(Current(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Our own identity: the first DNS name of our certificate other than
    /// `localhost` (what a peer's TLS_ALLOWED_CLIENTS names).
    pub fn identity(&self) -> Option<String> {
        let m = self.material();
        let cert = webpki::EndEntityCert::try_from(m.chain.first()?).ok()?;
        cert.valid_dns_names()
            .find(|n| *n != "localhost")
            .map(str::to_owned)
    }

    /// Whether a verified client certificate names an allowed identity;
    /// the identity if so (the first allowed name it carries, or `*` when
    /// any certificate of the CA is allowed).
    pub fn authorize(&self, peer: &[CertificateDer<'_>]) -> Option<String> {
        let leaf = peer.first()?;
        if self.allowed.is_empty() {
            return Some("*".into());
        }
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        self.allowed
            .iter()
            .find(|name| {
                ServerName::try_from(name.as_str())
                    .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mode: TlsMode, cert: bool) -> TlsArgs {
        TlsArgs {
            tls_mode: mode,
            tls_cert_file: cert.then(|| PathBuf::from("/x/cert.pem")),
            tls_key_file: None,
            tls_ca_file: None,
            tls_allowed_clients: vec![],
            tls_reload_interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_half_configured_service_refuses_to_start() {
        assert!(matches!(args(TlsMode::Off, false).load(), Ok(None)));
        assert!(matches!(
            args(TlsMode::Off, true).load(),
            Err(TlsError::HalfOff(f)) if f == "TLS_CERT_FILE"
        ));
        assert!(matches!(
            args(TlsMode::Mtls, true).load(),
            Err(TlsError::HalfOn("TLS_KEY_FILE"))
        ));
        assert!(matches!(
            args(TlsMode::Mtls, false).load(),
            Err(TlsError::HalfOn("TLS_CERT_FILE"))
        ));
    }
}
