//! Where media and jobs live, as gateway-svc (writes videos, creates and
//! deletes jobs, reads MP3s, runs the janitor) and converter-svc (reads
//! videos, writes MP3s, moves jobs along) see it. One definition, so the two
//! cannot disagree on the layout.
//!
//! - **Bytes in MongoDB GridFS** ([`Store`]): the bucket `videos` holds
//!   uploaded videos (`_id` = the job's id, `metadata.owner_id`), the bucket
//!   `mp3s` the MP3s (`metadata.{owner_id, video_id}`, at most one per video:
//!   a unique index). Only the official driver's API is used, nothing
//!   specific to the server (FerretDB locally, MongoDB in production).
//! - **Job state in PostgreSQL** ([`Jobs`]): the state machine, leases,
//!   quotas, the janitor's lease and the [`outbox`] of events, each move one
//!   conditional statement. MongoDB could hold it too (its conditional
//!   updates are atomic), but the local stand-in's are not, and PostgreSQL
//!   gives the same guarantee everywhere, with transactions for the outbox.

mod db;
pub mod gridfs;
mod job;
pub mod jobs;
pub mod options;
pub mod outbox;
pub mod proto;
pub mod resumable;
pub mod webhooks;

pub use gridfs::{Bucket, ChunkStream, ChunkWriter, FileInfo, ReadError};
pub use jobs::{
    Claim, DatabaseArgs, Deleted, FailureKind, Finish, Job, JobState, Jobs, Lease, Mp3Facts,
    NewUpload, OverQuota, Quotas, Routes, Started,
};
pub use options::OutputOptions;

use mongodb::{
    Client, Database, IndexModel,
    bson::{doc, oid::ObjectId},
    gridfs::GridFsBucket,
    options::{ClientOptions, GridFsBucketOptions, IndexOptions},
};
use std::time::Duration;
use svc_kit::config::Secret;

pub use mongodb;

pub const VIDEOS_BUCKET: &str = "videos";
pub const MP3S_BUCKET: &str = "mp3s";

/// The GridFS side: videos and MP3s.
#[derive(Debug, Clone)]
pub struct Store {
    pub db: Database,
    /// The driver's video bucket (uploads, files documents) and the same
    /// collections for our reader and writer.
    pub videos: GridFsBucket,
    pub video_files: Bucket,
    pub mp3s: GridFsBucket,
    pub mp3_files: Bucket,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long an operation waits to find a server before failing: an outage
    /// must surface as an error quickly, not after the driver's default 30 s.
    pub server_selection: Duration,
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            server_selection: Duration::from_secs(5),
            connect: Duration::from_secs(5),
        }
    }
}

/// GridFS chunks per query batch when a file is read whole: ~2 MiB (one
/// batch in memory at a time, so the reader's footprint stays small).
pub const READ_BATCH_CHUNKS: u32 = 8;

impl Store {
    /// Builds the client (no I/O yet: the driver connects lazily).
    pub async fn new(
        uri: &Secret,
        database: &str,
        app_name: &str,
        timeouts: Timeouts,
    ) -> Result<Self, mongodb::error::Error> {
        let mut opts = ClientOptions::parse(uri.expose()).await?;
        opts.app_name = Some(app_name.to_owned());
        opts.server_selection_timeout = Some(timeouts.server_selection);
        opts.connect_timeout = Some(timeouts.connect);
        let client = Client::with_options(opts)?;
        let db = client.database(database);
        let bucket = |name: &str| {
            db.gridfs_bucket(
                GridFsBucketOptions::builder()
                    .bucket_name(name.to_owned())
                    .build(),
            )
        };
        Ok(Self {
            videos: bucket(VIDEOS_BUCKET),
            video_files: Bucket::new(&db, VIDEOS_BUCKET),
            mp3s: bucket(MP3S_BUCKET),
            mp3_files: Bucket::new(&db, MP3S_BUCKET),
            db,
        })
    }

    /// Every index the queries need; idempotent, run at start by the services
    /// that write (the driver would otherwise create the GridFS ones only on
    /// its own upload path, and some servers never get them).
    pub async fn ensure_indexes(&self) -> Result<(), mongodb::error::Error> {
        self.video_files.ensure_indexes().await?;
        self.mp3_files.ensure_indexes().await?;
        // One MP3 per video, enforced by the database: the last line of
        // defence if two converters ever raced past the lease.
        self.mp3_files
            .files
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "metadata.video_id": 1 })
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name("one_mp3_per_video".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map(drop)
    }

    /// The MP3 stored for a video, if any.
    pub async fn mp3_for(
        &self,
        video_id: ObjectId,
    ) -> Result<Option<mongodb::gridfs::FilesCollectionDocument>, mongodb::error::Error> {
        self.mp3s
            .find_one(doc! { "metadata.video_id": video_id })
            .await
    }

    /// Deletes the videos `ids`.
    pub async fn delete_videos(&self, ids: &[ObjectId]) -> Result<(), mongodb::error::Error> {
        gridfs::delete_files(&self.video_files, ids).await
    }

    /// Deletes a job's files (video and MP3); idempotent.
    pub async fn delete_media(&self, job: &Job) -> Result<(), mongodb::error::Error> {
        gridfs::delete_file(&self.video_files, &job.id.into()).await?;
        if let Some(mp3) = self.mp3_for(job.id).await? {
            gridfs::delete_file(&self.mp3_files, &mp3.id).await?;
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), mongodb::error::Error> {
        self.db.run_command(doc! { "ping": 1 }).await.map(drop)
    }
}

/// Whether a driver error is a unique-index violation (E11000).
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*err.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        ErrorKind::InsertMany(e) => e.write_errors.iter().flatten().any(|w| w.code == 11000),
        _ => err.to_string().contains("E11000"),
    }
}

/// Whether a driver error means the server could not be reached (as opposed
/// to a bad request): callers answer UNAVAILABLE / retry.
pub fn is_unavailable(err: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        *err.kind,
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
    ) || err.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
}
