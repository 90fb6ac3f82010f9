//! Getting a stored video into ffmpeg while it is being read, not after.
//!
//! The video is read once, in order, through one GridFS cursor
//! ([`media_store::ChunkStream`]). How it reaches ffmpeg depends on its first
//! bytes:
//!
//! - Matroska/WebM, MPEG-TS, FLV, Ogg and MPEG-PS read fine from a pipe:
//!   piped as they are.
//! - MP4/MOV: piped too; if the index (`moov`) sits after the media data, it
//!   is fetched from the end of the file first (one more query) and moved in
//!   front (see [`mp4_index`]).
//! - Anything else (or an MP4 we cannot rearrange) is spooled to a file, so
//!   ffmpeg may seek in it.

use bytes::Bytes;
use media_store::{Bucket, ChunkStream, FileInfo, ReadError};
use mp4_index::{self as mp4, Layout};
use std::path::Path;
use tokio::io::AsyncWriteExt;

/// How a video goes to ffmpeg.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Through the pipe; for MP4s with the index at the end, the rewritten
    /// index and where it goes.
    Pipe { moved: Option<Moved> },
    /// Through a temporary file.
    Spool,
}

#[derive(Debug)]
pub(crate) struct Moved {
    pub(crate) insert_at: u64,
    pub(crate) original: std::ops::Range<u64>,
    pub(crate) moov: Vec<u8>,
}

/// What the container says before ffmpeg reads it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Declared {
    /// The first sound track's duration (MP4/MOV).
    pub(crate) audio_duration: Option<f64>,
}

/// Containers that ffmpeg reads from a pipe without seeking, by magic bytes.
fn streams_from_a_pipe(first: &[u8]) -> bool {
    first.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) // Matroska / WebM (EBML)
        || first.starts_with(b"FLV")
        || first.starts_with(b"OggS")
        || first.starts_with(&[0x00, 0x00, 0x01, 0xba]) // MPEG-PS pack header
        || (first.len() > 376 && first[0] == 0x47 && first[188] == 0x47 && first[376] == 0x47) // MPEG-TS
}

/// How to feed a video still being uploaded, from its first chunk: piped
/// as it arrives if it decodes front to back; else spooled as it arrives
/// (an MP4/MOV's index may come last: nothing can be read from an end that
/// has not arrived) and converted from the file once it is complete.
pub(crate) fn plan_live(first: &[u8]) -> Plan {
    let decodable = streams_from_a_pipe(first)
        || (mp4::looks_like_mp4(first, u64::MAX) && mp4::index_comes_first(first) == Some(true));
    if decodable {
        Plan::Pipe { moved: None }
    } else {
        Plan::Spool
    }
}

/// Decides how to feed the file whose first chunk is `first`: with the
/// late index the gateway kept if there is one, else reading the `moov` back
/// if it must be moved (one more query).
pub(crate) async fn plan(
    bucket: &Bucket,
    file: &FileInfo,
    first: &Bytes,
    kept: Option<mp4::LateIndex>,
) -> Result<(Plan, Declared), ReadError> {
    if streams_from_a_pipe(first) {
        return Ok((Plan::Pipe { moved: None }, Declared::default()));
    }
    if !mp4::looks_like_mp4(first, file.length) {
        return Ok((Plan::Spool, Declared::default()));
    }
    if let Some(index) = kept
        && let Some(planned) = from_kept(file, index)
    {
        return Ok(planned);
    }
    let Some((tops, moov)) = top_level(bucket, file, first).await? else {
        return Ok((Plan::Spool, Declared::default()));
    };
    let declared = Declared {
        audio_duration: moov.as_ref().and_then(|(_, m)| mp4::audio_duration(m)),
    };
    Ok(match (mp4::layout(&tops), moov) {
        (Layout::AsIs, _) => (Plan::Pipe { moved: None }, declared),
        (
            Layout::Relocate {
                insert_at,
                moov: range,
            },
            Some((start, mut bytes)),
        ) => match mp4::relocate(&mut bytes, insert_at, start) {
            Ok(()) => (
                Plan::Pipe {
                    moved: Some(Moved {
                        insert_at,
                        original: range,
                        moov: bytes,
                    }),
                },
                declared,
            ),
            Err(e) => {
                tracing::info!(error = %e, "cannot move this MP4's index; spooling it");
                (Plan::Spool, declared)
            }
        },
        (Layout::Relocate { .. }, None) => (Plan::Spool, declared),
    })
}

/// The plan from an index kept at upload, if it is consistent with the file.
fn from_kept(file: &FileInfo, index: mp4::LateIndex) -> Option<(Plan, Declared)> {
    let end = index.moov_start.checked_add(index.moov.len() as u64)?;
    if end > file.length || index.insert_at >= index.moov_start {
        return None;
    }
    let declared = Declared {
        audio_duration: mp4::audio_duration(&index.moov),
    };
    let mut moov = index.moov;
    mp4::relocate(&mut moov, index.insert_at, index.moov_start).ok()?;
    Some((
        Plan::Pipe {
            moved: Some(Moved {
                insert_at: index.insert_at,
                original: index.moov_start..end,
                moov,
            }),
        },
        declared,
    ))
}

/// The largest `moov` we hold in memory to move it (a two-hour video's index
/// is a few MiB).
const MAX_MOOV: u64 = 64 << 20;

/// The top-level boxes of an MP4 and, if found, the `moov` box (its offset
/// and bytes). `None` if the layout makes no sense.
async fn top_level(
    bucket: &Bucket,
    file: &FileInfo,
    first: &Bytes,
) -> Result<Option<(Vec<mp4::BoxHeader>, Option<(u64, Vec<u8>)>)>, ReadError> {
    let mut tops = Vec::new();
    let mut at = 0u64;
    // Bytes from `tail_start` on, read in one query when the walk leaves the
    // first chunk (the boxes after the media data are usually small).
    let mut tail: Option<(u64, Bytes)> = None;
    while at < file.length && tops.len() < 64 {
        let window = match bytes_at(first, &tail, at) {
            Some(w) if w.len() >= 16 || at + w.len() as u64 == file.length => w,
            _ => {
                tail = Some(read_from(bucket, file, at, WALK_WINDOW).await?);
                match bytes_at(first, &tail, at) {
                    Some(w) => w,
                    None => return Ok(None),
                }
            }
        };
        let Some(h) = mp4::header_at(window, at, file.length) else {
            return Ok(None);
        };
        if h.end() > file.length {
            return Ok(None); // truncated: let ffmpeg say so, from a file
        }
        tops.push(h);
        if &h.kind == b"moov" {
            if h.size > MAX_MOOV {
                return Ok(None);
            }
            let need = h.start..h.end();
            let covered = bytes_at(first, &tail, h.start).is_some_and(|w| w.len() as u64 >= h.size);
            if !covered {
                tail = Some(read_from(bucket, file, h.start, h.size).await?);
            }
            let moov = bytes_at(first, &tail, need.start)
                .and_then(|w| w.get(..h.size as usize))
                .map(<[u8]>::to_vec);
            return Ok(moov.map(|m| (tops.clone(), Some((h.start, m)))));
        }
        at = h.end();
    }
    Ok(Some((tops, None)))
}

/// The bytes we hold from `at` on, if any.
fn bytes_at<'a>(first: &'a Bytes, tail: &'a Option<(u64, Bytes)>, at: u64) -> Option<&'a [u8]> {
    if at < first.len() as u64 {
        return first.get(at as usize..);
    }
    let (start, bytes) = tail.as_ref()?;
    at.checked_sub(*start)
        .and_then(|off| bytes.get(usize::try_from(off).ok()?..))
        .filter(|b| !b.is_empty())
}

/// How much past the media data is read at once while looking for the
/// index: the boxes after it are usually just the index.
const WALK_WINDOW: u64 = 4 << 20;

/// At least `len` bytes from `at` (fewer at the end of the file), from the
/// chunk holding `at` on, in one query. Returns the offset of the first byte
/// and the bytes.
async fn read_from(
    bucket: &Bucket,
    file: &FileInfo,
    at: u64,
    len: u64,
) -> Result<(u64, Bytes), ReadError> {
    let from = at / file.chunk_size;
    let to = (at + len.max(16)).div_ceil(file.chunk_size);
    let (from, to) = (
        u32::try_from(from).unwrap_or(u32::MAX),
        u32::try_from(to).unwrap_or(u32::MAX),
    );
    let chunks = bucket.read_chunks(file, from, to).await?;
    Ok((
        u64::from(from) * file.chunk_size,
        Bytes::from(chunks.concat()),
    ))
}

/// Why feeding stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FeedError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("writing the video: {0}")]
    Write(std::io::Error),
    /// A live conversion's upload ended without a commit, or stalled.
    #[error("{0}")]
    Upload(String),
    /// The converter's spool space (`MAX_SPOOL_BYTES`) is used up.
    #[error("the converter's spool space is full ({0} bytes)")]
    SpoolFull(u64),
}

impl From<crate::live::UploadError> for FeedError {
    fn from(e: crate::live::UploadError) -> Self {
        Self::Upload(e.0)
    }
}

/// Where a video's chunks come from: the stored file, or an upload as it
/// arrives.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per conversion, moved once
pub(crate) enum Chunks {
    Stored(ChunkStream),
    Live(crate::live::Follow),
}

impl Chunks {
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, FeedError> {
        match self {
            Self::Stored(s) => Ok(s.next_chunk().await?),
            Self::Live(f) => Ok(f.next_chunk().await?),
        }
    }
}

/// Chunks read ahead of the writer (about 4 MiB, two cursor batches).
///
/// Why: a cursor asks for its next batch only once the last one is used up,
/// and a pipe holds 64 KiB, so reading and writing in turn left ffmpeg
/// waiting while the server produced each batch, and the server idle while
/// ffmpeg decoded it: a conversion took about the read plus ffmpeg, not the
/// longer of the two.
const READ_AHEAD: usize = 16;

/// Writes the video (from `first`, then the rest of `stream`) to `out`,
/// moving the MP4 index if asked, reading up to [`READ_AHEAD`] chunks ahead
/// of the writer. ffmpeg closing the pipe early (it had all it needed, e.g.
/// for a trimmed MP3) ends the feed without an error. Returns the bytes
/// read from GridFS.
pub(crate) async fn feed<W: tokio::io::AsyncWrite + Unpin>(
    mut stream: Chunks,
    first: Bytes,
    moved: Option<&Moved>,
    out: &mut W,
) -> Result<u64, FeedError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(READ_AHEAD);
    let read = async move {
        while let Some(chunk) = stream.next_chunk().await? {
            if tx.send(chunk).await.is_err() {
                break; // the writer is done: ffmpeg had enough
            }
        }
        Ok::<(), FeedError>(())
    };
    // Owns the receiver, so a writer that ends early stops the reader; a
    // reader that fails ends both before the pipe is closed as if complete.
    let sink = &mut *out;
    let write = async move {
        let mut pos = 0u64;
        let mut inserted = moved.is_none();
        let mut chunk = Some(first);
        while let Some(data) = chunk {
            let end = pos + data.len() as u64;
            let written = match moved {
                None => sink.write_all(&data).await,
                Some(m) => write_rearranged(sink, &data, pos, m, &mut inserted).await,
            };
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(end),
                Err(e) => return Err(FeedError::Write(e)),
            }
            pos = end;
            chunk = rx.recv().await;
        }
        Ok(pos)
    };
    let ((), pos) = tokio::try_join!(read, write)?;
    match out.shutdown().await {
        Ok(()) => Ok(pos),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(pos),
        Err(e) => Err(FeedError::Write(e)),
    }
}

/// Writes the part of `data` (the file's bytes from `pos`) that the
/// rearranged stream has, inserting the moved index where it goes.
async fn write_rearranged<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    data: &[u8],
    pos: u64,
    m: &Moved,
    inserted: &mut bool,
) -> std::io::Result<()> {
    let end = pos + data.len() as u64;
    let slice = |from: u64, to: u64| &data[(from - pos) as usize..(to - pos) as usize];
    // Before the insertion point: as is.
    let split = m.insert_at.clamp(pos, end);
    if split > pos {
        out.write_all(slice(pos, split)).await?;
    }
    if !*inserted && end >= m.insert_at {
        out.write_all(&m.moov).await?;
        *inserted = true;
    }
    // After it: everything but the original index.
    for (from, to) in [
        (split, m.original.start.clamp(split, end)),
        (m.original.end.clamp(split, end), end),
    ] {
        if to > from {
            out.write_all(slice(from, to)).await?;
        }
    }
    Ok(())
}

/// Copies the whole video into `path` (for containers ffmpeg must seek in),
/// within the disk space `space` may still take.
pub(crate) async fn spool(
    stream: Chunks,
    first: Bytes,
    path: &Path,
    space: &mut crate::workdir::Reservation,
) -> Result<u64, FeedError> {
    let file = tokio::fs::File::create(path)
        .await
        .map_err(FeedError::Write)?;
    let mut out = crate::workdir::Bounded::new(file, space);
    let n = match feed(stream, first, None, &mut out).await {
        Err(FeedError::Write(e)) if crate::workdir::is_full(&e) => {
            return Err(FeedError::SpoolFull(out.limit()));
        }
        other => other?,
    };
    out.into_inner()
        .sync_all()
        .await
        .map_err(FeedError::Write)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_friendly_containers_are_known_by_their_magic() {
        assert!(streams_from_a_pipe(&[0x1a, 0x45, 0xdf, 0xa3, 0x01]));
        assert!(streams_from_a_pipe(b"OggS\0\x02"));
        let mut ts = vec![0u8; 600];
        for i in [0, 188, 376] {
            ts[i] = 0x47;
        }
        assert!(streams_from_a_pipe(&ts));
        assert!(!streams_from_a_pipe(b"RIFF....AVI "));
        assert!(!streams_from_a_pipe(b"\0\0\0\x20ftypisom"));
    }

    #[test]
    fn only_containers_that_decode_front_to_back_are_converted_as_they_arrive() {
        let boxed = |kind: &[u8; 4], len: u32| {
            let mut b = len.to_be_bytes().to_vec();
            b.extend_from_slice(kind);
            b.resize(len as usize, 0);
            b
        };
        let live = |b: &[u8]| matches!(plan_live(b), Plan::Pipe { moved: None });
        assert!(live(&[0x1a, 0x45, 0xdf, 0xa3, 0x01]), "Matroska");
        assert!(live(
            &[boxed(b"ftyp", 24), boxed(b"moov", 64), boxed(b"mdat", 64)].concat()
        ));
        assert!(!live(
            &[boxed(b"ftyp", 24), boxed(b"mdat", 64), boxed(b"moov", 64)].concat()
        ));
        assert!(!live(b"RIFF....AVI LIST"), "AVI must be spooled");
        assert!(
            matches!(
                plan_live(&[boxed(b"ftyp", 24), boxed(b"mdat", 64)].concat()),
                Plan::Spool
            ),
            "an MP4 whose index comes last is spooled as it arrives"
        );
    }

    #[tokio::test]
    async fn the_index_is_written_where_it_goes_and_nowhere_else() {
        // File: [ftyp 0..4)[mdat 4..10)[moov 10..13)[free 13..15)
        let file = b"FFFFmmmmmmOOOee";
        let m = Moved {
            insert_at: 4,
            original: 10..13,
            moov: b"NEW".to_vec(),
        };
        // Any split of the file into chunks gives the same stream.
        for cut in 1..file.len() {
            let mut out = Vec::new();
            let mut inserted = false;
            for (pos, part) in [(0, &file[..cut]), (cut as u64, &file[cut..])] {
                write_rearranged(&mut out, part, pos, &m, &mut inserted)
                    .await
                    .unwrap();
            }
            assert_eq!(out, b"FFFFNEWmmmmmmee", "cut at {cut}");
        }
    }
}
