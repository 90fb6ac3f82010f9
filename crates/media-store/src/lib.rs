//! Where media and jobs live in MongoDB, as both gateway-svc (writes videos,
//! creates jobs, reads MP3s) and converter-svc (reads videos, writes MP3s,
//! moves jobs along) see it. One definition, so the two cannot disagree on
//! the layout. Only the official driver's API is used, nothing specific to the
//! server (FerretDB locally, MongoDB in production).
//!
//! - GridFS bucket `videos`: uploaded videos; `metadata.owner_id`.
//! - GridFS bucket `mp3s`: MP3s; `metadata.{owner_id, video_id}`.
//! - collection `jobs`: one document per upload, `_id` = the video's id.

use mongodb::{
    Client, Collection, Database, IndexModel,
    bson::{DateTime, doc, oid::ObjectId},
    gridfs::GridFsBucket,
    options::{ClientOptions, GridFsBucketOptions},
};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use svc_kit::config::Secret;

pub use mongodb;

pub const VIDEOS_BUCKET: &str = "videos";
pub const MP3S_BUCKET: &str = "mp3s";
pub const JOBS_COLLECTION: &str = "jobs";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Converting,
    Done,
    Failed,
}

/// A conversion job. Its `_id` is the video's GridFS id: one job per upload,
/// and every consumer can find the job from the event alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub owner_id: String,
    pub owner_email: String,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mp3_id: Option<ObjectId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    /// Set once the broker confirmed the `VideoUploaded` event.
    #[serde(default)]
    pub published: bool,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub db: Database,
    pub videos: GridFsBucket,
    pub mp3s: GridFsBucket,
    pub jobs: Collection<Job>,
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
            mp3s: bucket(MP3S_BUCKET),
            jobs: db.collection(JOBS_COLLECTION),
            db,
        })
    }

    /// Indexes the queries need; idempotent, run at start by both services.
    pub async fn ensure_indexes(&self) -> Result<(), mongodb::error::Error> {
        self.jobs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "owner_id": 1, "_id": -1 })
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// A reader of a video, 16 chunks (~4 MiB) per query.
    pub fn video_reader(&self, file: &mongodb::gridfs::FilesCollectionDocument) -> ChunkReader {
        ChunkReader::new(&self.db, VIDEOS_BUCKET, file, 16)
    }

    /// A reader of an MP3, 4 chunks (~1 MiB) per query.
    pub fn mp3_reader(&self, file: &mongodb::gridfs::FilesCollectionDocument) -> ChunkReader {
        ChunkReader::new(&self.db, MP3S_BUCKET, file, 4)
    }

    pub async fn ping(&self) -> Result<(), mongodb::error::Error> {
        self.db.run_command(doc! { "ping": 1 }).await.map(drop)
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

/// Reads a GridFS file's chunks in bounded ranges, each a short query of its
/// own (`n` in `[i, i+k)`), instead of through the driver's download stream.
///
/// Why not `open_download_stream`: it reads through one long-lived cursor, so
/// a slow reader (a slow HTTP client, ffmpeg back-pressure) loses it to the
/// server's 10-minute idle-cursor timeout, and it takes whatever batch size
/// the server sends: FerretDB answers `getMore` with every remaining chunk in
/// one reply, which the driver rejects above 48 MB. Ranges bound both the
/// memory per round trip and the life of each query, on any server. Chunk
/// numbers and sizes are checked as the GridFS spec asks of readers.
#[derive(Debug)]
pub struct ChunkReader {
    chunks: Collection<mongodb::bson::Document>,
    files_id: mongodb::bson::Bson,
    length: u64,
    chunk_size: u64,
    total_chunks: u32,
    next_n: u32,
    per_read: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
    #[error("GridFS file is corrupt: {0}")]
    Corrupt(String),
}

impl ChunkReader {
    /// `chunks_per_read` chunks (255 KiB each by default) per query.
    pub fn new(
        db: &Database,
        bucket_name: &str,
        file: &mongodb::gridfs::FilesCollectionDocument,
        chunks_per_read: u32,
    ) -> Self {
        let chunk_size = u64::from(file.chunk_size_bytes.max(1));
        let total_chunks = u32::try_from(file.length.div_ceil(chunk_size)).unwrap_or(u32::MAX);
        Self {
            chunks: db.collection(&format!("{bucket_name}.chunks")),
            files_id: file.id.clone(),
            length: file.length,
            chunk_size,
            total_chunks,
            next_n: 0,
            per_read: chunks_per_read.max(1),
        }
    }

    /// The next block of bytes, or `None` at the end.
    pub async fn next_block(&mut self) -> Result<Option<bytes::Bytes>, ReadError> {
        use futures::TryStreamExt;
        if self.next_n >= self.total_chunks {
            return Ok(None);
        }
        let end = self
            .next_n
            .saturating_add(self.per_read)
            .min(self.total_chunks);
        let docs: Vec<mongodb::bson::Document> = self
            .chunks
            .find(doc! {
                "files_id": &self.files_id,
                "n": { "$gte": i64::from(self.next_n), "$lt": i64::from(end) },
            })
            .sort(doc! { "n": 1 })
            .batch_size(self.per_read)
            .limit(i64::from(end - self.next_n))
            .await?
            .try_collect()
            .await?;
        let mut out = bytes::BytesMut::with_capacity((self.chunk_size as usize) * docs.len());
        for d in docs {
            let n = d
                .get("n")
                .and_then(|v| match v {
                    mongodb::bson::Bson::Int32(i) => u32::try_from(*i).ok(),
                    mongodb::bson::Bson::Int64(i) => u32::try_from(*i).ok(),
                    _ => None,
                })
                .ok_or_else(|| ReadError::Corrupt("chunk without a number".into()))?;
            if n != self.next_n {
                return Err(ReadError::Corrupt(format!(
                    "expected chunk {}, found {n}",
                    self.next_n
                )));
            }
            let data = d
                .get_binary_generic("data")
                .map_err(|_| ReadError::Corrupt(format!("chunk {n} has no data")))?;
            let expected = if n + 1 == self.total_chunks {
                self.length - self.chunk_size * u64::from(n)
            } else {
                self.chunk_size
            };
            if data.len() as u64 != expected {
                return Err(ReadError::Corrupt(format!(
                    "chunk {n} has {} bytes, expected {expected}",
                    data.len()
                )));
            }
            out.extend_from_slice(data);
            self.next_n += 1;
        }
        if self.next_n < end {
            return Err(ReadError::Corrupt(format!(
                "chunk {} is missing",
                self.next_n
            )));
        }
        Ok(Some(out.freeze()))
    }
}
