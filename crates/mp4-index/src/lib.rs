//! Just enough ISO-BMFF (MP4/MOV) to feed a file to ffmpeg through a pipe.
//!
//! ffmpeg reads an MP4 from a pipe only if its `moov` box (the index) comes
//! before the media data: from a pipe it cannot seek to an index at the end,
//! and "converts" such a file into an error or, worse, a near-empty MP3.
//! Phones and ffmpeg itself write the `moov` last. Instead of spooling the
//! whole video to disk first, we do what `qt-faststart` does, on the fly:
//! read the `moov` from the end of the stored file, move it in front of the
//! media data, and add its size to every chunk offset (`stco`/`co64`) that
//! now lies behind it. The media data itself is streamed unchanged.
//!
//! The gateway sees every byte of an upload go by: [`Scanner`] keeps the
//! index of an MP4 whose index comes last, and it is stored beside the video
//! (`metadata.mp4_index`), so the converter need not query for it.

use std::ops::Range;

/// The largest index the gateway keeps for the converter (a two-hour
/// video's is a few MiB); a larger one is read back from GridFS instead.
pub const MAX_KEPT_INDEX: usize = 8 << 20;

/// Follows the top-level boxes of an upload as its bytes go by, keeping the
/// `moov` box when it comes after the media data.
#[derive(Debug)]
pub struct Scanner {
    /// Bytes seen so far.
    pos: u64,
    /// Where the next top-level box starts.
    next: u64,
    /// The header of the next box, as its bytes arrive.
    header: Vec<u8>,
    /// Start of the first `mdat`.
    mdat: Option<u64>,
    /// The `moov` being captured: its start, size and bytes so far.
    moov: Option<(u64, u64, Vec<u8>)>,
    /// Done: not an MP4, an index kept, or nothing more to learn.
    stopped: bool,
}

/// What the scanner found: an index after the media data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateIndex {
    /// Where the first `mdat` starts (where the index goes).
    pub insert_at: u64,
    /// Where the `moov` starts in the file.
    pub moov_start: u64,
    /// The `moov` box as stored (not yet relocated).
    pub moov: Vec<u8>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            pos: 0,
            next: 0,
            header: Vec::with_capacity(16),
            mdat: None,
            moov: None,
            stopped: false,
        }
    }
}

impl Scanner {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !self.stopped && !data.is_empty() {
            if let Some((start, size, bytes)) = self.moov.as_mut() {
                let want = usize::try_from(*start + *size - self.pos).unwrap_or(usize::MAX);
                let take = want.min(data.len());
                bytes.extend_from_slice(&data[..take]);
                self.pos += take as u64;
                data = &data[take..];
                if bytes.len() as u64 == *size {
                    self.stopped = true; // the index is all we wanted
                }
                continue;
            }
            if self.pos < self.next {
                // Inside a box we do not keep: skip to its end.
                let skip = usize::try_from(self.next - self.pos)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.pos += skip as u64;
                data = &data[skip..];
                continue;
            }
            // At a box boundary: gather its header.
            let need = if self.header.len() >= 4 && self.header[..4] == [0, 0, 0, 1] {
                16
            } else {
                8
            };
            let take = (need - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..take]);
            self.pos += take as u64;
            data = &data[take..];
            if self.header.len() < need || (need == 8 && self.header[..4] == [0, 0, 0, 1]) {
                continue;
            }
            self.on_header();
        }
    }

    fn on_header(&mut self) {
        const TOP: [&[u8; 4]; 9] = [
            b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"meta",
        ];
        let start = self.next;
        let header = std::mem::take(&mut self.header);
        // A size of 0 ("to the end") leaves nothing after it to learn about.
        let Some(h) = header_at(&header, start, u64::MAX).filter(|h| h.size != u64::MAX - start)
        else {
            self.stopped = true;
            return;
        };
        if start == 0 && !TOP.contains(&&h.kind) {
            self.stopped = true; // not an MP4
            return;
        }
        self.next = h.end();
        match &h.kind {
            b"mdat" if self.mdat.is_none() => self.mdat = Some(start),
            // An index before the media data needs no help.
            b"moov" if self.mdat.is_none() => self.stopped = true,
            b"moov" if h.size as usize <= MAX_KEPT_INDEX => {
                let mut bytes = Vec::with_capacity(h.size as usize);
                bytes.extend_from_slice(&header);
                self.moov = Some((start, h.size, bytes));
            }
            b"moov" => self.stopped = true,
            _ => {}
        }
    }

    /// The index, if the upload was an MP4 with its index after the media
    /// data and the whole index went by.
    pub fn finish(self) -> Option<LateIndex> {
        let (moov_start, size, moov) = self.moov?;
        (moov.len() as u64 == size).then_some(LateIndex {
            insert_at: self.mdat?,
            moov_start,
            moov,
        })
    }
}

/// A box header: where the box is and how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxHeader {
    pub kind: [u8; 4],
    pub start: u64,
    pub header_len: u64,
    /// Total size, header included.
    pub size: u64,
}

impl BoxHeader {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// Reads the header of the box at `start` from `buf` (which holds the bytes
/// from `start` on); `file_len` resolves a size of 0 ("to the end").
pub fn header_at(buf: &[u8], start: u64, file_len: u64) -> Option<BoxHeader> {
    let size32 = u32::from_be_bytes(buf.get(0..4)?.try_into().ok()?);
    let kind: [u8; 4] = buf.get(4..8)?.try_into().ok()?;
    let (size, header_len) = match size32 {
        0 => (file_len.checked_sub(start)?, 8),
        1 => (u64::from_be_bytes(buf.get(8..16)?.try_into().ok()?), 16),
        n => (u64::from(n), 8),
    };
    (size >= header_len).then_some(BoxHeader {
        kind,
        start,
        header_len,
        size,
    })
}

/// Whether the file starts like an ISO-BMFF file: a known top-level box
/// with a plausible size.
pub fn looks_like_mp4(first: &[u8], file_len: u64) -> bool {
    const TOP: [&[u8; 4]; 7] = [
        b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot",
    ];
    header_at(first, 0, file_len).is_some_and(|h| TOP.contains(&&h.kind) && h.size <= file_len)
}

/// From the first bytes of an MP4 still arriving: `Some(true)` if its index
/// (`moov`) comes before the media data, so it can be decoded as it arrives;
/// `Some(false)` if the media data comes first; `None` if these bytes do not
/// tell.
pub fn index_comes_first(head: &[u8]) -> Option<bool> {
    let mut at = 0u64;
    for _ in 0..64 {
        let rest = head.get(usize::try_from(at).ok()?..)?;
        let h = header_at(rest, at, u64::MAX)?;
        match &h.kind {
            b"moov" => return Some(true),
            b"mdat" => return Some(false),
            _ => at = h.end(),
        }
    }
    None
}

/// How the file must be fed to a pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `moov` already comes before the media data (or there is none to move):
    /// feed the bytes as they are.
    AsIs,
    /// Feed `[0, insert_at)`, then `moov` (rewritten), then the rest of the
    /// file without the original `moov` range.
    Relocate { insert_at: u64, moov: Range<u64> },
}

/// Where `moov` is relative to the first `mdat`, from the top-level boxes.
pub fn layout(tops: &[BoxHeader]) -> Layout {
    let moov = tops.iter().find(|b| &b.kind == b"moov");
    let mdat = tops.iter().find(|b| &b.kind == b"mdat");
    match (moov, mdat) {
        (Some(moov), Some(mdat)) if moov.start > mdat.start => Layout::Relocate {
            insert_at: mdat.start,
            moov: moov.start..moov.end(),
        },
        _ => Layout::AsIs,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("malformed moov box: {0}")]
    Malformed(&'static str),
    #[error("a chunk offset would overflow 32 bits")]
    Overflow,
}

/// Containers on the path from `moov` to the chunk offset tables.
const PATH: [&[u8; 4]; 4] = [b"trak", b"mdia", b"minf", b"stbl"];

/// Shifts by `moov.len()` every chunk offset in `moov` that points into
/// `[insert_at, moov_start)`: the data that ends up behind the moved `moov`.
pub fn relocate(moov: &mut [u8], insert_at: u64, moov_start: u64) -> Result<(), RewriteError> {
    let shift = moov.len() as u64;
    let top = header_at(moov, 0, moov.len() as u64).ok_or(RewriteError::Malformed("header"))?;
    if &top.kind != b"moov" || top.size != moov.len() as u64 {
        return Err(RewriteError::Malformed("not a whole moov box"));
    }
    let moved = insert_at..moov_start;
    let body = top.header_len as usize..moov.len();
    rewrite_in(moov, body, &moved, shift)
}

fn rewrite_in(
    buf: &mut [u8],
    range: Range<usize>,
    moved: &Range<u64>,
    shift: u64,
) -> Result<(), RewriteError> {
    let mut at = range.start;
    while at + 8 <= range.end {
        let h = header_at(&buf[at..range.end], 0, (range.end - at) as u64)
            .ok_or(RewriteError::Malformed("child header"))?;
        let end = at
            .checked_add(usize::try_from(h.size).map_err(|_| RewriteError::Malformed("size"))?)
            .filter(|e| *e <= range.end)
            .ok_or(RewriteError::Malformed("child overruns its parent"))?;
        let body = at + h.header_len as usize..end;
        if PATH.contains(&&h.kind) {
            rewrite_in(buf, body, moved, shift)?;
        } else if &h.kind == b"stco" || &h.kind == b"co64" {
            shift_offsets(&mut buf[body], &h.kind == b"co64", moved, shift)?;
        }
        at = end;
    }
    Ok(())
}

fn shift_offsets(
    table: &mut [u8],
    wide: bool,
    moved: &Range<u64>,
    shift: u64,
) -> Result<(), RewriteError> {
    let count = table
        .get(4..8)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(RewriteError::Malformed("offset table"))?;
    let width = if wide { 8 } else { 4 };
    let entries = table
        .get_mut(8..8 + count * width)
        .ok_or(RewriteError::Malformed("offset table is short"))?;
    for e in entries.chunks_exact_mut(width) {
        if wide {
            let v = u64::from_be_bytes(e.try_into().map_err(|_| RewriteError::Malformed("co64"))?);
            if moved.contains(&v) {
                e.copy_from_slice(&(v + shift).to_be_bytes());
            }
        } else {
            let v = u64::from(u32::from_be_bytes(
                e.try_into().map_err(|_| RewriteError::Malformed("stco"))?,
            ));
            if moved.contains(&v) {
                let n = u32::try_from(v + shift).map_err(|_| RewriteError::Overflow)?;
                e.copy_from_slice(&n.to_be_bytes());
            }
        }
    }
    Ok(())
}

/// The duration in seconds of the first sound track, as its track header
/// (with edit lists applied) or else its media header says.
pub fn audio_duration(moov: &[u8]) -> Option<f64> {
    let top = header_at(moov, 0, moov.len() as u64)?;
    let body = &moov[top.header_len as usize..];
    let movie_timescale = children(body)
        .find(|(k, _)| k == b"mvhd")
        .and_then(|(_, b)| full_box_times(b).map(|(ts, _)| ts))?;
    for (kind, trak) in children(body) {
        if &kind != b"trak" {
            continue;
        }
        let mdia = children(trak).find(|(k, _)| k == b"mdia").map(|(_, b)| b)?;
        let is_sound = children(mdia)
            .find(|(k, _)| k == b"hdlr")
            .and_then(|(_, b)| b.get(8..12))
            == Some(b"soun".as_slice());
        if !is_sound {
            continue;
        }
        let tkhd = children(trak).find(|(k, _)| k == b"tkhd").map(|(_, b)| b);
        if let Some(d) = tkhd.and_then(tkhd_duration).filter(|d| *d > 0)
            && movie_timescale > 0
        {
            return Some(d as f64 / f64::from(movie_timescale));
        }
        let (ts, d) = children(mdia)
            .find(|(k, _)| k == b"mdhd")
            .and_then(|(_, b)| full_box_times(b))?;
        return (ts > 0).then(|| d as f64 / f64::from(ts));
    }
    None
}

/// The child boxes of a container body: (type, body).
fn children(body: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let h = header_at(body.get(at..)?, 0, (body.len() - at) as u64)?;
        let end = at.checked_add(usize::try_from(h.size).ok()?)?;
        let child = body.get(at + h.header_len as usize..end)?;
        at = end;
        Some((h.kind, child))
    })
}

/// (timescale, duration) of an `mvhd` or `mdhd` body (version 0 or 1).
fn full_box_times(b: &[u8]) -> Option<(u32, u64)> {
    let be32 = |at: usize| {
        b.get(at..at + 4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    };
    let be64 = |at: usize| {
        b.get(at..at + 8)
            .and_then(|x| x.try_into().ok())
            .map(u64::from_be_bytes)
    };
    match b.first()? {
        0 => Some((be32(12)?, u64::from(be32(16)?))),
        1 => Some((be32(20)?, be64(24)?)),
        _ => None,
    }
}

/// The duration of a `tkhd` body, in the movie's timescale.
fn tkhd_duration(b: &[u8]) -> Option<u64> {
    match b.first()? {
        0 => b
            .get(20..24)
            .map(|x| u64::from(u32::from_be_bytes([x[0], x[1], x[2], x[3]]))),
        1 => b
            .get(28..36)
            .and_then(|x| x.try_into().ok())
            .map(u64::from_be_bytes),
        _ => None,
    }
    .filter(|d| *d != u64::from(u32::MAX) && *d != u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_index_in_front_is_seen_in_the_first_bytes() {
        let boxed = |kind: &[u8; 4], len: u32| {
            let mut b = len.to_be_bytes().to_vec();
            b.extend_from_slice(kind);
            b.resize(len as usize, 0);
            b
        };
        let faststart = [boxed(b"ftyp", 24), boxed(b"moov", 100), boxed(b"mdat", 64)].concat();
        assert_eq!(index_comes_first(&faststart), Some(true));
        // Only the moov's header has arrived: enough to tell.
        assert_eq!(index_comes_first(&faststart[..32]), Some(true));
        let late = [boxed(b"ftyp", 24), boxed(b"free", 8), boxed(b"mdat", 64)].concat();
        assert_eq!(index_comes_first(&late), Some(false));
        assert_eq!(index_comes_first(&late[..20]), None, "not even past ftyp");
        assert_eq!(index_comes_first(b"not an mp4 at all"), None);
    }

    use super::*;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    fn stco(offsets: &[u32]) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
        for o in offsets {
            b.extend_from_slice(&o.to_be_bytes());
        }
        boxed(b"stco", &b)
    }

    #[test]
    fn the_scanner_keeps_a_late_index_whatever_the_chunking() {
        let ftyp = boxed(b"ftyp", &[0; 12]);
        let mdat = boxed(b"mdat", &[9; 300]);
        let moov = boxed(b"moov", &boxed(b"mvhd", &[1; 100]));
        let file = [
            ftyp.clone(),
            mdat.clone(),
            moov.clone(),
            boxed(b"free", &[0; 5]),
        ]
        .concat();
        for step in [1, 3, 7, 64, file.len()] {
            let mut sc = Scanner::default();
            for part in file.chunks(step) {
                sc.feed(part);
            }
            assert_eq!(
                sc.finish(),
                Some(LateIndex {
                    insert_at: ftyp.len() as u64,
                    moov_start: (ftyp.len() + mdat.len()) as u64,
                    moov: moov.clone(),
                }),
                "fed {step} bytes at a time"
            );
        }
        // Index first (faststart), or not an MP4: nothing to keep.
        let fast = [ftyp.clone(), moov.clone(), mdat.clone()].concat();
        let mut sc = Scanner::default();
        sc.feed(&fast);
        assert_eq!(sc.finish(), None);
        let mut sc = Scanner::default();
        sc.feed(b"\x1aE\xdf\xa3 some matroska bytes");
        assert_eq!(sc.finish(), None);
        // A large mdat (64-bit size) is skipped by its size.
        let mut big = 1u32.to_be_bytes().to_vec();
        big.extend_from_slice(b"mdat");
        big.extend_from_slice(&(16u64 + 50).to_be_bytes());
        big.extend_from_slice(&[0; 50]);
        let file = [ftyp.clone(), big.clone(), moov.clone()].concat();
        let mut sc = Scanner::default();
        for part in file.chunks(5) {
            sc.feed(part);
        }
        assert_eq!(
            sc.finish().map(|i| i.moov_start),
            Some((ftyp.len() + big.len()) as u64)
        );
    }

    #[test]
    fn headers_handle_normal_large_and_open_ended_sizes() {
        let h = header_at(&boxed(b"ftyp", &[0; 12]), 0, 100).unwrap();
        assert_eq!((h.kind, h.size, h.header_len), (*b"ftyp", 20, 8));
        let mut large = 1u32.to_be_bytes().to_vec();
        large.extend_from_slice(b"mdat");
        large.extend_from_slice(&5_000_000_000u64.to_be_bytes());
        let h = header_at(&large, 40, 6_000_000_000).unwrap();
        assert_eq!(
            (h.size, h.header_len, h.end()),
            (5_000_000_000, 16, 5_000_000_040)
        );
        let mut open = 0u32.to_be_bytes().to_vec();
        open.extend_from_slice(b"mdat");
        assert_eq!(header_at(&open, 10, 110).unwrap().size, 100);
        assert!(
            header_at(&[0, 0, 0, 4, b'x', b'x', b'x', b'x'], 0, 8).is_none(),
            "size below its header"
        );
        assert!(looks_like_mp4(&boxed(b"ftyp", &[0; 12]), 20));
        assert!(!looks_like_mp4(b"\x1aE\xdf\xa3 matroska", 100));
    }

    #[test]
    fn moov_after_mdat_is_moved_and_only_offsets_behind_it_shift() {
        let tops = [
            BoxHeader {
                kind: *b"ftyp",
                start: 0,
                header_len: 8,
                size: 20,
            },
            BoxHeader {
                kind: *b"mdat",
                start: 20,
                header_len: 8,
                size: 1000,
            },
            BoxHeader {
                kind: *b"moov",
                start: 1020,
                header_len: 8,
                size: 80,
            },
        ];
        assert_eq!(
            layout(&tops),
            Layout::Relocate {
                insert_at: 20,
                moov: 1020..1100
            }
        );
        let faststart = [
            tops[0],
            BoxHeader {
                kind: *b"moov",
                start: 20,
                header_len: 8,
                size: 80,
            },
            BoxHeader {
                kind: *b"mdat",
                start: 100,
                header_len: 8,
                size: 1000,
            },
        ];
        assert_eq!(layout(&faststart), Layout::AsIs);

        let stbl = boxed(b"stbl", &stco(&[28, 500, 10, 2000]));
        let minf = boxed(b"minf", &stbl);
        let mdia = boxed(b"mdia", &minf);
        let trak = boxed(b"trak", &mdia);
        let udta = boxed(b"udta", &stco(&[28])); // not on the path: untouched
        let mut moov = boxed(b"moov", &[trak, udta].concat());
        let len = moov.len() as u32;
        relocate(&mut moov, 20, 1020).unwrap();
        let offsets = |b: &[u8]| -> Vec<u32> {
            b[16..]
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        // moov > trak > mdia > minf > stbl > stco: five 8-byte headers in.
        let trak_len = 8 + 8 + 8 + 8 + stco(&[0; 4]).len();
        let table = &moov[8 + 8 * 4..8 + trak_len];
        assert_eq!(offsets(table), [28 + len, 500 + len, 10, 2000]);
        assert!(moov.ends_with(&stco(&[28])), "boxes off the path untouched");
    }

    #[test]
    fn an_offset_past_32_bits_is_refused_not_wrapped() {
        let mut moov = boxed(
            b"moov",
            &boxed(
                b"trak",
                &boxed(
                    b"mdia",
                    &boxed(b"minf", &boxed(b"stbl", &stco(&[u32::MAX - 4]))),
                ),
            ),
        );
        assert_eq!(
            relocate(&mut moov, 0, u64::MAX),
            Err(RewriteError::Overflow)
        );
        let mut truncated = boxed(b"moov", &[0, 0, 0, 40, b't', b'r', b'a', b'k']);
        assert!(relocate(&mut truncated, 0, 10).is_err());
    }
}
