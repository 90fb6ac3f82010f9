//! Resumable uploads: a video that arrives over several requests, possibly
//! on several gateway replicas, with restarts in between.
//!
//! - **The offset is in PostgreSQL** (`jobs.received_bytes`), with the
//!   bytes past the last whole chunk (`upload_tail`); GridFS holds whole
//!   chunks only. Chunks past the offset are scratch, replaced by the next
//!   append, so a writer that dies mid-append costs at most what it had not
//!   yet checkpointed, and resuming never looks a chunk up.
//! - **One writer at a time** ([`Jobs::begin_append`]): a lease on the job
//!   row, taken only at the stored offset and renewed at each checkpoint. A
//!   second request appending at once is refused ([`Append::Busy`]), rather
//!   than both writing the same chunks; a writer that died holds it until
//!   its lease runs out.
//! - **The bytes go straight into the bucket's chunks** ([`Appender`]), as
//!   GridFS lays them out; the last chunk and the files document are written
//!   after the last byte, so the video exists for readers only once whole.

use crate::{
    Bucket, JobState, Jobs,
    gridfs::{CHUNK_SIZE, delete_file},
    jobs::Error,
};
use mongodb::{
    bson::{Binary, Bson, DateTime, Document, doc, oid::ObjectId, spec::BinarySubtype},
    error::Error as MongoError,
};
use std::time::{Duration, SystemTime};
use tokio_postgres::Row;

/// A resumable upload as its client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    pub id: ObjectId,
    pub filename: String,
    pub content_type: String,
    /// The declared size.
    pub length: u64,
    /// Bytes stored: where the next append starts.
    pub received: u64,
    /// Removed if not continued by then.
    pub expires_at: SystemTime,
    /// `Uploading` until the last byte, then the job's state.
    pub state: JobState,
}

impl Partial {
    pub fn is_complete(&self) -> bool {
        self.state != JobState::Uploading
    }

    fn from_row(r: &Row) -> Result<Self, Error> {
        let n = |k: &str| -> Result<u64, Error> {
            Ok(u64::try_from(r.try_get::<_, i64>(k)?).unwrap_or(0))
        };
        let id: &str = r.try_get("id")?;
        Ok(Self {
            id: ObjectId::parse_str(id)
                .map_err(|_| Error::Other(format!("bad stored id {id:?}")))?,
            filename: r.try_get("filename")?,
            content_type: r.try_get("content_type")?,
            length: n("upload_length")?,
            received: n("received_bytes")?,
            expires_at: r.try_get("upload_expires_at")?,
            state: JobState::parse(r.try_get("state")?)?,
        })
    }
}

const PARTIAL: &str =
    "id, filename, content_type, upload_length, received_bytes, upload_expires_at, state";

/// What asking to append found.
#[derive(Debug, Clone, PartialEq)]
pub enum Append {
    /// Go ahead: the caller is the upload's only writer until it ends or
    /// its lease runs out. With the bytes past the last full chunk.
    Granted(Partial, Vec<u8>),
    /// The upload is at another offset (or complete): the client must ask
    /// where it is.
    Conflict(Partial),
    /// Another request is appending to it now.
    Busy(Partial),
    /// No resumable upload of this owner with this id (deleted, expired,
    /// someone else's, or a streaming upload).
    NotFound,
}

impl Jobs {
    /// One of `owner`'s resumable uploads, whatever its state (not deleted).
    pub async fn partial(&self, id: ObjectId, owner: &str) -> Result<Option<Partial>, Error> {
        let client = self.pool().get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {PARTIAL} FROM jobs WHERE id = $1 AND owner_id = $2 \
                 AND upload_length IS NOT NULL AND state <> 'deleted'"
            ))
            .await?;
        client
            .query_opt(&stmt, &[&id.to_hex(), &owner])
            .await?
            .as_ref()
            .map(Partial::from_row)
            .transpose()
    }

    /// Makes `writer` the upload's only writer for `ttl`, if it is
    /// uploading, at `offset`, and nobody else is appending.
    pub async fn begin_append(
        &self,
        id: ObjectId,
        owner: &str,
        offset: u64,
        writer: &str,
        ttl: Duration,
    ) -> Result<Append, Error> {
        let client = self.pool().get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "UPDATE jobs SET writer = $4, writer_until = now() + make_interval(secs => $5) \
                 WHERE id = $1 AND owner_id = $2 AND state = 'uploading' \
                   AND upload_length IS NOT NULL AND received_bytes = $3 \
                   AND (writer_until IS NULL OR writer_until < now()) \
                 RETURNING {PARTIAL}, upload_tail"
            ))
            .await?;
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let granted = client
            .query_opt(
                &stmt,
                &[&id.to_hex(), &owner, &offset, &writer, &ttl.as_secs_f64()],
            )
            .await?;
        if let Some(row) = granted {
            let tail: Option<Vec<u8>> = row.try_get("upload_tail")?;
            return Ok(Append::Granted(
                Partial::from_row(&row)?,
                tail.unwrap_or_default(),
            ));
        }
        drop(client);
        // Why not: read it again (the answer may be stale by now, which only
        // changes which refusal the client gets).
        let Some(partial) = self.partial(id, owner).await? else {
            return Ok(Append::NotFound);
        };
        if partial.is_complete() || i64::try_from(partial.received) != Ok(offset) {
            Ok(Append::Conflict(partial))
        } else {
            Ok(Append::Busy(partial))
        }
    }

    /// Records that the upload's bytes up to `at` are stored (whole chunks
    /// in GridFS, then `at.tail` here), renews the writer's lease and pushes
    /// the expiry back. `false`: the writer lost the upload (cancelled,
    /// expired, lease taken over) and must stop.
    pub async fn checkpoint(
        &self,
        id: ObjectId,
        writer: &str,
        at: Durable<'_>,
        ttl: Duration,
        expires_in: Duration,
    ) -> Result<bool, Error> {
        let client = self.pool().get().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE jobs SET received_bytes = $3, upload_tail = $6, \
                   writer_until = now() + make_interval(secs => $4), \
                   upload_expires_at = now() + make_interval(secs => $5), updated_at = now() \
                 WHERE id = $1 AND writer = $2 AND state = 'uploading' AND received_bytes <= $3",
            )
            .await?;
        let received = i64::try_from(at.offset).unwrap_or(i64::MAX);
        let n = client
            .execute(
                &stmt,
                &[
                    &id.to_hex(),
                    &writer,
                    &received,
                    &ttl.as_secs_f64(),
                    &expires_in.as_secs_f64(),
                    &at.tail,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Renews the writer's lease only (an append that keeps its bytes
    /// unrecorded until it can check them).
    pub async fn renew_append(
        &self,
        id: ObjectId,
        writer: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let client = self.pool().get().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE jobs SET writer_until = now() + make_interval(secs => $3) \
                 WHERE id = $1 AND writer = $2 AND state = 'uploading'",
            )
            .await?;
        let n = client
            .execute(&stmt, &[&id.to_hex(), &writer, &ttl.as_secs_f64()])
            .await?;
        Ok(n == 1)
    }

    /// Gives up the writer's lease (the append ended short of the last byte).
    pub async fn end_append(&self, id: ObjectId, writer: &str) -> Result<(), Error> {
        let client = self.pool().get().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE jobs SET writer = NULL, writer_until = NULL WHERE id = $1 AND writer = $2",
            )
            .await?;
        client.execute(&stmt, &[&id.to_hex(), &writer]).await?;
        Ok(())
    }

    /// Removes one of `owner`'s resumable uploads that has not completed
    /// (its chunks go after). `None`: no such upload; `Some(job)`: it had
    /// completed, and is a job to delete as any other.
    pub async fn cancel_upload(
        &self,
        id: ObjectId,
        owner: &str,
    ) -> Result<Result<(), Option<Partial>>, Error> {
        let client = self.pool().get().await?;
        let stmt = client
            .prepare_cached(
                "DELETE FROM jobs WHERE id = $1 AND owner_id = $2 AND state = 'uploading' \
                 AND upload_length IS NOT NULL",
            )
            .await?;
        if client.execute(&stmt, &[&id.to_hex(), &owner]).await? == 1 {
            return Ok(Ok(()));
        }
        drop(client);
        Ok(Err(self.partial(id, owner).await?))
    }
}

/// Where an upload's bytes stand: `offset` stored, of which `tail` (the
/// bytes past the last whole chunk) lives in the job row, not in GridFS.
#[derive(Debug, Clone, Copy)]
pub struct Durable<'a> {
    pub offset: u64,
    pub tail: &'a [u8],
}

/// Appends to a resumable upload's chunks from its stored offset.
///
/// Only whole chunks go to GridFS as they fill (the last, shorter one at
/// [`Appender::finish`]); the bytes past them travel with the offset in the
/// job row ([`Jobs::checkpoint`]), so resuming never looks a chunk up. A
/// chunk number already taken (scratch of an append that died before its
/// checkpoint) is replaced. Nothing here is conditional on the server: the
/// job's writer lease is what keeps a second appender away.
#[derive(Debug)]
pub struct Appender {
    bucket: Bucket,
    id: ObjectId,
    /// Bytes in whole chunks.
    base: u64,
    /// The bytes past them.
    tail: Vec<u8>,
}

fn chunk_doc(id: ObjectId, n: u64, data: &[u8]) -> Document {
    doc! {
        "files_id": id,
        "n": i32::try_from(n).unwrap_or(i32::MAX),
        "data": Binary { subtype: BinarySubtype::Generic, bytes: data.to_vec() },
    }
}

impl Appender {
    /// Opens upload `id` where its job row says it stands.
    pub fn open(
        bucket: &Bucket,
        id: ObjectId,
        offset: u64,
        tail: Vec<u8>,
    ) -> Result<Self, MongoError> {
        let chunk = u64::from(CHUNK_SIZE);
        if tail.len() as u64 != offset % chunk {
            return Err(MongoError::custom(format!(
                "upload {id}: {} bytes kept past the last chunk at offset {offset}",
                tail.len()
            )));
        }
        let mut kept = Vec::with_capacity(CHUNK_SIZE as usize);
        kept.extend_from_slice(&tail);
        Ok(Self {
            bucket: bucket.clone(),
            id,
            base: offset - tail.len() as u64,
            tail: kept,
        })
    }

    /// Bytes appended so far.
    pub fn position(&self) -> u64 {
        self.base + self.tail.len() as u64
    }

    /// What is stored once the job row records it.
    pub fn durable(&self) -> Durable<'_> {
        Durable {
            offset: self.position(),
            tail: &self.tail,
        }
    }

    /// Appends `data`, storing every chunk it fills.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), MongoError> {
        let chunk = CHUNK_SIZE as usize;
        while !data.is_empty() {
            let take = (chunk - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() == chunk {
                self.store_tail().await?;
                self.base += chunk as u64;
                self.tail.clear();
            }
        }
        Ok(())
    }

    async fn store_tail(&self) -> Result<(), MongoError> {
        let n = self.base / u64::from(CHUNK_SIZE);
        let mut chunk = chunk_doc(self.id, n, &self.tail);
        chunk.insert("_id", ObjectId::new());
        match self.bucket.chunks.insert_one(&chunk).await {
            Err(e) if crate::is_duplicate_key(&e) => {
                chunk.remove("_id");
                self.bucket
                    .chunks
                    .replace_one(doc! { "files_id": self.id, "n": n as i32 }, chunk)
                    .await
                    .map(drop)
            }
            other => other.map(drop),
        }
    }

    /// After the last byte: stores the last chunk and the files document, so
    /// the video exists.
    pub async fn finish(
        self,
        length: u64,
        filename: &str,
        metadata: Document,
    ) -> Result<(), MongoError> {
        if self.position() != length {
            return Err(MongoError::custom(format!(
                "upload {}: {} bytes stored, {length} declared",
                self.id,
                self.position()
            )));
        }
        if !self.tail.is_empty() {
            self.store_tail().await?;
        }
        let files = doc! {
            "_id": self.id,
            "length": i64::try_from(length).unwrap_or(i64::MAX),
            "chunkSize": CHUNK_SIZE as i32,
            "uploadDate": DateTime::now(),
            "filename": filename,
            "metadata": metadata,
        };
        // Written already by a finish whose commit then failed: replaced.
        match self.bucket.files.insert_one(&files).await {
            Err(e) if crate::is_duplicate_key(&e) => self
                .bucket
                .files
                .replace_one(doc! { "_id": self.id }, files)
                .await
                .map(drop),
            other => other.map(drop),
        }
    }
}

/// Removes a resumable upload's chunks (and files document, if any).
pub async fn remove(bucket: &Bucket, id: ObjectId) -> Result<(), MongoError> {
    delete_file(bucket, &Bson::ObjectId(id)).await
}
