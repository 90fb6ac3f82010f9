//! Bounds on a multipart body before multer sees it.
//!
//! multer keeps in memory whatever it has not yet matched: the preamble until
//! the first boundary, a part's headers until their blank line, and every
//! byte the socket has ready each time it is polled. A client could make any
//! of these as large as the body limit (a 100 MB file name grew the gateway
//! by 400 MB). [`Guarded`] sits between the body and multer and follows the
//! framing itself, with a few bytes of state:
//!
//! - the preamble may be at most [`Bounds::preamble`] bytes (400);
//! - one part's headers at most [`Bounds::part_headers`] bytes (431);
//! - the whole body at most [`Bounds::body`] bytes (413);
//! - it hands multer at most [`BURST`] bytes per poll, so multer's buffer
//!   never holds more than that beyond what the handler has taken.

use crate::error::ApiError;
use axum::{
    body::Body,
    http::{HeaderMap, StatusCode, header},
};
use bytes::Bytes;
use futures::Stream;
use memchr::memmem;
use std::{
    pin::Pin,
    task::{Context, Poll},
};
use tonic::Code;

/// Bytes handed on before yielding once, so one poll of multer reads at most
/// this much (it reads until its source is pending).
pub(crate) const BURST: usize = 256 << 10;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) preamble: usize,
    pub(crate) part_headers: usize,
    pub(crate) body: u64,
}

/// What broke a bound (or the body itself).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FormError {
    #[error("the multipart body has more than {0} bytes before its first boundary")]
    Preamble(usize),
    #[error("a part's headers are longer than {0} bytes")]
    PartHeaders(usize),
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
}

impl FormError {
    /// `err` or one of its causes, if it is ours.
    pub(crate) fn in_chain<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(f) = e.downcast_ref::<Self>() {
                return Some(f);
            }
            if let Some(GuardError::Form(f)) = e.downcast_ref::<GuardError>() {
                return Some(f);
            }
            cur = e.source();
        }
        None
    }
}

/// The multipart form of a request, read under `bounds`. A declared length
/// over the limit is refused before a byte of the body is read (so before
/// `100 Continue`).
pub(crate) fn open(
    headers: &HeaderMap,
    body: Body,
    bounds: Bounds,
) -> Result<multer::Multipart<'static>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > bounds.body) {
        return Err(error(&FormError::TooLarge(bounds.body)));
    }
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| {
            ApiError::bad_request("expected a multipart/form-data body with a `file` part")
        })?;
    let framing = Framing::new(&boundary, bounds);
    let stream = Guarded::new(body.into_data_stream(), framing);
    Ok(multer::Multipart::new(stream, boundary))
}

/// The answer to a broken bound.
pub(crate) fn error(e: &FormError) -> ApiError {
    match e {
        FormError::Preamble(_) => ApiError::bad_request(e.to_string()),
        FormError::PartHeaders(_) => ApiError::bad_request(e.to_string())
            .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        FormError::TooLarge(_) => ApiError::new(Code::ResourceExhausted, e.to_string())
            .with_status(StatusCode::PAYLOAD_TOO_LARGE),
    }
}

/// Where in the framing the next byte is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first `--boundary`; `n` bytes so far.
    Preamble { n: usize },
    /// After a delimiter, up to the blank line ending the part's headers.
    /// `n` bytes so far; `first` holds the first two (`--` ends the body).
    Headers { n: usize, first: [u8; 2] },
    /// A part's content, up to the next `\r\n--boundary`.
    Data,
    /// After the closing delimiter: ignored.
    Epilogue,
}

/// Finds a pattern in a stream of slices, across their seams.
#[derive(Debug)]
struct Finder {
    pattern: Vec<u8>,
    /// The last `pattern.len() - 1` bytes seen without a match.
    carry: Vec<u8>,
}

impl Finder {
    fn new(pattern: Vec<u8>) -> Self {
        Self {
            carry: Vec::with_capacity(pattern.len()),
            pattern,
        }
    }

    /// Where in `data` the first match ends, if one does.
    fn find(&mut self, data: &[u8]) -> Option<usize> {
        let p = self.pattern.len();
        if !self.carry.is_empty() {
            // A match across the seam starts in `carry` and ends within the
            // first p - 1 bytes of `data`.
            let mut seam = self.carry.clone();
            seam.extend_from_slice(&data[..data.len().min(p - 1)]);
            if let Some(i) = memmem::find(&seam, &self.pattern) {
                let end = i + p - self.carry.len();
                self.carry.clear();
                return Some(end);
            }
        }
        if let Some(i) = memmem::find(data, &self.pattern) {
            self.carry.clear();
            return Some(i + p);
        }
        let keep = p - 1;
        if data.len() >= keep {
            self.carry.clear();
            self.carry.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.carry.extend_from_slice(data);
            let excess = self.carry.len().saturating_sub(keep);
            self.carry.drain(..excess);
        }
        None
    }

    fn reset(&mut self) {
        self.carry.clear();
    }
}

/// The framing as far as the bounds need it.
#[derive(Debug)]
pub(crate) struct Framing {
    bounds: Bounds,
    stage: Stage,
    /// `--boundary`: the first delimiter.
    first: Finder,
    /// `\r\n--boundary`: every later one.
    next: Finder,
    /// The blank line that ends a part's headers.
    blank: Finder,
    total: u64,
}

impl Framing {
    pub(crate) fn new(boundary: &str, bounds: Bounds) -> Self {
        Self {
            bounds,
            stage: Stage::Preamble { n: 0 },
            first: Finder::new(format!("--{boundary}").into_bytes()),
            next: Finder::new(format!("\r\n--{boundary}").into_bytes()),
            blank: Finder::new(b"\r\n\r\n".to_vec()),
            total: 0,
        }
    }

    /// Follows `data`; an error once a bound is broken.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), FormError> {
        self.total += data.len() as u64;
        if self.total > self.bounds.body {
            return Err(FormError::TooLarge(self.bounds.body));
        }
        while !data.is_empty() {
            match self.stage {
                Stage::Preamble { n } => {
                    let allowed = self.bounds.preamble + self.first.pattern.len();
                    match self.first.find(data) {
                        Some(end) if n + end <= allowed => {
                            data = &data[end..];
                            self.start_headers();
                        }
                        Some(_) => return Err(FormError::Preamble(self.bounds.preamble)),
                        None if n + data.len() > allowed => {
                            return Err(FormError::Preamble(self.bounds.preamble));
                        }
                        None => {
                            self.stage = Stage::Preamble { n: n + data.len() };
                            data = &[];
                        }
                    }
                }
                Stage::Headers { n, mut first } => {
                    for (i, b) in data.iter().take(2usize.saturating_sub(n)).enumerate() {
                        first[n + i] = *b;
                    }
                    if n + data.len() >= 2 && &first == b"--" {
                        self.stage = Stage::Epilogue;
                        continue;
                    }
                    let limit = self.bounds.part_headers;
                    match self.blank.find(data) {
                        Some(end) if n + end <= limit => {
                            data = &data[end..];
                            self.next.reset();
                            self.stage = Stage::Data;
                        }
                        Some(_) => return Err(FormError::PartHeaders(limit)),
                        None if n + data.len() > limit => {
                            return Err(FormError::PartHeaders(limit));
                        }
                        None => {
                            self.stage = Stage::Headers {
                                n: n + data.len(),
                                first,
                            };
                            data = &[];
                        }
                    }
                }
                Stage::Data => match self.next.find(data) {
                    Some(end) => {
                        data = &data[end..];
                        self.start_headers();
                    }
                    None => data = &[],
                },
                Stage::Epilogue => data = &[],
            }
        }
        Ok(())
    }

    fn start_headers(&mut self) {
        self.blank.reset();
        self.stage = Stage::Headers {
            n: 0,
            first: [0; 2],
        };
    }
}

/// Why the guarded stream ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GuardError {
    #[error(transparent)]
    Form(#[from] FormError),
    #[error(transparent)]
    Body(#[from] axum::Error),
}

pin_project_lite::pin_project! {
    /// A body stream under [`Framing`]'s bounds, in bursts of at most
    /// [`BURST`] bytes.
    pub(crate) struct Guarded<S> {
        #[pin]
        inner: S,
        framing: Framing,
        since_pending: usize,
        failed: bool,
    }
}

impl<S> Guarded<S> {
    pub(crate) fn new(inner: S, framing: Framing) -> Self {
        Self {
            inner,
            framing,
            since_pending: 0,
            failed: false,
        }
    }
}

impl<S: Stream<Item = Result<Bytes, axum::Error>>> Stream for Guarded<S> {
    type Item = Result<Bytes, GuardError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        if *this.since_pending >= BURST {
            // Let multer work through what it has before it reads on.
            *this.since_pending = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match this.inner.poll_next(cx) {
            Poll::Pending => {
                *this.since_pending = 0;
                Poll::Pending
            }
            Poll::Ready(Some(Ok(bytes))) => {
                *this.since_pending += bytes.len();
                if let Err(e) = this.framing.feed(&bytes) {
                    *this.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "XyZ";
    const BOUNDS: Bounds = Bounds {
        preamble: 16,
        part_headers: 128,
        body: 1 << 20,
    };

    fn body(preamble: &str, header: &str, data: &str) -> Vec<u8> {
        format!(
            "{preamble}--{B}\r\nContent-Disposition: form-data; name=\"bitrate\"\r\n\r\n128\r\n--{B}\r\n\
             {header}\r\n\r\n{data}\r\n--{B}--\r\nepilogue"
        )
        .into_bytes()
    }

    /// Feeds `bytes` in pieces of `step` (seams everywhere).
    fn feed(bytes: &[u8], step: usize) -> Result<Framing, FormError> {
        let mut f = Framing::new(B, BOUNDS);
        for piece in bytes.chunks(step) {
            f.feed(piece)?;
        }
        Ok(f)
    }

    #[test]
    fn well_formed_bodies_pass_in_pieces_of_any_size() {
        let header = "Content-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"";
        let data = "x".repeat(5000) + "\r\n--Xy not yet" + "\r\n-";
        let b = body("", header, &data);
        for step in [1, 2, 3, 7, 64, 4096, b.len()] {
            let f = feed(&b, step).unwrap_or_else(|e| panic!("step {step}: {e}"));
            assert_eq!(f.stage, Stage::Epilogue, "step {step}");
        }
        // A short preamble is allowed.
        assert!(feed(&body("ignored\r\n", header, "x"), 5).is_ok());
    }

    #[test]
    fn a_long_preamble_is_refused() {
        let b = body(
            &"p".repeat(100),
            "Content-Disposition: form-data; name=\"file\"",
            "x",
        );
        for step in [1, 10, b.len()] {
            assert!(
                matches!(feed(&b, step), Err(FormError::Preamble(16))),
                "{step}"
            );
        }
        // Never a boundary at all.
        let mut f = Framing::new(B, BOUNDS);
        let e = (0..10).try_for_each(|_| f.feed(&[b'p'; 10]));
        assert!(matches!(e, Err(FormError::Preamble(16))));
    }

    #[test]
    fn long_part_headers_are_refused_wherever_they_are() {
        let name = "n".repeat(100);
        let header = format!("Content-Disposition: form-data; name=\"file\"; filename=\"{name}\"");
        let b = body("", &header, "x");
        for step in [1, 13, b.len()] {
            assert!(
                matches!(feed(&b, step), Err(FormError::PartHeaders(128))),
                "{step}"
            );
        }
        // Headers that never end.
        let mut f = Framing::new(B, BOUNDS);
        f.feed(format!("--{B}\r\n").as_bytes()).unwrap();
        let e = (0..20).try_for_each(|_| f.feed(&[b'h'; 10]));
        assert!(matches!(e, Err(FormError::PartHeaders(128))));
    }

    #[test]
    fn the_body_limit_counts_every_byte() {
        let bounds = Bounds {
            preamble: 1000,
            body: 100,
            ..BOUNDS
        };
        let mut f = Framing::new(B, bounds);
        f.feed(&[b'-'; 60]).unwrap();
        assert!(matches!(f.feed(&[b'-'; 41]), Err(FormError::TooLarge(100))));
    }

    #[test]
    fn the_finder_sees_matches_across_seams() {
        let mut f = Finder::new(b"abcd".to_vec());
        assert_eq!(f.find(b"xxab"), None);
        assert_eq!(f.find(b"c"), None);
        assert_eq!(f.find(b"dzz"), Some(1));
        assert_eq!(f.find(b"abcabc"), None);
        assert_eq!(f.find(b"d"), Some(1));
    }
}
