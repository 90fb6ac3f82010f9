//! PostgreSQL plumbing: a deadpool pool that fails fast when the database is
//! down, and migrations applied by one replica at a time.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::{path::PathBuf, str::FromStr, sync::Arc, time::Duration};
use tokio_postgres::{NoTls, config::SslMode};

use crate::config::Secret;

/// libpq's `sslmode`, which tokio-postgres only knows up to `require`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    /// `disable`, `allow`: plaintext.
    Disable,
    /// `prefer` (libpq's default): TLS if the server offers it, unverified.
    Prefer,
    /// `require`: TLS, certificate unverified (verified as `verify-ca` when
    /// `sslrootcert` is given, as libpq does).
    Require,
    /// `verify-ca`: TLS, the certificate chains to `sslrootcert`.
    VerifyCa,
    /// `verify-full`: and names the host connected to.
    VerifyFull,
}

/// Takes libpq's `sslmode` and `sslrootcert` out of a URL (tokio-postgres
/// refuses `verify-*` and unknown keys) and returns the rest.
pub fn split_tls(url: &str) -> anyhow::Result<(String, PgTls, Option<PathBuf>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), PgTls::Prefer, None));
    };
    let (mut mode, mut root, mut rest) = (PgTls::Prefer, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                mode = match v {
                    "disable" | "allow" => PgTls::Disable,
                    "prefer" => PgTls::Prefer,
                    "require" => PgTls::Require,
                    "verify-ca" => PgTls::VerifyCa,
                    "verify-full" => PgTls::VerifyFull,
                    other => anyhow::bail!("DATABASE_URL: unknown sslmode {other:?}"),
                }
            }
            "sslrootcert" => root = Some(PathBuf::from(percent_decode(v))),
            _ => rest.push(pair),
        }
    }
    if matches!(mode, PgTls::VerifyCa | PgTls::VerifyFull) && root.is_none() {
        anyhow::bail!("DATABASE_URL: sslmode={mode:?} needs sslrootcert=<CA file>");
    }
    if mode == PgTls::Require && root.is_some() {
        mode = PgTls::VerifyCa;
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, mode, root))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(x) = hex {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls connector for `mode`.
fn connector(
    mode: PgTls,
    root: Option<&PathBuf>,
) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let roots = match root {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("sslrootcert {}: {e}", path.display()))?
            {
                roots
                    .add(c.map_err(|e| anyhow::anyhow!("sslrootcert {}: {e}", path.display()))?)?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match (mode, roots) {
        (PgTls::VerifyFull, Some(roots)) => {
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()?
        }
        (PgTls::VerifyCa, Some(roots)) => Arc::new(AnyName(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()?,
        )),
        _ => Arc::new(Unverified(provider)),
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

/// `require`/`prefer` without a CA: encrypted, not authenticated (libpq's
/// meaning of those modes). The handshake signature is still checked.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

mod verify {
    use super::{AnyName, Unverified};
    use rustls::{
        CertificateError, DigitallySignedStruct, Error, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{verify_tls12_signature, verify_tls13_signature},
        pki_types::{CertificateDer, ServerName, UnixTime},
    };

    impl ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(m, c, d)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    impl ServerCertVerifier for Unverified {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

/// A pool whose calls fail within `timeout` while the database is down
/// (deadpool waits forever by default), and whose connections are checked
/// before reuse: after a database restart, `Fast` recycling hands out dead
/// ones.
pub fn pool(url: &Secret, size: usize, timeout: Duration, app_name: &str) -> anyhow::Result<Pool> {
    let (url, tls, root) = split_tls(url.expose())?;
    let mut pg = tokio_postgres::Config::from_str(&url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))?;
    pg.connect_timeout(timeout);
    if pg.get_application_name().is_none() {
        pg.application_name(app_name);
    }
    let cfg = ManagerConfig {
        recycling_method: RecyclingMethod::Verified,
    };
    let manager = match tls {
        PgTls::Disable => {
            pg.ssl_mode(SslMode::Disable);
            Manager::from_config(pg, NoTls, cfg)
        }
        mode => {
            pg.ssl_mode(if mode == PgTls::Prefer {
                SslMode::Prefer
            } else {
                SslMode::Require
            });
            Manager::from_config(pg, connector(mode, root.as_ref())?, cfg)
        }
    };
    Ok(Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()?)
}

/// Applies `runner`'s migrations under a session advisory lock keyed by
/// `lock_id`, so replicas starting together do not race.
pub async fn migrate(pool: &Pool, runner: refinery::Runner, lock_id: i64) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&lock_id])
        .await?;
    // A migration applied by a newer replica is not an error for an older
    // one: during a rolling upgrade both run, and migrations only add.
    let runner = runner.set_abort_missing(false);
    let res = runner.run_async(&mut **client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&lock_id])
        .await?;
    for m in res?.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}

/// Waits until the database answers, or fails after `timeout`.
pub async fn wait_for(pool: &Pool, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let res = async {
            let c = pool.get().await?;
            c.simple_query("SELECT 1").await?;
            anyhow::Ok(())
        }
        .await;
        match res {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "waiting for the database");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => anyhow::bail!("database not reachable within {timeout:?}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_ssl_settings_are_taken_out_of_the_url() {
        let (url, mode, root) = split_tls(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(url, "postgres://u@h/db?application_name=x");
        assert_eq!(mode, PgTls::VerifyFull);
        assert_eq!(root, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(split_tls("postgres://u@h/db").unwrap().1, PgTls::Prefer);
        assert_eq!(
            split_tls("postgres://u@h/db?sslmode=require&sslrootcert=/ca")
                .unwrap()
                .1,
            PgTls::VerifyCa
        );
        assert!(split_tls("postgres://u@h/db?sslmode=verify-ca").is_err());
        assert!(split_tls("postgres://u@h/db?sslmode=bogus").is_err());
    }
}
