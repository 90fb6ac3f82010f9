//! Storing the MP3 while ffmpeg writes it, so that little is left to store
//! when it is done.
//!
//! ffmpeg writes the MP3 to a file in the job's directory; [`Mp3Sink::pump`]
//! stores every complete GridFS chunk but the first as soon as it is on
//! disk. The first chunk waits for ffmpeg to exit: the MP3's VBR header
//! (Xing/LAME: frame count, seek table) sits in it, and ffmpeg rewrites it at
//! the end. Nothing else of the file changes once written. The files document
//! goes in last, so the MP3 exists for readers only once complete and
//! checked; [`Mp3Sink::abort`] removes the chunks of a conversion that did
//! not make it.

use media_store::{Bucket, ChunkWriter, gridfs::CHUNK_SIZE, mongodb::bson::Document};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const CHUNK: u64 = CHUNK_SIZE as u64;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    #[error("storing the MP3: {0}")]
    Store(#[from] media_store::mongodb::error::Error),
    #[error("reading the MP3: {0}")]
    Io(#[from] std::io::Error),
    #[error("the MP3 would be larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("ffmpeg wrote no audio")]
    Empty,
}

#[derive(Debug)]
pub(crate) struct Mp3Sink {
    writer: ChunkWriter,
    path: PathBuf,
    /// The next chunk to store (chunk 0 waits for the end).
    next_n: u32,
    max_bytes: u64,
}

impl Mp3Sink {
    pub(crate) fn new(bucket: &Bucket, path: &Path, max_bytes: u64) -> Self {
        Self {
            writer: ChunkWriter::new(bucket),
            path: path.to_owned(),
            next_n: 1,
            max_bytes,
        }
    }

    pub(crate) fn id(&self) -> media_store::mongodb::bson::oid::ObjectId {
        self.writer.id()
    }

    /// The file's size now (0 before ffmpeg created it).
    async fn len(&self) -> Result<u64, SinkError> {
        match tokio::fs::metadata(&self.path).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores the chunks that are complete on disk; returns the MP3's size
    /// so far. Fails once the MP3 grows past the limit.
    pub(crate) async fn pump(&mut self) -> Result<u64, SinkError> {
        let len = self.len().await?;
        if len > self.max_bytes {
            return Err(SinkError::TooLarge(self.max_bytes));
        }
        // Only chunks followed by more data: the last one may still grow.
        while u64::from(self.next_n + 1) * CHUNK <= len {
            self.store(self.next_n, CHUNK).await?;
            self.next_n += 1;
        }
        Ok(len)
    }

    /// After ffmpeg exited successfully: stores the rest, then chunk 0, then
    /// the files document. Returns the MP3's size.
    pub(crate) async fn finish(
        &mut self,
        filename: &str,
        metadata: Document,
    ) -> Result<u64, SinkError> {
        let len = self.len().await?;
        if len == 0 {
            return Err(SinkError::Empty);
        }
        if len > self.max_bytes {
            return Err(SinkError::TooLarge(self.max_bytes));
        }
        let chunks = u32::try_from(len.div_ceil(CHUNK)).unwrap_or(u32::MAX);
        while self.next_n < chunks {
            let size = (len - u64::from(self.next_n) * CHUNK).min(CHUNK);
            self.store(self.next_n, size).await?;
            self.next_n += 1;
        }
        self.store(0, len.min(CHUNK)).await?;
        self.writer.finish(len, filename, metadata).await?;
        Ok(len)
    }

    async fn store(&mut self, n: u32, size: u64) -> Result<(), SinkError> {
        let mut f = tokio::fs::File::open(&self.path).await?;
        f.seek(std::io::SeekFrom::Start(u64::from(n) * CHUNK))
            .await?;
        let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
        f.read_exact(&mut buf).await?;
        self.writer.put(n, &buf).await?;
        Ok(())
    }

    /// Removes whatever was stored (chunks, and the files document if any).
    pub(crate) async fn abort(&self) {
        if let Err(e) = self.writer.abort().await {
            tracing::warn!(error = %e, mp3_id = %self.writer.id(), "removing a partial MP3 failed; the janitor will");
        }
    }
}
