//! The media database as every part of the store reaches it: the handle
//! ([`Jobs`]: pool, event routes, the relay's wake-up), its errors, its
//! settings and its migrations. The moves on it live with what they move:
//! jobs in `jobs`, webhooks in `webhooks`, events in `outbox`; each of them
//! builds on this module, none on another's internals.

use deadpool_postgres::Pool;
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Serialises migrations across replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6d70_3363_6f6e_7633; // "mp3conv3"

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database cannot be reached or did not answer in time: retry.
    #[error("the job database is unavailable: {0}")]
    Unavailable(String),
    #[error("job database error: {0}")]
    Other(String),
}

impl Error {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        let unavailable = e.is_closed()
            || e.code().is_none_or(|c| {
                c.code().starts_with("08") // connection exceptions
                    || c == &SqlState::ADMIN_SHUTDOWN
                    || c == &SqlState::CRASH_SHUTDOWN
                    || c == &SqlState::CANNOT_CONNECT_NOW
                    || c == &SqlState::TOO_MANY_CONNECTIONS
            });
        // The server's own message says what went wrong ("db error" alone
        // does not).
        let text = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        if unavailable {
            Self::Unavailable(text)
        } else {
            Self::Other(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => Self::Unavailable(e.to_string()),
        }
    }
}

/// Where the events of a transition go.
#[derive(Debug, Clone)]
pub struct Routes {
    /// `VideoUploaded` (the converters' work queue).
    pub video_queue: String,
    /// `Mp3Ready` and `ConversionFailed` (notify-svc's queue).
    pub mp3_queue: String,
    /// `WebhookDue`: the deliveries of outcomes to users' endpoints
    /// (notify-svc's too).
    pub webhook_queue: String,
    /// Whether finished jobs' sources are deleted (`DELETE_SOURCE`): a
    /// failure's event says the video was not kept.
    pub delete_sources: bool,
}

/// Where the jobs are: the `media` database's settings, as every service
/// that moves jobs reads them.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL of the media database (jobs, their events, leases),
    /// e.g. postgres://user:password@host:5432/media; libpq's `sslmode` and
    /// `sslrootcert` are understood.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: svc_kit::config::Secret,

    /// Connections in the pool.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// How long to wait for a connection before answering UNAVAILABLE.
    #[arg(long, env = "DB_TIMEOUT", value_parser = svc_kit::config::parse_duration, default_value = "3s")]
    pub db_timeout: Duration,
}

/// Wakes the relay of this process (an event was written).
#[derive(Debug, Clone, Default)]
pub struct Signal(Arc<Notify>);

impl Signal {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.0.notified().await;
    }
}

/// The jobs table and every move on it.
#[derive(Debug, Clone)]
pub struct Jobs {
    pub(crate) pool: Pool,
    pub(crate) routes: Arc<Routes>,
    /// Woken when an event is written, so the relay sends it at once.
    pub(crate) outbox: Signal,
}

impl Jobs {
    /// The jobs of the database `args` name: waits for it (up to 30 s),
    /// then applies the migrations.
    pub async fn connect(
        args: &DatabaseArgs,
        app_name: &str,
        routes: Routes,
    ) -> anyhow::Result<Self> {
        let pool = svc_kit::pg::pool(
            &args.database_url,
            args.db_pool_size,
            args.db_timeout,
            app_name,
        )?;
        svc_kit::pg::wait_for(&pool, Duration::from_secs(30)).await?;
        svc_kit::pg::migrate(&pool, embedded::migrations::runner(), MIGRATION_LOCK).await?;
        Ok(Self::new(pool, routes))
    }

    /// On a pool whose database is migrated.
    pub fn new(pool: Pool, routes: Routes) -> Self {
        Self {
            pool,
            routes: Arc::new(routes),
            outbox: Signal::default(),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The relay's wake-up (see [`crate::outbox::Relay`]).
    pub fn outbox_signal(&self) -> Signal {
        self.outbox.clone()
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}
