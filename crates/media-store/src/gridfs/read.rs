//! The reader: [`ChunkStream`] through one cursor, and verified ranges
//! ([`Bucket::read_chunks`]); see the module docs of `gridfs`.

use super::{Bucket, FileInfo, ReadError};
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use mongodb::{
    Collection, Cursor,
    bson::{RawBsonRef, RawDocument, RawDocumentBuf, doc},
};
use std::time::{Duration, Instant};

impl Bucket {
    /// Chunks `[from, to)` of a file in one query, verified.
    pub async fn read_chunks(
        &self,
        file: &FileInfo,
        from: u32,
        to: u32,
    ) -> Result<Vec<Bytes>, ReadError> {
        let to = to.min(file.chunks());
        if from >= to {
            return Ok(Vec::new());
        }
        let docs: Vec<RawDocumentBuf> = self
            .chunks
            .clone_with_type::<RawDocumentBuf>()
            .find(doc! { "files_id": &file.id, "n": { "$gte": i64::from(from), "$lt": i64::from(to) } })
            .sort(doc! { "n": 1 })
            .batch_size(to - from)
            .limit(i64::from(to - from))
            .await?
            .try_collect()
            .await?;
        let mut out = Vec::with_capacity(docs.len());
        for (i, d) in docs.into_iter().enumerate() {
            let n = from + u32::try_from(i).unwrap_or(u32::MAX);
            out.push(check_chunk(file, d, n)?);
        }
        if out.len() != (to - from) as usize {
            return Err(ReadError::Corrupt(format!(
                "chunk {} is missing",
                from + u32::try_from(out.len()).unwrap_or(0)
            )));
        }
        Ok(out)
    }

    /// A sequential reader of a file from chunk `from` on.
    pub fn stream(&self, file: FileInfo, from: u32, batch: u32) -> ChunkStream {
        ChunkStream {
            chunks: self.chunks.clone_with_type(),
            next_n: from.min(file.chunks()),
            file,
            cursor: None,
            sorted: false,
            batch: batch.max(1),
            last_pull: Instant::now(),
            reopens_left: REOPENS,
            idle_reopen: IDLE_REOPEN,
        }
    }
}

/// How many times a reader re-opens a cursor that failed before giving up.
const REOPENS: u32 = 3;

/// A cursor idle for longer than this is dropped and re-opened on the next
/// read: well under MongoDB's 10-minute idle-cursor timeout, and no server
/// resources are held for a stalled client.
const IDLE_REOPEN: Duration = Duration::from_secs(60);

/// A chunk document's number.
fn chunk_number(d: &RawDocument) -> Result<u32, ReadError> {
    match d.get("n").ok().flatten() {
        Some(RawBsonRef::Int32(i)) => u32::try_from(i).ok(),
        Some(RawBsonRef::Int64(i)) => u32::try_from(i).ok(),
        _ => None,
    }
    .ok_or_else(|| ReadError::Corrupt("chunk without a number".into()))
}

/// Checks one chunk document against the file (spec: "drivers MUST verify"
/// the number and the size) and returns its bytes. Read from the raw BSON and
/// handed on as a slice of the document's own buffer: no chunk is copied or
/// decoded on the way to ffmpeg or a download.
fn check_chunk(file: &FileInfo, d: RawDocumentBuf, want: u32) -> Result<Bytes, ReadError> {
    let n = chunk_number(&d)?;
    if n != want {
        return Err(ReadError::Corrupt(format!(
            "expected chunk {want}, found {n}"
        )));
    }
    let data = match d.get("data").ok().flatten() {
        Some(RawBsonRef::Binary(b)) => b.bytes,
        _ => return Err(ReadError::Corrupt(format!("chunk {n} has no data"))),
    };
    let expected = file.expected_len(n);
    if data.len() as u64 != expected {
        return Err(ReadError::Corrupt(format!(
            "chunk {n} has {} bytes, expected {expected}",
            data.len()
        )));
    }
    // `data` borrows from `d`: where it starts in the document's bytes.
    let start = data.as_ptr() as usize - d.as_bytes().as_ptr() as usize;
    let end = start + data.len();
    Ok(Bytes::from(d.into_bytes()).slice(start..end))
}

/// Reads a file's chunks in order through one cursor; see the module docs.
#[derive(Debug)]
pub struct ChunkStream {
    chunks: Collection<RawDocumentBuf>,
    file: FileInfo,
    next_n: u32,
    cursor: Option<Cursor<RawDocumentBuf>>,
    /// Whether the query asks the server to sort (after a chunk came out of
    /// order).
    sorted: bool,
    batch: u32,
    last_pull: Instant,
    reopens_left: u32,
    idle_reopen: Duration,
}

impl ChunkStream {
    pub fn file(&self) -> &FileInfo {
        &self.file
    }

    /// The byte offset of the next chunk.
    pub fn position(&self) -> u64 {
        (u64::from(self.next_n) * self.file.chunk_size).min(self.file.length)
    }

    /// The next chunk, or `None` at the end of the file.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        if self.next_n >= self.file.chunks() {
            self.cursor = None;
            return Ok(None);
        }
        if self.last_pull.elapsed() > self.idle_reopen {
            self.cursor = None;
        }
        loop {
            let cursor = match self.cursor.as_mut() {
                Some(c) => c,
                None => {
                    let left = self.file.chunks() - self.next_n;
                    let find = self
                        .chunks
                        .find(doc! { "files_id": &self.file.id, "n": { "$gte": i64::from(self.next_n) } })
                        .batch_size(self.batch.min(left))
                        .limit(i64::from(left));
                    let c = if self.sorted {
                        find.sort(doc! { "n": 1 }).await
                    } else {
                        find.await
                    };
                    match c {
                        Ok(c) => self.cursor.insert(c),
                        Err(e) => {
                            self.reopen_after(e).await?;
                            continue;
                        }
                    }
                }
            };
            match cursor.try_next().await {
                Ok(Some(d)) => {
                    self.last_pull = Instant::now();
                    if !self.sorted && chunk_number(&d)? != self.next_n {
                        tracing::debug!(
                            next_n = self.next_n,
                            "GridFS chunks out of order; reading on sorted"
                        );
                        self.sorted = true;
                        self.cursor = None;
                        continue;
                    }
                    let data = check_chunk(&self.file, d, self.next_n)?;
                    self.next_n += 1;
                    self.reopens_left = REOPENS;
                    if self.next_n >= self.file.chunks() {
                        // The last chunk: close the cursor now, so a server
                        // that scans (FerretDB) stops, rather than when the
                        // reader is dropped.
                        self.cursor = None;
                    }
                    return Ok(Some(data));
                }
                Ok(None) => {
                    return Err(ReadError::Corrupt(format!(
                        "chunk {} is missing",
                        self.next_n
                    )));
                }
                Err(e) => self.reopen_after(e).await?,
            }
        }
    }

    /// Up to `max` bytes of whole chunks (at least one), or `None` at the end.
    pub async fn next_block(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        let Some(first) = self.next_chunk().await? else {
            return Ok(None);
        };
        if first.len() >= max || self.next_n >= self.file.chunks() {
            return Ok(Some(first));
        }
        let mut out = BytesMut::with_capacity(max);
        out.extend_from_slice(&first);
        while out.len() + self.file.chunk_size as usize <= max {
            match self.next_chunk().await? {
                Some(c) => out.extend_from_slice(&c),
                None => break,
            }
        }
        Ok(Some(out.freeze()))
    }

    /// Drops a failed cursor; the next read re-opens it from where we are.
    async fn reopen_after(&mut self, e: mongodb::error::Error) -> Result<(), ReadError> {
        self.cursor = None;
        if self.reopens_left == 0 {
            return Err(e.into());
        }
        self.reopens_left -= 1;
        tracing::debug!(error = %e, next_n = self.next_n, "GridFS cursor failed; re-opening it");
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{Binary, Bson, spec::BinarySubtype};

    #[test]
    fn chunks_are_checked_for_number_and_size() {
        let f = FileInfo {
            id: Bson::Int32(1),
            length: 6,
            chunk_size: 4,
        };
        // Data that differs byte by byte, and a field after it, so a slice
        // taken from the wrong place in the document shows.
        let chunk = |n: i32, len: usize| {
            let bytes: Vec<u8> = (0..len).map(|i| 100 + i as u8).collect();
            RawDocumentBuf::from_document(&doc! {
                "_id": 5, "n": n,
                "data": Binary { subtype: BinarySubtype::Generic, bytes },
                "after": "x",
            })
            .unwrap()
        };
        assert_eq!(
            &check_chunk(&f, chunk(0, 4), 0).unwrap()[..],
            [100, 101, 102, 103]
        );
        assert_eq!(&check_chunk(&f, chunk(1, 2), 1).unwrap()[..], [100, 101]);
        assert!(check_chunk(&f, chunk(1, 2), 0).is_err(), "wrong number");
        assert!(check_chunk(&f, chunk(0, 3), 0).is_err(), "short chunk");
        let no_data = RawDocumentBuf::from_document(&doc! { "n": 0 }).unwrap();
        assert!(check_chunk(&f, no_data, 0).is_err(), "no data");
    }
}
