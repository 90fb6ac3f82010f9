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

use crate::{options::OutputOptions, outbox};
use deadpool_postgres::{GenericClient, Pool};
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio_postgres::{Row, error::SqlState};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Serialises migrations across replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6d70_3363_6f6e_7633; // "mp3conv3"

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// The video is still arriving (internal).
    Uploading,
    Queued,
    Converting,
    Done,
    Failed,
    /// Deleted by its owner or by retention (internal tombstone).
    Deleted,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Deleted)
    }

    /// Whether users see jobs in this state.
    pub fn is_visible(self) -> bool {
        !matches!(self, Self::Uploading | Self::Deleted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploading => "uploading",
            Self::Queued => "queued",
            Self::Converting => "converting",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "uploading" => Self::Uploading,
            "queued" => Self::Queued,
            "converting" => Self::Converting,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "deleted" => Self::Deleted,
            other => return Err(Error::Other(format!("unknown job state {other:?}"))),
        })
    }
}

/// Why a job failed, for what the user is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The input cannot be converted.
    InvalidInput,
    /// Every retry failed for a reason of ours.
    RetriesExhausted,
    /// It did not finish in time.
    TimedOut,
}

impl FailureKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::RetriesExhausted => "retries_exhausted",
            Self::TimedOut => "timed_out",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "invalid_input" => Some(Self::InvalidInput),
            "retries_exhausted" => Some(Self::RetriesExhausted),
            "timed_out" => Some(Self::TimedOut),
            _ => None,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Also the video's GridFS id.
    pub id: ObjectId,
    pub owner_id: String,
    pub owner_email: String,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub state: JobState,
    pub options: OutputOptions,
    pub mp3_id: Option<ObjectId>,
    pub mp3_size_bytes: Option<i64>,
    pub duration_seconds: Option<f64>,
    pub failure_reason: Option<String>,
    pub failure_kind: Option<FailureKind>,
    /// What the user should know about the outcome.
    pub notes: Vec<String>,
    /// Conversion progress, 0 to 100.
    pub progress: Option<f64>,
    pub lease_holder: Option<String>,
    pub lease_until: Option<SystemTime>,
    pub live_holder: Option<String>,
    pub live_until: Option<SystemTime>,
    /// How often the janitor put the job's event out again.
    pub republished: i32,
    /// Whether notify-svc's receipt came back: the user was told.
    pub notified: bool,
    /// When the outcome was last put in the outbox.
    pub announced_at: Option<SystemTime>,
    /// How often the janitor announced the outcome again for want of a
    /// receipt.
    pub reannounced: i32,
    /// Whether the uploaded video has been deleted (retention).
    pub source_deleted: bool,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// When the MP3 (and the job) will be deleted.
    pub expires_at: Option<SystemTime>,
}

const COLUMNS: &str = "id, owner_id, owner_email, filename, content_type, size_bytes, state, \
    options, mp3_id, mp3_size_bytes, duration_seconds, failure_reason, failure_kind, notes, \
    progress, lease_holder, lease_until, live_holder, live_until, republished, notified, \
    announced_at, reannounced, source_deleted, created_at, updated_at, expires_at";

fn oid(s: &str) -> Result<ObjectId, Error> {
    ObjectId::parse_str(s)
        .map_err(|_| Error::Other(format!("a stored id is not an ObjectId: {s:?}")))
}

impl Job {
    fn from_row(r: &Row) -> Result<Self, Error> {
        let options: serde_json::Value = r.try_get("options")?;
        Ok(Self {
            id: oid(r.try_get("id")?)?,
            owner_id: r.try_get("owner_id")?,
            owner_email: r.try_get("owner_email")?,
            filename: r.try_get("filename")?,
            content_type: r.try_get("content_type")?,
            size_bytes: r.try_get("size_bytes")?,
            state: JobState::parse(r.try_get("state")?)?,
            options: serde_json::from_value(options)
                .map_err(|e| Error::Other(format!("stored options: {e}")))?,
            mp3_id: r
                .try_get::<_, Option<&str>>("mp3_id")?
                .map(oid)
                .transpose()?,
            mp3_size_bytes: r.try_get("mp3_size_bytes")?,
            duration_seconds: r.try_get("duration_seconds")?,
            failure_reason: r.try_get("failure_reason")?,
            failure_kind: r
                .try_get::<_, Option<&str>>("failure_kind")?
                .and_then(FailureKind::parse),
            notes: r.try_get("notes")?,
            progress: r.try_get("progress")?,
            lease_holder: r.try_get("lease_holder")?,
            lease_until: r.try_get("lease_until")?,
            live_holder: r.try_get("live_holder")?,
            live_until: r.try_get("live_until")?,
            republished: r.try_get("republished")?,
            notified: r.try_get("notified")?,
            announced_at: r.try_get("announced_at")?,
            reannounced: r.try_get("reannounced")?,
            source_deleted: r.try_get("source_deleted")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            expires_at: r.try_get("expires_at")?,
        })
    }

    fn from_rows(rows: &[Row]) -> Result<Vec<Self>, Error> {
        rows.iter().map(Self::from_row).collect()
    }

    /// Whether another instance holds a lease that has not run out.
    pub fn leased_by_other(&self, instance: &str, now: SystemTime) -> Option<SystemTime> {
        match (&self.lease_holder, self.lease_until) {
            (Some(holder), Some(until)) if holder != instance && until > now => Some(until),
            _ => None,
        }
    }
}

/// An upload about to start: what the job is made of.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub id: ObjectId,
    pub owner_id: String,
    pub owner_email: String,
    pub filename: String,
    pub content_type: String,
    pub options: OutputOptions,
}

/// A user's limits, checked when an upload starts.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Uploads at once.
    pub max_uploads: u64,
    /// Jobs waiting for (or in) conversion.
    pub max_waiting: u64,
    /// Bytes stored: videos not yet deleted, and MP3s.
    pub max_stored: u64,
}

/// Which quota an upload would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverQuota {
    Uploads { max: u64 },
    Waiting { max: u64 },
    Stored { max: u64, used: u64 },
}

/// An upload that may go ahead.
#[derive(Debug, Clone)]
pub struct Started {
    pub job: Job,
    /// Bytes the user may still store (the upload may not grow past it).
    pub room: u64,
}

/// An upload whose job has not been touched for this long is dead (its
/// heartbeat is every 30 s) and no longer counts as one at once.
pub const UPLOAD_ALIVE: Duration = Duration::from_secs(90);

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Ours now, until the lease runs out.
    Claimed(Job),
    /// Another instance converts it; its lease lasts until then.
    HeldElsewhere(SystemTime),
    /// Already done or failed.
    Finished(Job),
    /// Deleted, never committed, or unknown: nothing to do.
    Gone,
}

/// How a finish went.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// This call moved the job.
    Moved(Job),
    /// The job is (already) in this terminal state.
    AlreadyThere(Job),
    /// It cannot be finished by us: another holds a live lease, or it ended
    /// otherwise (deleted, or the other outcome).
    Refused(Option<Job>),
}

/// What deleting a job found.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    /// Deleted now; the job as it was.
    Now(Box<Job>),
    /// Deleted before.
    Already,
    /// Not the caller's, or unknown.
    NotFound,
}

/// What is known of a stored MP3 when its job is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Mp3Facts {
    pub id: ObjectId,
    pub size_bytes: u64,
    pub duration_seconds: f64,
    pub expires_at: Option<SystemTime>,
    /// What the user should know (see [`Job::notes`]).
    pub notes: Vec<String>,
}

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

/// An upload given up (`$1`: when a streaming upload's heartbeat must have
/// come by).
const ABANDONED: &str = "state = 'uploading' AND \
    ((upload_length IS NULL AND updated_at <= $1) \
     OR (upload_length IS NOT NULL AND upload_expires_at <= now() \
         AND (writer_until IS NULL OR writer_until < now())))";

/// Who may finish a job: its lease holder (`$2`), or anyone if no live
/// lease exists (`$2` NULL).
const FINISHABLE: &str = "(state = 'queued' \
    OR (state = 'converting' AND (lease_until < now() OR lease_holder = $2)))";

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

    /// A job as its owner may see it.
    pub async fn get_visible(&self, id: ObjectId, owner: &str) -> Result<Option<Job>, Error> {
        Ok(self
            .one(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND owner_id = $2"),
                &[&id.to_hex(), &owner],
            )
            .await?
            .filter(|j| j.state.is_visible()))
    }

    /// The owner's visible jobs, newest first, after `before` (exclusive).
    pub async fn list_visible(
        &self,
        owner: &str,
        before: Option<ObjectId>,
        limit: i64,
    ) -> Result<Vec<Job>, Error> {
        // 'g' sorts after every hex digit: no `before` means from the top.
        let before = before.map_or_else(|| "g".to_owned(), |b| b.to_hex());
        self.many(
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE owner_id = $1 AND id < $2 \
                 AND state IN ('queued', 'converting', 'done', 'failed') \
                 ORDER BY id DESC LIMIT $3"
            ),
            &[&owner, &before, &limit],
        )
        .await
    }

    /// Records an upload that is starting, if the owner's quotas allow it:
    /// the counts and the insert happen under a lock on the owner, so two
    /// uploads racing for the last slot cannot both have it.
    pub async fn start_upload(
        &self,
        new: &NewUpload,
        quotas: Quotas,
    ) -> Result<Result<Started, OverQuota>, Error> {
        self.start(new, quotas, None).await
    }

    /// As [`Self::start_upload`], for a resumable upload of `length` bytes:
    /// its whole length counts against the stored bytes from the start, and
    /// it counts as an upload at once until it completes or expires.
    pub async fn start_resumable(
        &self,
        new: &NewUpload,
        quotas: Quotas,
        length: u64,
        expires_in: Duration,
    ) -> Result<Result<Started, OverQuota>, Error> {
        self.start(new, quotas, Some((length, expires_in))).await
    }

    async fn start(
        &self,
        new: &NewUpload,
        quotas: Quotas,
        resumable: Option<(u64, Duration)>,
    ) -> Result<Result<Started, OverQuota>, Error> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            // A lock per owner (hashed), held to the commit.
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 7172147))",
            &[&new.owner_id],
        )
        .await?;
        let alive = SystemTime::now() - UPLOAD_ALIVE;
        let counts = tx
            .query_one(
                "SELECT \
                   count(*) FILTER (WHERE state = 'uploading' \
                                      AND (updated_at > $2 OR upload_expires_at > now())) AS uploading, \
                   count(*) FILTER (WHERE state IN ('queued', 'converting')) AS waiting, \
                   coalesce(sum(CASE WHEN source_deleted THEN 0 \
                                     ELSE greatest(size_bytes, coalesce(upload_length, 0)) END \
                                + coalesce(mp3_size_bytes, 0)) \
                            FILTER (WHERE state <> 'deleted'), 0)::bigint AS stored \
                 FROM jobs WHERE owner_id = $1",
                &[&new.owner_id, &alive],
            )
            .await?;
        let n = |k: &str| -> Result<u64, Error> {
            Ok(u64::try_from(counts.try_get::<_, i64>(k)?).unwrap_or(0))
        };
        let (uploading, waiting, used) = (n("uploading")?, n("waiting")?, n("stored")?);
        if waiting >= quotas.max_waiting {
            return Ok(Err(OverQuota::Waiting {
                max: quotas.max_waiting,
            }));
        }
        if uploading >= quotas.max_uploads {
            return Ok(Err(OverQuota::Uploads {
                max: quotas.max_uploads,
            }));
        }
        let room = quotas.max_stored.saturating_sub(used);
        if room == 0 || resumable.is_some_and(|(length, _)| length > room) {
            return Ok(Err(OverQuota::Stored {
                max: quotas.max_stored,
                used,
            }));
        }
        let options = serde_json::to_value(&new.options)
            .map_err(|e| Error::Other(format!("encoding options: {e}")))?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO jobs (id, owner_id, owner_email, filename, content_type, state, \
                                       options, upload_length, upload_expires_at) \
                     VALUES ($1, $2, $3, $4, $5, 'uploading', $6, $7, now() + make_interval(secs => $8)) \
                     RETURNING {COLUMNS}"
                ),
                &[
                    &new.id.to_hex(),
                    &new.owner_id,
                    &new.owner_email,
                    &new.filename,
                    &new.content_type,
                    &options,
                    &resumable.map(|(length, _)| i64::try_from(length).unwrap_or(i64::MAX)),
                    &resumable.map(|(_, expires)| expires.as_secs_f64()),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(Ok(Started {
            job: Job::from_row(&row)?,
            room,
        }))
    }

    /// Keeps an upload's job alive (the janitor removes uploads that stop).
    pub async fn touch_upload(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "UPDATE jobs SET updated_at = now() WHERE id = $1 AND state = 'uploading'",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }

    /// The upload is complete: uploading → converting under the live claim
    /// of the converter that has been converting it as it arrived, if one
    /// holds a claim, else uploading → queued; its `VideoUploaded` goes in
    /// the outbox with it. `None`: not uploading any more (abandoned).
    pub async fn commit_upload(&self, id: ObjectId, size: u64) -> Result<Option<Job>, Error> {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let sql = format!(
            "UPDATE jobs SET \
               state = CASE WHEN live_until > now() THEN 'converting' ELSE 'queued' END, \
               lease_holder = CASE WHEN live_until > now() THEN live_holder END, \
               lease_until = CASE WHEN live_until > now() THEN live_until END, \
               progress = CASE WHEN live_until > now() THEN 0 END, \
               live_holder = NULL, live_until = NULL, writer = NULL, writer_until = NULL, \
               received_bytes = coalesce(upload_length, 0), upload_tail = NULL, \
               size_bytes = $2, updated_at = now() \
             WHERE id = $1 AND state = 'uploading' RETURNING {COLUMNS}"
        );
        self.move_and_announce(&sql, &[&id.to_hex(), &size], |job, routes| {
            outbox::Event::video_uploaded(job, routes)
        })
        .await
    }

    /// Removes the job of an upload that did not complete.
    pub async fn discard_upload(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "DELETE FROM jobs WHERE id = $1 AND state = 'uploading'",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }

    /// Claims an upload still arriving, so this instance converts it as it
    /// arrives: the job, if it is uploading and nobody else holds a claim.
    pub async fn claim_live(
        &self,
        id: ObjectId,
        instance: &str,
        ttl: Duration,
    ) -> Result<Option<Job>, Error> {
        self.one(
            &format!(
                "UPDATE jobs SET live_holder = $2, live_until = now() + $3 * interval '1 ms' \
                 WHERE id = $1 AND state = 'uploading' \
                   AND (live_holder IS NULL OR live_until < now() OR live_holder = $2) \
                 RETURNING {COLUMNS}"
            ),
            &[&id.to_hex(), &instance, &millis(ttl)],
        )
        .await
    }

    /// Extends our live claim; false if it is gone (committed: the lease
    /// took over, see [`Jobs::renew`]).
    pub async fn renew_live(
        &self,
        id: ObjectId,
        instance: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        Ok(self
            .count(
                "UPDATE jobs SET live_until = now() + $3 * interval '1 ms' \
                 WHERE id = $1 AND state = 'uploading' AND live_holder = $2",
                &[&id.to_hex(), &instance, &millis(ttl)],
            )
            .await?
            == 1)
    }

    /// Gives our live claim up (the live attempt is over, whichever way).
    pub async fn drop_live(&self, id: ObjectId, instance: &str) -> Result<(), Error> {
        self.count(
            "UPDATE jobs SET live_holder = NULL, live_until = NULL \
             WHERE id = $1 AND live_holder = $2",
            &[&id.to_hex(), &instance],
        )
        .await
        .map(drop)
    }

    /// Takes the job for conversion if it is queued, or converting under an
    /// expired lease (its converter died) or our own (an earlier attempt of
    /// ours that could not give it back).
    pub async fn claim(&self, id: ObjectId, instance: &str, ttl: Duration) -> Result<Claim, Error> {
        let claimed = self
            .one(
                &format!(
                    "UPDATE jobs SET state = 'converting', lease_holder = $2, \
                       lease_until = now() + $3 * interval '1 ms', progress = COALESCE(progress, 0), \
                       updated_at = now() \
                     WHERE id = $1 AND (state = 'queued' OR (state = 'converting' \
                       AND (lease_until < now() OR lease_holder = $2))) \
                     RETURNING {COLUMNS}"
                ),
                &[&id.to_hex(), &instance, &millis(ttl)],
            )
            .await?;
        if let Some(job) = claimed {
            return Ok(Claim::Claimed(job));
        }
        let now = SystemTime::now();
        Ok(match self.get(id).await? {
            Some(job) if matches!(job.state, JobState::Done | JobState::Failed) => {
                Claim::Finished(job)
            }
            Some(job) if job.state == JobState::Converting => {
                Claim::HeldElsewhere(job.lease_until.unwrap_or(now + ttl))
            }
            // Just released between the two statements: try again soon.
            Some(job) if job.state == JobState::Queued => Claim::HeldElsewhere(now),
            _ => Claim::Gone,
        })
    }

    /// Extends our lease; false if we lost it (taken over, deleted).
    pub async fn renew(&self, id: ObjectId, instance: &str, ttl: Duration) -> Result<bool, Error> {
        Ok(self
            .count(
                "UPDATE jobs SET lease_until = now() + $3 * interval '1 ms' \
                 WHERE id = $1 AND state = 'converting' AND lease_holder = $2",
                &[&id.to_hex(), &instance, &millis(ttl)],
            )
            .await?
            == 1)
    }

    /// Records conversion progress under our lease; the job after it.
    /// Progress never goes backwards: an attempt that starts over (a live
    /// attempt falling back to the stored file, a converter lost) shows the
    /// furthest point reached until it passes it, as users expect of a bar.
    pub async fn progress(
        &self,
        id: ObjectId,
        instance: &str,
        percent: f64,
    ) -> Result<Option<Job>, Error> {
        self.one(
            &format!(
                "UPDATE jobs SET progress = GREATEST(COALESCE(progress, 0), $3), updated_at = now() \
                 WHERE id = $1 AND state = 'converting' AND lease_holder = $2 \
                 RETURNING {COLUMNS}"
            ),
            &[&id.to_hex(), &instance, &percent.clamp(0.0, 100.0)],
        )
        .await
    }

    /// Gives the job back (shutdown, a transient failure): queued again. Its
    /// message is still in the broker (retried or requeued).
    pub async fn release(&self, id: ObjectId, instance: &str) -> Result<Option<Job>, Error> {
        self.one(
            &format!(
                "UPDATE jobs SET state = 'queued', lease_holder = NULL, lease_until = NULL, \
                   updated_at = now() \
                 WHERE id = $1 AND state = 'converting' AND lease_holder = $2 \
                 RETURNING {COLUMNS}"
            ),
            &[&id.to_hex(), &instance],
        )
        .await
    }

    /// converting → done, by the lease holder (or anyone if no live lease),
    /// with its `Mp3Ready` in the outbox.
    pub async fn finish_done(
        &self,
        id: ObjectId,
        instance: Option<&str>,
        mp3: Mp3Facts,
    ) -> Result<Finish, Error> {
        let sql = format!(
            "UPDATE jobs SET state = 'done', mp3_id = $3, mp3_size_bytes = $4, \
               duration_seconds = $5, expires_at = $6, notes = $7, progress = 100, \
               lease_holder = NULL, lease_until = NULL, failure_reason = NULL, \
               announced_at = now(), updated_at = now() \
             WHERE id = $1 AND {FINISHABLE} RETURNING {COLUMNS}"
        );
        let moved = self
            .move_and_announce(
                &sql,
                &[
                    &id.to_hex(),
                    &instance,
                    &mp3.id.to_hex(),
                    &i64::try_from(mp3.size_bytes).unwrap_or(i64::MAX),
                    &mp3.duration_seconds,
                    &mp3.expires_at,
                    &mp3.notes,
                ],
                outbox::Event::outcome,
            )
            .await?;
        self.finish_outcome(id, moved, JobState::Done).await
    }

    /// → failed, by the lease holder (or anyone if no live lease), with its
    /// `ConversionFailed` in the outbox; never from a terminal state.
    pub async fn finish_failed(
        &self,
        id: ObjectId,
        instance: Option<&str>,
        reason: &str,
        kind: FailureKind,
    ) -> Result<Finish, Error> {
        let sql = format!(
            "UPDATE jobs SET state = 'failed', failure_reason = $3, failure_kind = $4, \
               lease_holder = NULL, lease_until = NULL, progress = NULL, \
               announced_at = now(), updated_at = now() \
             WHERE id = $1 AND {FINISHABLE} RETURNING {COLUMNS}"
        );
        let moved = self
            .move_and_announce(
                &sql,
                &[&id.to_hex(), &instance, &reason, &kind.as_str()],
                outbox::Event::outcome,
            )
            .await?;
        self.finish_outcome(id, moved, JobState::Failed).await
    }

    async fn finish_outcome(
        &self,
        id: ObjectId,
        moved: Option<Job>,
        target: JobState,
    ) -> Result<Finish, Error> {
        if let Some(job) = moved {
            return Ok(Finish::Moved(job));
        }
        Ok(match self.get(id).await? {
            Some(job) if job.state == target => Finish::AlreadyThere(job),
            other => Finish::Refused(other),
        })
    }

    /// notify-svc's receipt came back: the user was told. Idempotent.
    pub async fn mark_notified(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "UPDATE jobs SET notified = true WHERE id = $1 AND NOT notified",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }

    /// Records that the uploaded videos of these jobs are gone.
    pub async fn mark_sources_deleted(&self, ids: &[ObjectId]) -> Result<(), Error> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_hex()).collect();
        self.count(
            "UPDATE jobs SET source_deleted = true WHERE id = ANY($1) AND NOT source_deleted",
            &[&ids],
        )
        .await
        .map(drop)
    }

    /// The owner deletes a job (any visible state): it becomes a tombstone,
    /// so a converter still at work loses its lease and a repeated delete is
    /// recognised.
    pub async fn delete(&self, id: ObjectId, owner: &str) -> Result<Deleted, Error> {
        let before = self
            .one(
                &format!(
                    "WITH old AS (SELECT * FROM jobs WHERE id = $1 AND owner_id = $2 FOR UPDATE) \
                     UPDATE jobs j SET state = 'deleted', lease_holder = NULL, lease_until = NULL, \
                       progress = NULL, updated_at = now() \
                     FROM old WHERE j.id = old.id \
                       AND old.state IN ('queued', 'converting', 'done', 'failed') \
                     RETURNING {}",
                    qualified("old")
                ),
                &[&id.to_hex(), &owner],
            )
            .await?;
        if let Some(job) = before {
            return Ok(Deleted::Now(Box::new(job)));
        }
        let now = self
            .one(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND owner_id = $2"),
                &[&id.to_hex(), &owner],
            )
            .await?;
        Ok(match now {
            Some(j) if j.state == JobState::Deleted => Deleted::Already,
            _ => Deleted::NotFound,
        })
    }

    /// Retention: up to `limit` done jobs whose MP3 expired become tombstones;
    /// the jobs as they were.
    pub async fn expire_due(&self, limit: i64) -> Result<Vec<Job>, Error> {
        self.many(
            &format!(
                "WITH due AS (SELECT * FROM jobs WHERE state = 'done' AND expires_at <= now() \
                   ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE jobs j SET state = 'deleted', updated_at = now() \
                 FROM due WHERE j.id = due.id RETURNING {}",
                qualified("due")
            ),
            &[&limit],
        )
        .await
    }

    /// Jobs queued or converting without a live lease that have not moved
    /// since `before`: their message may be lost.
    pub async fn stuck(&self, before: SystemTime, limit: i64) -> Result<Vec<Job>, Error> {
        self.many(
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'converting') \
                   AND updated_at <= $1 AND (lease_until IS NULL OR lease_until < now()) \
                 ORDER BY updated_at LIMIT $2"
            ),
            &[&before, &limit],
        )
        .await
    }

    /// Puts a stuck job's `VideoUploaded` out again (the same event id),
    /// unless it moved meanwhile; whether it did.
    pub async fn republish(&self, id: ObjectId, before: SystemTime) -> Result<bool, Error> {
        let sql = format!(
            "UPDATE jobs SET republished = republished + 1, updated_at = now() \
             WHERE id = $1 AND state IN ('queued', 'converting') AND updated_at <= $2 \
               AND (lease_until IS NULL OR lease_until < now()) \
             RETURNING {COLUMNS}"
        );
        Ok(self
            .move_and_announce(&sql, &[&id.to_hex(), &before], |job, routes| {
                outbox::Event::video_uploaded(job, routes)
            })
            .await?
            .is_some())
    }

    /// Finished jobs whose outcome went out before `before` (and is not
    /// waiting in the outbox still) with no receipt back, announced again at
    /// most `max` times so far.
    pub async fn unnotified(
        &self,
        before: SystemTime,
        max: i32,
        limit: i64,
    ) -> Result<Vec<Job>, Error> {
        self.many(
            &format!(
                "SELECT {COLUMNS} FROM jobs j WHERE state IN ('done', 'failed') AND NOT notified \
                   AND announced_at <= $1 AND reannounced <= $2 \
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id AND o.sent_at IS NULL) \
                 ORDER BY announced_at LIMIT $3"
            ),
            &[&before, &max, &limit],
        )
        .await
    }

    /// Announces a finished job's outcome again (the same event id: notify
    /// sends one email per id), counting it.
    pub async fn reannounce(&self, id: ObjectId) -> Result<bool, Error> {
        let sql = format!(
            "UPDATE jobs SET reannounced = reannounced + 1, announced_at = now() \
             WHERE id = $1 AND state IN ('done', 'failed') AND NOT notified \
             RETURNING {COLUMNS}"
        );
        Ok(self
            .move_and_announce(&sql, &[&id.to_hex()], outbox::Event::outcome)
            .await?
            .is_some())
    }

    /// Counts a last announcement as given up (no receipt ever came): the
    /// job is not looked at again.
    pub async fn give_up_notifying(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "UPDATE jobs SET reannounced = reannounced + 1 WHERE id = $1",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }

    /// Uploads given up: streaming ones whose heartbeat stopped before
    /// `before`, resumable ones past their expiry with nobody appending.
    pub async fn abandoned_uploads(
        &self,
        before: SystemTime,
        limit: i64,
    ) -> Result<Vec<Job>, Error> {
        self.many(
            &format!("SELECT {COLUMNS} FROM jobs WHERE {ABANDONED} ORDER BY updated_at LIMIT $2"),
            &[&before, &limit],
        )
        .await
    }

    /// Removes the job of an abandoned upload if it still is one (an upload
    /// resumed in the meantime is kept); its chunks go after.
    pub async fn remove_abandoned(&self, id: ObjectId, before: SystemTime) -> Result<bool, Error> {
        self.count(
            &format!("DELETE FROM jobs WHERE id = $2 AND {ABANDONED}"),
            &[&before, &id.to_hex()],
        )
        .await
        .map(|n| n > 0)
    }

    /// Finished jobs (since before `before`) whose source is still stored.
    pub async fn sources_to_delete(
        &self,
        before: SystemTime,
        limit: i64,
    ) -> Result<Vec<ObjectId>, Error> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed') AND NOT source_deleted \
                   AND updated_at <= $1 ORDER BY updated_at LIMIT $2",
            )
            .await?;
        client
            .query(&stmt, &[&before, &limit])
            .await?
            .iter()
            .map(|r| oid(r.try_get(0)?))
            .collect()
    }

    /// Tombstones older than `before`.
    pub async fn old_tombstones(&self, before: SystemTime, limit: i64) -> Result<Vec<Job>, Error> {
        self.many(
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE state = 'deleted' AND updated_at <= $1 \
                 ORDER BY updated_at LIMIT $2"
            ),
            &[&before, &limit],
        )
        .await
    }

    /// Removes a tombstone for good (its files are gone).
    pub async fn purge_tombstone(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "DELETE FROM jobs WHERE id = $1 AND state = 'deleted'",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }

    /// Which of `ids` belong to a job that is not deleted (files of the
    /// others are orphans).
    pub async fn live_ids(&self, ids: &[ObjectId]) -> Result<HashSet<ObjectId>, Error> {
        let hex: Vec<String> = ids.iter().map(|i| i.to_hex()).collect();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT id FROM jobs WHERE id = ANY($1) AND state <> 'deleted'")
            .await?;
        client
            .query(&stmt, &[&hex])
            .await?
            .iter()
            .map(|r| oid(r.try_get(0)?))
            .collect()
    }

    /// Forgets sent events older than `before`.
    pub async fn purge_sent_events(&self, before: SystemTime) -> Result<u64, Error> {
        self.count(
            "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1",
            &[&before],
        )
        .await
    }

    /// A named lease on this database (see [`Lease`]).
    pub fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Lease {
        Lease {
            pool: self.pool.clone(),
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl,
        }
    }
}

/// Setting jobs up as a test needs them, state and all (the `testing`
/// feature; never used by the services).
#[cfg(feature = "testing")]
impl Jobs {
    /// Writes `job` as it is, every column.
    pub async fn insert(&self, job: &Job) -> Result<(), Error> {
        let options = serde_json::to_value(&job.options)
            .map_err(|e| Error::Other(format!("encoding options: {e}")))?;
        let client = self.pool.get().await?;
        client
            .execute(
                &format!(
                    "INSERT INTO jobs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                     $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)"
                ),
                &[
                    &job.id.to_hex(),
                    &job.owner_id,
                    &job.owner_email,
                    &job.filename,
                    &job.content_type,
                    &job.size_bytes,
                    &job.state.as_str(),
                    &options,
                    &job.mp3_id.map(|i| i.to_hex()),
                    &job.mp3_size_bytes,
                    &job.duration_seconds,
                    &job.failure_reason,
                    &job.failure_kind.map(FailureKind::as_str),
                    &job.notes,
                    &job.progress,
                    &job.lease_holder,
                    &job.lease_until,
                    &job.live_holder,
                    &job.live_until,
                    &job.republished,
                    &job.notified,
                    &job.announced_at,
                    &job.reannounced,
                    &job.source_deleted,
                    &job.created_at,
                    &job.updated_at,
                    &job.expires_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// Every job, oldest first.
    pub async fn all(&self) -> Result<Vec<Job>, Error> {
        self.many(&format!("SELECT {COLUMNS} FROM jobs ORDER BY id"), &[])
            .await
    }

    /// Events written so far: (kind, event id, sent).
    pub async fn events(&self) -> Result<Vec<(String, String, bool)>, Error> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                "SELECT kind, event_id, sent_at IS NOT NULL FROM outbox ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}

#[cfg(feature = "testing")]
impl Job {
    /// A new job for an upload that is starting (set the rest as the test
    /// needs).
    pub fn uploading(
        id: ObjectId,
        owner_id: &str,
        owner_email: &str,
        filename: &str,
        content_type: &str,
        options: OutputOptions,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            id,
            owner_id: owner_id.to_owned(),
            owner_email: owner_email.to_owned(),
            filename: filename.to_owned(),
            content_type: content_type.to_owned(),
            size_bytes: 0,
            state: JobState::Uploading,
            options,
            mp3_id: None,
            mp3_size_bytes: None,
            duration_seconds: None,
            failure_reason: None,
            failure_kind: None,
            notes: Vec::new(),
            progress: None,
            lease_holder: None,
            lease_until: None,
            live_holder: None,
            live_until: None,
            republished: 0,
            notified: false,
            announced_at: None,
            reannounced: 0,
            source_deleted: false,
            created_at: now,
            updated_at: now,
            expires_at: None,
        }
    }
}

/// Every column of `table` (an alias in a statement), in [`COLUMNS`] order.
fn qualified(table: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{table}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A named lease: whoever holds it may act, one holder at a time; it lapses
/// by itself if its holder dies.
#[derive(Debug, Clone)]
pub struct Lease {
    pool: Pool,
    name: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// Takes or renews the lease; false if another holds it.
    pub async fn acquire(&self) -> Result<bool, Error> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO leases (name, holder, until) \
                 VALUES ($1, $2, now() + $3 * interval '1 ms') \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
                 WHERE leases.until < now() OR leases.holder = excluded.holder \
                 RETURNING holder",
            )
            .await?;
        Ok(client
            .query_opt(&stmt, &[&self.name, &self.holder, &millis(self.ttl)])
            .await?
            .is_some())
    }

    /// Gives the lease up (shutdown), so another replica takes over at once.
    pub async fn release(&self) -> Result<(), Error> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[&self.name, &self.holder],
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_some_states_are_seen_or_final() {
        assert!(!JobState::Uploading.is_visible());
        assert!(!JobState::Deleted.is_visible());
        assert!(JobState::Failed.is_visible() && JobState::Failed.is_terminal());
        assert!(!JobState::Converting.is_terminal());
        for s in [
            JobState::Uploading,
            JobState::Queued,
            JobState::Converting,
            JobState::Done,
            JobState::Failed,
            JobState::Deleted,
        ] {
            assert_eq!(JobState::parse(s.as_str()).unwrap(), s);
        }
    }

    #[test]
    fn columns_qualify_in_order() {
        let q = qualified("old");
        assert!(q.starts_with("old.id, old.owner_id,"), "{q}");
        assert_eq!(q.matches("old.").count(), COLUMNS.split(", ").count());
    }
}
