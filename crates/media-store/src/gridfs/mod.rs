//! GridFS as the services read and write it, on top of the driver's
//! collections rather than its streams:
//!
//! - [`ChunkStream`] reads a file through **one** cursor with a bounded batch
//!   size, checking chunk numbers and sizes as the GridFS spec asks of
//!   readers. The cost of a read is one query per file, whatever its size,
//!   instead of one per range: on servers that scan the chunks collection for
//!   every `files_id` query (FerretDB), that was quadratic in the file size.
//!   The query asks for no order: writers insert chunks in order, so they come
//!   back in order (the `{files_id, n}` index's on MongoDB, insertion order on
//!   a scan), and a server that must sort cannot answer before it has the
//!   whole file, which held ffmpeg back for the time of a full read. A chunk
//!   out of order makes the reader ask again, sorted, from where it is.
//!   The query is limited to the chunks the file has left: a server that
//!   scans (FerretDB decodes every stored chunk it passes) stops at the file's
//!   last chunk instead of going on to the end of the collection, and the
//!   file being converted is usually the oldest one stored (sources are
//!   deleted once converted), so a read costs what lies before it, not
//!   everything queued behind it.
//!   A cursor that dies (server restart, the idle-cursor timeout of a slow
//!   reader) or has sat idle for long is re-opened from the next chunk
//!   number, so nothing is re-read and no cursor is held for long.
//! - [`ChunkWriter`] writes chunks in any order and the files document last,
//!   so a file is invisible until complete. The converter uses it to store an
//!   MP3 while ffmpeg is still writing it, holding back chunk 0 (whose header
//!   ffmpeg rewrites at the end).
//! - [`delete_file`] removes the files document and then the chunks, and is
//!   idempotent (the driver's `delete` fails when the files document is
//!   already gone).
//!
//! The reader is in `read`; the writer, deletion and the janitor's queries
//! are here.

use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{Binary, Bson, DateTime, Document, doc, oid::ObjectId, spec::BinarySubtype},
    gridfs::FilesCollectionDocument,
    options::IndexOptions,
};
use std::time::Duration;

mod read;

pub use read::ChunkStream;

/// The chunk size the driver uses, and so ours: 255 KiB.
pub const CHUNK_SIZE: u32 = 255 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
    #[error("GridFS file is corrupt: {0}")]
    Corrupt(String),
}

/// The layout facts of a stored file a reader needs.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    pub id: Bson,
    pub length: u64,
    pub chunk_size: u64,
}

impl FileInfo {
    pub fn chunks(&self) -> u32 {
        u32::try_from(self.length.div_ceil(self.chunk_size)).unwrap_or(u32::MAX)
    }

    /// The size chunk `n` must have.
    fn expected_len(&self, n: u32) -> u64 {
        if n + 1 == self.chunks() {
            self.length - self.chunk_size * u64::from(n)
        } else {
            self.chunk_size
        }
    }
}

impl From<&FilesCollectionDocument> for FileInfo {
    fn from(f: &FilesCollectionDocument) -> Self {
        Self {
            id: f.id.clone(),
            length: f.length,
            chunk_size: u64::from(f.chunk_size_bytes.max(1)),
        }
    }
}

/// A bucket's two collections.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub name: String,
    pub files: Collection<Document>,
    pub chunks: Collection<Document>,
}

impl Bucket {
    pub fn new(db: &Database, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            files: db.collection(&format!("{name}.files")),
            chunks: db.collection(&format!("{name}.chunks")),
        }
    }

    /// The indexes the GridFS spec expects drivers to create before the first
    /// write (`files_id_1_n_1` unique on chunks, `filename_1_uploadDate_1` on
    /// files). The driver creates them lazily and only on its own upload path,
    /// and not at all on some servers; without the chunks index every read is
    /// a collection scan. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<(), mongodb::error::Error> {
        self.chunks
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "files_id": 1, "n": 1 })
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name("files_id_1_n_1".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await?;
        self.files
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "filename": 1, "uploadDate": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("filename_1_uploadDate_1".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await?;
        Ok(())
    }
}

/// Writes a new file's chunks in any order, then its files document.
#[derive(Debug)]
pub struct ChunkWriter {
    bucket: Bucket,
    id: ObjectId,
    written: u32,
}

impl ChunkWriter {
    pub fn new(bucket: &Bucket) -> Self {
        Self {
            bucket: bucket.clone(),
            id: ObjectId::new(),
            written: 0,
        }
    }

    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Stores chunk `n` (full size but for the last).
    pub async fn put(&mut self, n: u32, data: &[u8]) -> Result<(), mongodb::error::Error> {
        self.bucket
            .chunks
            .insert_one(doc! {
                "_id": ObjectId::new(),
                "files_id": self.id,
                "n": i32::try_from(n).unwrap_or(i32::MAX),
                "data": Binary { subtype: BinarySubtype::Generic, bytes: data.to_vec() },
            })
            .await?;
        self.written += 1;
        Ok(())
    }

    /// Writes the files document: from now on the file exists.
    pub async fn finish(
        &self,
        length: u64,
        filename: &str,
        metadata: Document,
    ) -> Result<(), mongodb::error::Error> {
        let want = u32::try_from(length.div_ceil(u64::from(CHUNK_SIZE))).unwrap_or(u32::MAX);
        if self.written != want {
            return Err(mongodb::error::Error::custom(format!(
                "{} chunks written for {length} bytes, expected {want}",
                self.written
            )));
        }
        self.bucket
            .files
            .insert_one(doc! {
                "_id": self.id,
                "length": i64::try_from(length).unwrap_or(i64::MAX),
                "chunkSize": CHUNK_SIZE as i32,
                "uploadDate": DateTime::now(),
                "filename": filename,
                "metadata": metadata,
            })
            .await
            .map(drop)
    }

    /// Removes whatever was written (the files document too, if any).
    pub async fn abort(&self) -> Result<(), mongodb::error::Error> {
        delete_file(&self.bucket, &Bson::ObjectId(self.id)).await
    }
}

/// Deletes a file: the files document first (so readers racing the delete
/// fail cleanly), then its chunks. A file already gone is not an error.
pub async fn delete_file(bucket: &Bucket, id: &Bson) -> Result<(), mongodb::error::Error> {
    bucket.files.delete_one(doc! { "_id": id }).await?;
    bucket.chunks.delete_many(doc! { "files_id": id }).await?;
    Ok(())
}

/// Deletes several files, each as [`delete_file`] does: every query is an
/// equality on the file's id, which any server answers from its index.
pub async fn delete_files(bucket: &Bucket, ids: &[ObjectId]) -> Result<(), mongodb::error::Error> {
    for id in ids {
        delete_file(bucket, &Bson::ObjectId(*id)).await?;
    }
    Ok(())
}

/// Deletes the chunks of file `id` (an orphan: no files document).
pub async fn delete_chunks(bucket: &Bucket, id: &Bson) -> Result<(), mongodb::error::Error> {
    bucket
        .chunks
        .delete_many(doc! { "files_id": id })
        .await
        .map(drop)
}

/// Up to `limit` files stored before `age` ago, each with the job it belongs
/// to: its own id (a video) or `metadata.video_id` (an MP3, `by_video`).
pub async fn older_files(
    bucket: &Bucket,
    age: Duration,
    by_video: bool,
    limit: i64,
) -> Result<Vec<(Bson, ObjectId)>, mongodb::error::Error> {
    let cutoff = DateTime::from_system_time(
        std::time::SystemTime::now()
            .checked_sub(age)
            .unwrap_or(std::time::UNIX_EPOCH),
    );
    let files: Vec<Document> = bucket
        .files
        .find(doc! { "uploadDate": { "$lte": cutoff } })
        .projection(doc! { "_id": 1, "metadata.video_id": 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    Ok(files
        .into_iter()
        .filter_map(|f| {
            let job = if by_video {
                f.get_document("metadata")
                    .ok()?
                    .get_object_id("video_id")
                    .ok()?
            } else {
                f.get_object_id("_id").ok()?
            };
            Some((f.get("_id")?.clone(), job))
        })
        .collect())
}

/// Stores an MP4's late index beside the video (`metadata.mp4_index`).
pub async fn keep_mp4_index(
    bucket: &Bucket,
    id: ObjectId,
    index: &mp4_index::LateIndex,
) -> Result<(), mongodb::error::Error> {
    bucket
        .files
        .update_one(
            doc! { "_id": id },
            doc! { "$set": { "metadata.mp4_index": {
                "insert_at": i64::try_from(index.insert_at).unwrap_or(i64::MAX),
                "moov_start": i64::try_from(index.moov_start).unwrap_or(i64::MAX),
                "moov": Binary { subtype: BinarySubtype::Generic, bytes: index.moov.clone() },
            } } },
        )
        .await
        .map(drop)
}

/// The late index kept with a video, if any.
pub fn kept_mp4_index(file: &FilesCollectionDocument) -> Option<mp4_index::LateIndex> {
    let m = file.metadata.as_ref()?.get_document("mp4_index").ok()?;
    Some(mp4_index::LateIndex {
        insert_at: u64::try_from(m.get_i64("insert_at").ok()?).ok()?,
        moov_start: u64::try_from(m.get_i64("moov_start").ok()?).ok()?,
        moov: m.get_binary_generic("moov").ok()?.clone(),
    })
}

/// The ids of files whose chunks exist without a files document and whose
/// newest chunk is older than `age`: left by a writer that died (a crash, a
/// server restart mid-upload). A writer still at work writes chunks far more
/// often than that, so it is never taken for an orphan.
pub async fn orphans(bucket: &Bucket, age: Duration) -> Result<Vec<Bson>, mongodb::error::Error> {
    let ids = bucket.chunks.distinct("files_id", doc! {}).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let with_files: Vec<Bson> = bucket
        .files
        .find(doc! { "_id": { "$in": &ids } })
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect::<Vec<Document>>()
        .await?
        .into_iter()
        .filter_map(|d| d.get("_id").cloned())
        .collect();
    let cutoff = std::time::SystemTime::now() - age;
    let mut out = Vec::new();
    for id in ids.into_iter().filter(|id| !with_files.contains(id)) {
        let newest = bucket
            .chunks
            .find_one(doc! { "files_id": &id })
            .sort(doc! { "n": -1 })
            .projection(doc! { "_id": 1 })
            .await?;
        let written = newest
            .as_ref()
            .and_then(|d| d.get_object_id("_id").ok())
            .map(|oid| oid.timestamp().to_system_time());
        if written.is_some_and(|t| t < cutoff) {
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_follow_the_file() {
        let f = FileInfo {
            id: Bson::Int32(1),
            length: 10,
            chunk_size: 4,
        };
        assert_eq!(f.chunks(), 3);
        assert_eq!(f.expected_len(0), 4);
        assert_eq!(f.expected_len(2), 2);
        let empty = FileInfo { length: 0, ..f };
        assert_eq!(empty.chunks(), 0);
    }
}
