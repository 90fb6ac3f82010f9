//! The stack's development certificates and TLS endpoints, and gRPC channels
//! over them.

use super::*;

/// The stack's development certificates (`scripts/stack certs`, in
/// `STACK_TLS_DIR`) and its TLS endpoints.
#[derive(Debug, Clone)]
pub struct TlsStack {
    pub dir: std::path::PathBuf,
    /// PostgreSQL's URL without database, TLS parameters to add after it.
    pub pg_params: String,
    pub amqps_url: String,
    pub mongodb_tls_uri: String,
}

impl TlsStack {
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: run `eval \"$(scripts/stack env)\"` after `scripts/stack up`"
                )
            })
        };
        let dir = std::path::PathBuf::from(var("STACK_TLS_DIR"));
        Self {
            pg_params: format!(
                "sslmode=verify-full&sslrootcert={}",
                dir.join("ca.pem").display()
            ),
            amqps_url: var("AMQPS_URL"),
            mongodb_tls_uri: var("MONGODB_TLS_URI"),
            dir,
        }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A service's mTLS flags: its own certificate, the CA, and whom its
    /// gRPC server accepts.
    pub(crate) fn flags(&self, svc: &str, allowed: Option<&str>) -> Vec<String> {
        let mut f = vec![
            "--tls-mode".into(),
            "mtls".into(),
            "--tls-cert-file".into(),
            self.file(&format!("{svc}.pem")),
            "--tls-key-file".into(),
            self.file(&format!("{svc}-key.pem")),
            "--tls-ca-file".into(),
            self.file("ca.pem"),
        ];
        if let Some(a) = allowed {
            f.extend(["--tls-allowed-clients".into(), a.into()]);
        }
        f
    }

    /// A client config presenting `cert` (a file stem in the directory, or
    /// none) and trusting `ca`.
    pub fn client_config(&self, cert: Option<&str>, ca: &str) -> rustls::ClientConfig {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.file(ca)).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut cfg = match cert {
            Some(stem) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(self.file(&format!("{stem}.pem")))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(self.file(&format!("{stem}-key.pem"))).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        cfg
    }
}

/// A gRPC channel to `addr` over TLS with `config`, expecting the server to
/// be `server_name`.
pub fn tls_channel(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    server_name: &str,
) -> tonic::transport::Channel {
    let config = std::sync::Arc::new(config);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let (config, name) = (config.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
}
