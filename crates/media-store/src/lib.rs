//! Where media and jobs live in MongoDB, as both gateway-svc (writes videos,
//! creates and deletes jobs, reads MP3s, runs the janitor) and converter-svc
//! (reads videos, writes MP3s, moves jobs along) see it. One definition, so
//! the two cannot disagree on the layout. Only the official driver's API is
//! used, nothing specific to the server (FerretDB locally, MongoDB in
//! production).
//!
//! - GridFS buckets `videos`, `videos_1` … `videos_15`: uploaded videos;
//!   `metadata.owner_id`. The file's id picks the bucket
//!   ([`Store::video_files`]).
//! - GridFS bucket `mp3s`: MP3s; `metadata.{owner_id, video_id}`, at most one
//!   per video (unique index).
//! - collection `jobs`: one document per upload, `_id` = the video's id
//!   ([`jobs`]).
//! - collection `locks`: leases that make one replica the janitor
//!   ([`Lock`]).
//! - collection `live_claims`: which converter converts an upload while it
//!   arrives ([`Jobs::claim_live`]).

pub mod gridfs;
pub mod jobs;
pub mod mp4;
pub mod options;
pub mod proto;

pub use gridfs::{Bucket, ChunkStream, ChunkWriter, FileInfo, ReadError, Tail, Tailed};
pub use jobs::{Claim, Deleted, FailureKind, Finish, Job, JobState, Jobs, Mp3Facts};
pub use options::OutputOptions;

use mongodb::{
    Client, Collection, Database, IndexModel,
    bson::{DateTime, Document, doc, oid::ObjectId},
    gridfs::GridFsBucket,
    options::{ClientOptions, GridFsBucketOptions, IndexOptions},
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use svc_kit::config::Secret;

pub use mongodb;

pub const VIDEOS_BUCKET: &str = "videos";
/// How many buckets the videos are spread over; see [`Store::video_files`].
/// Part of the stored layout: every service must agree on it, and changing it
/// strands stored videos, hence a constant and not a setting.
pub const VIDEO_STRIPES: usize = 16;
pub const MP3S_BUCKET: &str = "mp3s";
pub const JOBS_COLLECTION: &str = "jobs";
pub const LOCKS_COLLECTION: &str = "locks";
pub const LIVE_CLAIMS_COLLECTION: &str = "live_claims";

#[derive(Debug, Clone)]
pub struct Store {
    pub db: Database,
    /// The video buckets: the driver's (uploads, lookups of files
    /// documents) and the same collections for our reader and writer.
    video_stripes: Arc<[(GridFsBucket, Bucket)]>,
    pub mp3s: GridFsBucket,
    pub mp3_files: Bucket,
    pub jobs: Jobs,
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
        let video_stripes = (0..VIDEO_STRIPES)
            .map(|k| {
                let name = video_bucket_name(k);
                (bucket(&name), Bucket::new(&db, &name))
            })
            .collect();
        Ok(Self {
            video_stripes,
            mp3s: bucket(MP3S_BUCKET),
            mp3_files: Bucket::new(&db, MP3S_BUCKET),
            jobs: Jobs {
                coll: db.collection(JOBS_COLLECTION),
                live: db.collection(LIVE_CLAIMS_COLLECTION),
            },
            db,
        })
    }

    /// Every index the queries need; idempotent, run at start by the services
    /// that write (the driver would otherwise create the GridFS ones only on
    /// its own upload path, and some servers never get them).
    pub async fn ensure_indexes(&self) -> Result<(), mongodb::error::Error> {
        for bucket in self.video_buckets() {
            bucket.ensure_indexes().await?;
        }
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
            .await?;
        self.jobs.ensure_indexes().await
    }

    /// The bucket video `id` is stored in: one of [`VIDEO_STRIPES`], by the
    /// id's last byte (the low byte of its counter, so one gateway's uploads
    /// take the buckets in turn).
    ///
    /// Why not one bucket: a server without a usable `files_id` index (the
    /// local stack's FerretDB decodes every chunk of the collection for each
    /// read or delete) pays for every other video stored beside the one it
    /// reads, and uploads that arrive together interleave their chunks, so
    /// ten parallel uploads cost each reader all ten. Spread, a read passes
    /// over about its own file. On MongoDB the index makes this moot and the
    /// extra collections cost nothing.
    pub fn video_files(&self, id: ObjectId) -> &Bucket {
        &self.video_stripe(id).1
    }

    /// The driver's bucket for video `id` (uploads, files documents).
    pub fn videos(&self, id: ObjectId) -> &GridFsBucket {
        &self.video_stripe(id).0
    }

    /// Every video bucket, for what spans them (indexes, sweeps).
    pub fn video_buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.video_stripes.iter().map(|(_, b)| b)
    }

    /// Deletes the videos `ids`, one query per bucket and collection.
    pub async fn delete_videos(&self, ids: &[ObjectId]) -> Result<(), mongodb::error::Error> {
        for k in 0..VIDEO_STRIPES {
            let mine: Vec<ObjectId> = ids
                .iter()
                .copied()
                .filter(|id| stripe_of(*id) == k)
                .collect();
            gridfs::delete_files(&self.video_stripes[k].1, &mine).await?;
        }
        Ok(())
    }

    fn video_stripe(&self, id: ObjectId) -> &(GridFsBucket, Bucket) {
        &self.video_stripes[stripe_of(id)]
    }

    /// The MP3 stored for a video, if any.
    pub async fn mp3_for(
        &self,
        video_id: mongodb::bson::oid::ObjectId,
    ) -> Result<Option<mongodb::gridfs::FilesCollectionDocument>, mongodb::error::Error> {
        self.mp3s
            .find_one(doc! { "metadata.video_id": video_id })
            .await
    }

    /// Deletes a job's files (video and MP3); idempotent.
    pub async fn delete_media(&self, job: &Job) -> Result<(), mongodb::error::Error> {
        gridfs::delete_file(self.video_files(job.id), &job.id.into()).await?;
        if let Some(mp3) = self.mp3_for(job.id).await? {
            gridfs::delete_file(&self.mp3_files, &mp3.id).await?;
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), mongodb::error::Error> {
        self.db.run_command(doc! { "ping": 1 }).await.map(drop)
    }

    pub fn lock(&self, name: &str, holder: &str, ttl: Duration) -> Lock {
        Lock {
            coll: self.db.collection(LOCKS_COLLECTION),
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl,
        }
    }
}

fn stripe_of(id: ObjectId) -> usize {
    usize::from(id.bytes()[11]) % VIDEO_STRIPES
}

/// Stripe 0 keeps the name of the single bucket there was before.
fn video_bucket_name(k: usize) -> String {
    if k == 0 {
        VIDEOS_BUCKET.to_owned()
    } else {
        format!("{VIDEOS_BUCKET}_{k}")
    }
}

/// A named lease in MongoDB: whoever holds it may act, one replica at a
/// time; it lapses by itself if its holder dies.
#[derive(Debug, Clone)]
pub struct Lock {
    coll: Collection<Document>,
    name: String,
    holder: String,
    ttl: Duration,
}

impl Lock {
    /// Takes or renews the lease; false if another holds it.
    pub async fn acquire(&self) -> Result<bool, mongodb::error::Error> {
        let now = SystemTime::now();
        let res = self
            .coll
            .update_one(
                doc! {
                    "_id": &self.name,
                    "$or": [
                        { "until": { "$lt": DateTime::from_system_time(now) } },
                        { "holder": &self.holder },
                    ],
                },
                doc! { "$set": {
                    "holder": &self.holder,
                    "until": DateTime::from_system_time(now + self.ttl),
                } },
            )
            .upsert(true)
            .await;
        match res {
            Ok(r) => Ok(r.matched_count == 1 || r.upserted_id.is_some()),
            // The document exists and is held by someone else: the upsert
            // tried to insert a second one with the same `_id`.
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (shutdown), so another replica takes over at once.
    pub async fn release(&self) -> Result<(), mongodb::error::Error> {
        self.coll
            .delete_one(doc! { "_id": &self.name, "holder": &self.holder })
            .await
            .map(drop)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids one process makes in a row (its counter going up by one) take the
    /// buckets in turn, so uploads that arrive together do not share one.
    #[test]
    fn consecutive_ids_take_the_buckets_in_turn() {
        let id = |counter: u32| {
            let mut b = [7u8; 12];
            b[9..].copy_from_slice(&counter.to_be_bytes()[1..]);
            ObjectId::from_bytes(b)
        };
        let start = 0x00ff_fff8; // across the counter's wrap-around
        let stripes: Vec<usize> = (0..VIDEO_STRIPES as u32)
            .map(|i| stripe_of(id((start + i) & 0x00ff_ffff)))
            .collect();
        let mut seen = stripes.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), VIDEO_STRIPES, "{stripes:?}");
        assert_eq!(video_bucket_name(0), "videos");
        assert_eq!(video_bucket_name(3), "videos_3");
    }
}
