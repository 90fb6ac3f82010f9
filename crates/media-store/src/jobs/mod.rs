//! The conversion job and its state machine, in PostgreSQL (the `media`
//! database; migrations in `migrations/`). This module owns the schema and
//! every query; services call its typed methods. Every move is one
//! statement whose `WHERE` says who may make it, so competing gateways,
//! converters and the janitor can never both win (the row lock and
//! PostgreSQL's re-check of the `WHERE` after it make that so):
//!
//! ```text
//!  uploading ──commit──► queued ──claim──► converting ──► done
//!      │                   ▲                   │  │
//!      └─ abandoned        └──── release ──────┘  └────► failed
//!         (removed)
//!  any state ──owner deletes / retention──► deleted (a tombstone)
//! ```
//!
//! A converter may also claim an `uploading` job (a *live* claim,
//! [`Jobs::claim_live`]) and convert the video while it arrives; the commit
//! then hands the job to it (`uploading ──commit──► converting`, under the
//! claim's lease) instead of queueing it.
//!
//! `done`, `failed` and `deleted` are terminal. A job being converted carries
//! a lease that its converter renews while it works; only the lease holder
//! may finish a job, or anyone once no live lease exists (the holder died).
//! Leases run on the database's clock, so converters' clocks do not matter.
//! `uploading` and `deleted` jobs are internal: users never see them.
//!
//! The events that follow a transition (`VideoUploaded` at the commit,
//! `Mp3Ready`/`ConversionFailed` at the finish) are written to the
//! [`outbox`](crate::outbox) in the transition's own transaction.
//!
//! By concern: `model` (the job as stored and its states), `upload`
//! (starting and committing uploads, quotas), `convert` (claims, leases and
//! outcomes), `owner` (what owners see and delete), `janitor` (retention,
//! lost messages and notifications, abandoned uploads, the named [`Lease`]);
//! resumable uploads' offsets are in [`crate::resumable`].

use crate::outbox;
use deadpool_postgres::{GenericClient, Pool};
use mongodb::bson::oid::ObjectId;
use std::{sync::Arc, time::Duration};
use tokio_postgres::error::SqlState;

mod convert;
mod janitor;
mod model;
mod owner;
#[cfg(feature = "testing")]
mod testing;
mod upload;

pub use convert::{Claim, Finish, Mp3Facts};
pub use janitor::Lease;
use model::{COLUMNS, oid, qualified};
pub use model::{FailureKind, Job, JobState};
pub use owner::Deleted;
pub use upload::{NewUpload, OverQuota, Quotas, Started, UPLOAD_ALIVE};

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

/// The jobs table and every move on it.
#[derive(Debug, Clone)]
pub struct Jobs {
    pool: Pool,
    routes: Arc<Routes>,
    /// Woken when an event is written, so the relay sends it at once.
    outbox: outbox::Signal,
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
            outbox: outbox::Signal::default(),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The relay's wake-up (see [`crate::outbox::Relay`]).
    pub fn outbox_signal(&self) -> outbox::Signal {
        self.outbox.clone()
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Job>, Error> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(sql).await?;
        client
            .query_opt(&stmt, params)
            .await?
            .as_ref()
            .map(Job::from_row)
            .transpose()
    }

    async fn many(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Job>, Error> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(sql).await?;
        Job::from_rows(&client.query(&stmt, params).await?)
    }

    async fn count(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, Error> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.execute(&stmt, params).await?)
    }

    /// A transition and the event that follows it, in one transaction.
    /// `event` builds the event from the moved job; nothing is written if the
    /// job did not move.
    async fn move_and_announce(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        event: impl FnOnce(&Job, &Routes) -> outbox::Event,
    ) -> Result<Option<Job>, Error> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let stmt = tx.prepare_cached(sql).await?;
        let Some(row) = tx.query_opt(&stmt, params).await? else {
            return Ok(None);
        };
        let job = Job::from_row(&row)?;
        let event = event(&job, &self.routes);
        outbox::write(&tx, &event).await?;
        if event.is_outcome() {
            crate::webhooks::schedule_outcome(
                &tx,
                &job,
                &event.event_id,
                &self.routes.webhook_queue,
            )
            .await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        Ok(Some(job))
    }

    pub async fn get(&self, id: ObjectId) -> Result<Option<Job>, Error> {
        self.one(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"),
            &[&id.to_hex()],
        )
        .await
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
