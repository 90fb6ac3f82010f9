//! Wiring: everything `main` and the tests start.

use crate::{
    config::Config,
    db,
    domain::Email,
    domain::Password,
    grpc::AuthGrpc,
    password::{self, Hasher},
    ratelimit::{LoginLimits, Rates},
    token::Tokens,
};
use deadpool_postgres::Pool;
use mp3converter_proto::auth::v1::auth_service_server::AuthServiceServer;
use std::net::SocketAddr;
use svc_kit::service::Standard;
use svc_kit::{config::Secret, health::Health, tls::MeshTls};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

const SERVICE_NAME: &str = "mp3converter.auth.v1.AuthService";

pub struct App {
    config: Config,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    routes: Routes,
    health: Health,
    pool: Pool,
    limits: LoginLimits,
    tls: Option<MeshTls>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("grpc_addr", &self.grpc_listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Checks the configuration, waits for the database, applies migrations,
    /// seeds the first admin if asked, and binds the listeners (port 0 picks a
    /// free port: see [`App::grpc_addr`]).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // First: a half-configured TLS refuses to start before anything else.
        let tls = config.tls.load()?;
        let secret = Secret::resolve(
            config.jwt_secret.as_ref(),
            config.jwt_secret_file.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("cannot read JWT_SECRET_FILE: {e}"))?;
        let tokens = Tokens::new(
            secret.as_ref(),
            &config.jwt_issuer,
            &config.jwt_audience,
            config.token_ttl,
            config.jwt_leeway,
        )?;
        let hasher = Hasher::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            password::Limits {
                max_concurrent: config.argon2_max_concurrent,
                max_waiting: config.argon2_max_waiting,
                queue_timeout: config.argon2_queue_timeout,
            },
        )
        .await?;
        let limits = LoginLimits::new(
            Rates {
                per_addr: config.login_limit_per_addr,
                per_account_addr: config.login_limit_per_account_addr,
                per_account: config.login_limit_per_account,
            },
            config.trusted_proxies.clone(),
            &config.trusted_proxy_identities,
            config.login_refusal_delay,
        );

        let pool = db::pool(&config.database_url, config.db_pool_size, config.db_timeout)?;
        svc_kit::pg::wait_for(&pool, config.db_startup_timeout).await?;
        db::migrate(&pool).await?;
        seed_admin(&config, &pool, &hasher).await?;

        let (health, health_server) = Health::new(&["postgres"]).await;
        health.track_service(SERVICE_NAME).await;
        health.set("postgres", true).await;

        let grpc = AuthGrpc {
            pool: pool.clone(),
            hasher,
            tokens,
            limits: limits.clone(),
        };
        let routes = Routes::new(health_server).add_service(AuthServiceServer::new(grpc));
        let routes = svc_kit::grpc::with_reflection(
            routes,
            &[mp3converter_proto::FILE_DESCRIPTOR_SET],
            &[SERVICE_NAME],
        )?;

        let grpc_listener = svc_kit::grpc::bind(config.grpc_addr).await?;
        let admin_listener = svc_kit::grpc::bind(config.admin_addr).await?;
        tracing::info!(
            grpc = %grpc_listener.local_addr()?,
            admin = %admin_listener.local_addr()?,
            "auth-svc listening"
        );
        Ok(Self {
            config,
            grpc_listener,
            admin_listener,
            routes,
            health,
            pool,
            limits,
            tls,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .unwrap_or(self.config.grpc_addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin_addr)
    }

    /// Serves until `token` is cancelled, then drains within the grace period.
    pub async fn run_until(self, token: CancellationToken) -> anyhow::Result<()> {
        let standard = Standard::start(
            self.admin_listener,
            &self.health,
            &token,
            // Readiness follows the database: NOT_SERVING while it cannot be reached.
            self.health
                .probes(self.config.db_health_interval, self.config.db_timeout)
                .check("postgres", self.pool.clone(), |pool| async move {
                    db::ping(&pool).await
                })
                .run(token.clone()),
        );
        let housekeeping = tokio::spawn(housekeep(
            self.pool.clone(),
            self.limits.clone(),
            self.config.housekeeping_interval,
            token.clone(),
        ));
        if let Some(tls) = &self.tls {
            tls.spawn_reloader(token.clone());
        }
        let served = svc_kit::shutdown::drain_within(
            &token,
            self.config.shutdown_grace,
            svc_kit::grpc::serve_with(
                self.routes,
                self.grpc_listener,
                &self.config.listener,
                &[],
                self.tls.as_ref(),
                token.clone(),
            ),
        )
        .await;
        drop(standard);
        housekeeping.abort();
        if let Some(res) = served {
            res?;
        }
        tracing::info!("auth-svc stopped");
        Ok(())
    }
}

/// Keeps memory and tables from growing: forgets idle rate-limit keys, and
/// deletes revocations of tokens that have expired anyway (every replica
/// does; the DELETE is idempotent and cheap on its index).
async fn housekeep(
    pool: Pool,
    limits: LoginLimits,
    interval: std::time::Duration,
    token: CancellationToken,
) {
    svc_kit::health::every(interval, token, || async {
        limits.retain_recent();
        match db::delete_expired_revocations(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired revocations deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete expired revocations"),
        }
    })
    .await;
}

/// Creates the admin named by ADMIN_EMAIL if no user has that email yet.
async fn seed_admin(config: &Config, pool: &Pool, hasher: &Hasher) -> anyhow::Result<()> {
    let Some(raw_email) = config.admin_email.as_deref() else {
        return Ok(());
    };
    let email = Email::parse(raw_email).map_err(|why| anyhow::anyhow!("ADMIN_EMAIL {why}"))?;
    let password = Secret::resolve(
        config.admin_password.as_ref(),
        config.admin_password_file.as_deref(),
    )?
    .ok_or_else(|| {
        anyhow::anyhow!("ADMIN_EMAIL is set but neither ADMIN_PASSWORD nor ADMIN_PASSWORD_FILE")
    })?;
    if db::find_by_email(pool, email.as_str()).await?.is_some() {
        return Ok(());
    }
    let password = Password::new_user(password.expose())
        .map_err(|why| anyhow::anyhow!("ADMIN_PASSWORD {why}"))?;
    let hash = hasher.hash(password).await?;
    match db::insert_user(pool, email.as_str(), &hash, true).await {
        Ok(user) => tracing::info!(user_id = %user.id, "seeded the first admin"),
        // Another replica seeded it first.
        Err(db::DbError::Duplicate) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

impl svc_kit::service::Service for App {
    const NAME: &'static str = "auth-svc";

    fn run_until(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        App::run_until(self, shutdown)
    }
}
