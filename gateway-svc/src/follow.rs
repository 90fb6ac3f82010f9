//! Uploads followed as they arrive: a converter converts a video while it is
//! still being uploaded by reading its bytes from the replica that receives
//! them (`mp3converter.upload.v1.UploadFollowService`), not back from GridFS.
//!
//! Each upload in progress keeps a bounded window of its latest bytes
//! ([`Tee`]): the upload pushes every chunk and never waits; a follower
//! reads from its own offset and is dropped (OUT_OF_RANGE) once the window
//! has moved past it, so a slow or dead converter costs the upload nothing
//! and the video is converted from storage after the commit instead. The
//! windows together are bounded too ([`Follows::new`]): past that, new
//! bytes of uploads nobody follows are not kept at all.

use bytes::Bytes;
use mp3converter_proto::upload::v1::{
    FollowUploadRequest, FollowUploadResponse, UploadComplete, follow_upload_response,
    upload_follow_service_server::UploadFollowService,
};
use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// The uploads of this replica that can be followed.
#[derive(Debug, Clone)]
pub(crate) struct Follows {
    uploads: Arc<Mutex<HashMap<String, Arc<Tee>>>>,
    /// Bytes one upload keeps for its followers.
    window: usize,
    /// Bytes all uploads keep together, and how many they keep now.
    total: usize,
    kept: Arc<AtomicUsize>,
    /// What converters are told to connect to.
    url: Option<String>,
}

impl Follows {
    pub(crate) fn new(window: usize, total: usize, url: Option<String>) -> Self {
        Self {
            uploads: Arc::default(),
            window,
            total,
            kept: Arc::default(),
            url,
        }
    }

    /// Where converters follow uploads here; `None`: they cannot.
    pub(crate) fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Makes upload `job_id` followable until the returned writer is done
    /// with it.
    pub(crate) fn start(&self, job_id: &str) -> TeeWriter {
        let tee = Arc::new(Tee {
            state: Mutex::default(),
            changed: Notify::new(),
            all_kept: self.kept.clone(),
        });
        self.lock().insert(job_id.to_owned(), tee.clone());
        metrics::gauge!("mp3converter_gateway_followable_uploads").increment(1.0);
        TeeWriter {
            follows: self.clone(),
            job_id: job_id.to_owned(),
            tee,
            ended: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Tee>>> {
        self.uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, job_id: &str) -> Option<Arc<Tee>> {
        self.lock().get(job_id).cloned()
    }
}

/// An upload's latest bytes, shared with its followers: kept until the last
/// follower is done with them (a follower a little behind at the commit
/// still gets the end).
#[derive(Debug)]
struct Tee {
    state: Mutex<Window>,
    /// Woken at every change.
    changed: Notify,
    /// What all uploads keep ([`Follows::kept`]).
    all_kept: Arc<AtomicUsize>,
}

impl Drop for Tee {
    fn drop(&mut self) {
        let kept = lock(self).kept;
        self.all_kept.fetch_sub(kept, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Window {
    /// The kept chunks, oldest first, each with its offset in the file.
    chunks: VecDeque<(u64, Bytes)>,
    kept: usize,
    /// The offset just past the last byte received.
    end: u64,
    /// Set once the upload ended: its size if committed, `None` if not.
    ended: Option<Option<u64>>,
    /// Whether the window ever dropped bytes (nothing before `start()` is
    /// there any more).
    trimmed: bool,
}

impl Window {
    fn start(&self) -> u64 {
        self.chunks.front().map_or(self.end, |(at, _)| *at)
    }
}

/// The receiving side of one upload: pushes never wait.
#[derive(Debug)]
pub(crate) struct TeeWriter {
    follows: Follows,
    job_id: String,
    tee: Arc<Tee>,
    ended: bool,
}

impl TeeWriter {
    /// The next bytes of the file.
    pub(crate) fn push(&self, chunk: &Bytes) {
        let mut w = self.lock();
        let at = w.end;
        w.end += chunk.len() as u64;
        w.chunks.push_back((at, chunk.clone()));
        w.kept += chunk.len();
        self.follows.kept.fetch_add(chunk.len(), Ordering::Relaxed);
        // Over this upload's window, or over what all may keep: the oldest
        // bytes go (a follower still behind them falls back to storage).
        while w.kept > self.follows.window
            || (self.follows.kept.load(Ordering::Relaxed) > self.follows.total && w.kept > 0)
        {
            let Some((_, old)) = w.chunks.pop_front() else {
                break;
            };
            w.kept -= old.len();
            w.trimmed = true;
            self.follows.kept.fetch_sub(old.len(), Ordering::Relaxed);
        }
        drop(w);
        self.tee.changed.notify_waiters();
    }

    /// The upload is committed with `total` bytes.
    pub(crate) fn complete(mut self, total: u64) {
        self.end(Some(total));
    }

    fn end(&mut self, outcome: Option<u64>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.lock().ended = Some(outcome);
        self.tee.changed.notify_waiters();
        self.follows.lock().remove(&self.job_id);
        metrics::gauge!("mp3converter_gateway_followable_uploads").decrement(1.0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        lock(&self.tee)
    }
}

impl Drop for TeeWriter {
    /// An upload that ends without its commit (failed, abandoned, the
    /// server shutting down) ends its followers with it, and its bytes go.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.end(None);
        let mut w = self.lock();
        w.chunks.clear();
        self.follows.kept.fetch_sub(w.kept, Ordering::Relaxed);
        w.kept = 0;
    }
}

fn lock(tee: &Tee) -> std::sync::MutexGuard<'_, Window> {
    tee.state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a follower gets next.
enum Next {
    /// The bytes from the offset asked for, and the offset after them.
    Bytes(u64, Vec<Bytes>),
    Complete(u64),
}

impl Tee {
    /// What follows `at`, waiting for the upload to push or end.
    async fn next_after(&self, at: u64) -> Result<Next, Status> {
        loop {
            // Registered before looking, so a push in between wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(next) = self.next(at)? {
                return Ok(next);
            }
            changed.await;
        }
    }

    /// `None`: nothing yet, the upload goes on.
    fn next(&self, at: u64) -> Result<Option<Next>, Status> {
        let w = lock(self);
        if at < w.start() || (w.trimmed && w.chunks.is_empty() && at < w.end) {
            return Err(Status::out_of_range(
                "the bytes asked for are no longer kept here; read the stored file",
            ));
        }
        let mut out = Vec::new();
        let mut next = at;
        for (off, chunk) in &w.chunks {
            let end = off + chunk.len() as u64;
            if end <= at {
                continue;
            }
            let from = usize::try_from(at.saturating_sub(*off)).unwrap_or(0);
            out.push(chunk.slice(from..));
            next = end;
        }
        if !out.is_empty() {
            return Ok(Some(Next::Bytes(next, out)));
        }
        match w.ended {
            Some(Some(total)) if at == total => Ok(Some(Next::Complete(total))),
            Some(Some(_)) => Err(Status::out_of_range("past the end of the upload")),
            Some(None) => Err(Status::aborted("the upload failed; nothing more will come")),
            None => Ok(None),
        }
    }
}

type FollowStream =
    Pin<Box<dyn futures::Stream<Item = Result<FollowUploadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl UploadFollowService for Follows {
    type FollowUploadStream = FollowStream;

    async fn follow_upload(
        &self,
        req: Request<FollowUploadRequest>,
    ) -> Result<Response<Self::FollowUploadStream>, Status> {
        let FollowUploadRequest { job_id, offset } = req.into_inner();
        let tee = self
            .get(&job_id)
            .ok_or_else(|| Status::not_found("no such upload in progress here"))?;
        let stream = futures::stream::unfold((tee, offset, false), |(tee, at, done)| async move {
            if done {
                return None;
            }
            let msg = |p| FollowUploadResponse { payload: Some(p) };
            Some(match tee.next_after(at).await {
                Ok(Next::Bytes(next, chunks)) => {
                    let bytes = if chunks.len() == 1 {
                        chunks.into_iter().next().unwrap_or_default()
                    } else {
                        Bytes::from(chunks.concat())
                    };
                    let item = Ok(msg(follow_upload_response::Payload::Chunk(bytes)));
                    (item, (tee, next, false))
                }
                Ok(Next::Complete(total)) => {
                    let item = Ok(msg(follow_upload_response::Payload::Complete(
                        UploadComplete { total_bytes: total },
                    )));
                    (item, (tee, at, true))
                }
                Err(status) => (Err(status), (tee, at, true)),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn follows(window: usize, total: usize) -> Follows {
        Follows::new(window, total, Some("http://gw".into()))
    }

    async fn read_all(f: &Follows, id: &str, from: u64) -> (Vec<u8>, Result<u64, Status>) {
        let mut s = f
            .follow_upload(Request::new(FollowUploadRequest {
                job_id: id.into(),
                offset: from,
            }))
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = s.next().await {
            match m.map(|m| m.payload) {
                Ok(Some(follow_upload_response::Payload::Chunk(b))) => got.extend_from_slice(&b),
                Ok(Some(follow_upload_response::Payload::Complete(c))) => {
                    return (got, Ok(c.total_bytes));
                }
                Ok(None) => {}
                Err(e) => return (got, Err(e)),
            }
        }
        (got, Err(Status::internal("ended without completion")))
    }

    #[tokio::test]
    async fn a_follower_gets_every_byte_then_the_completion() {
        let f = follows(1 << 20, 1 << 20);
        let w = f.start("job");
        let reader = {
            let f = f.clone();
            tokio::spawn(async move { read_all(&f, "job", 0).await })
        };
        tokio::task::yield_now().await;
        let mut sent = Vec::new();
        for i in 0..50u8 {
            let chunk = Bytes::from(vec![i; 1000]);
            sent.extend_from_slice(&chunk);
            w.push(&chunk);
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        w.complete(sent.len() as u64);
        let (got, end) = reader.await.unwrap();
        assert_eq!(end.unwrap(), 50_000);
        assert!(got == sent);
        // Done: no longer followable.
        assert!(
            f.follow_upload(Request::new(FollowUploadRequest {
                job_id: "job".into(),
                offset: 0
            }))
            .await
            .is_err()
        );
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_is_dropped_not_waited_for() {
        let f = follows(4000, 1 << 20);
        let w = f.start("job");
        for i in 0..10u8 {
            w.push(&Bytes::from(vec![i; 1000]));
        }
        // Only the last 4000 bytes are kept: offset 0 is gone.
        let (_, end) = read_all(&f, "job", 0).await;
        assert_eq!(end.unwrap_err().code(), tonic::Code::OutOfRange);
        // A follower a little behind at the commit still gets the end.
        let mut s = f
            .follow_upload(Request::new(FollowUploadRequest {
                job_id: "job".into(),
                offset: 7000,
            }))
            .await
            .unwrap()
            .into_inner();
        w.complete(10_000);
        let mut got = Vec::new();
        let mut total = None;
        while let Some(Ok(m)) = s.next().await {
            match m.payload {
                Some(follow_upload_response::Payload::Chunk(b)) => got.extend_from_slice(&b),
                Some(follow_upload_response::Payload::Complete(c)) => total = Some(c.total_bytes),
                None => {}
            }
        }
        assert_eq!(total, Some(10_000));
        assert_eq!(
            got,
            [vec![7u8; 1000], vec![8; 1000], vec![9; 1000]].concat()
        );
        drop(s);
        assert_eq!(f.kept.load(Ordering::Relaxed), 0, "nothing kept once read");
    }

    #[tokio::test]
    async fn an_upload_that_fails_fails_its_followers_and_all_windows_are_bounded() {
        let f = follows(10_000, 5000);
        let a = f.start("a");
        let b = f.start("b");
        for _ in 0..8 {
            a.push(&Bytes::from(vec![1; 1000]));
            b.push(&Bytes::from(vec![2; 1000]));
        }
        assert!(f.kept.load(Ordering::Relaxed) <= 5000 + 1000);
        let reader = {
            let f = f.clone();
            tokio::spawn(async move { read_all(&f, "a", 7000).await })
        };
        tokio::task::yield_now().await;
        drop(a); // the upload failed
        let (_, end) = reader.await.unwrap();
        assert_eq!(end.unwrap_err().code(), tonic::Code::Aborted);
        drop(b);
        assert_eq!(f.kept.load(Ordering::Relaxed), 0);
    }
}
