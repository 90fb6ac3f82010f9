//! Resumable uploads: `CreateUpload`, `GetUpload`, `AppendUpload`,
//! `CancelUpload` (and, through them, the REST edge's tus routes).
//!
//! The offset (with the bytes past the last whole chunk) and the one-writer
//! lease are in the job's row, whole chunks in the video's GridFS chunks
//! ([`media_store::resumable`]), so an upload
//! continues on any replica, after any restart. An append keeps what
//! arrived however it ends (a cut connection included), checkpointing as it
//! goes, so a gateway that dies loses at most the bytes since its last
//! checkpoint; with a checksum it keeps the bytes only if they all arrived
//! and match.
//!
//! Converting while uploading works as for a streaming upload while the
//! appends arrive at this replica back to back: the follow window is parked
//! between them ([`Parked`]); any gap (a pause, another replica, a
//! checksum refused) ends it, and the converter falls back to converting
//! from storage after the last byte, as after a stall.

use super::{MAX_CHUNK, Media, upload::too_large};
use crate::{
    auth::Caller,
    error::{jobs_error, store_error},
    follow::TeeWriter,
};
use media_store::{
    Started,
    mongodb::bson::{doc, oid::ObjectId},
    resumable::{Append, Appender, Partial},
};
use mp3converter_proto::media::v1::{
    self as pb, AppendStart, AppendUploadRequest, CreateUploadRequest, ResumableUpload,
    append_upload_request::Payload,
};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tonic::Status;

/// Bytes between checkpoints of an append without a checksum: what a
/// gateway that dies mid-append can lose (a cut connection loses nothing).
const CHECKPOINT_BYTES: u64 = 8 << 20;

/// A client's bytes that do not match the digest it sent (tus's 460).
pub(crate) const CHECKSUM_MISMATCH: &str = "the bytes do not match their SHA-256; nothing was kept";

/// The longest a live conversion waits, parked, for the next append.
const PARKED_FOR: Duration = Duration::from_secs(30);

/// How a resumable upload is kept: for how long without an append, and how
/// long an append's lease lasts without renewal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resumable {
    pub(crate) expires_in: Duration,
    pub(crate) writer_lease: Duration,
}

/// Follow windows of resumable uploads between two appends, with the offset
/// they reached.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parked(Arc<Mutex<ParkedWindows>>);

/// Each window with the offset it reached and since when it waits.
type ParkedWindows = HashMap<ObjectId, (TeeWriter, u64, Instant)>;

impl Parked {
    fn lock(&self) -> std::sync::MutexGuard<'_, ParkedWindows> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn park(&self, id: ObjectId, tee: TeeWriter, at: u64) {
        let mut parked = self.lock();
        parked.retain(|_, (_, _, since)| since.elapsed() < PARKED_FOR);
        parked.insert(id, (tee, at, Instant::now()));
    }

    /// The window of `id` if it reached exactly `at` (else it is dropped,
    /// which ends its followers).
    fn take(&self, id: ObjectId, at: u64) -> Option<TeeWriter> {
        let (tee, reached, since) = self.lock().remove(&id)?;
        (reached == at && since.elapsed() < PARKED_FOR).then_some(tee)
    }
}

fn view(p: &Partial, job: Option<pb::Job>) -> ResumableUpload {
    ResumableUpload {
        job_id: p.id.to_hex(),
        total_bytes: p.length,
        offset: if p.is_complete() {
            p.length
        } else {
            p.received
        },
        expire_time: (!p.is_complete()).then(|| p.expires_at.into()),
        job,
    }
}

/// How an append's stream ended.
enum Ended {
    /// The client finished sending.
    Clean,
    /// The stream broke (a cut connection), or the server is shutting down.
    Cut(Status),
}

impl Media {
    pub(super) async fn create_resumable(
        &self,
        caller: &Caller,
        req: CreateUploadRequest,
    ) -> Result<ResumableUpload, Status> {
        let length = req.total_bytes;
        if length == 0 {
            return Err(svc_kit::error::invalid_argument(
                "total_bytes",
                "must be at least 1",
            ));
        }
        if length > self.max_upload {
            return Err(too_large(self.max_upload));
        }
        let meta = req.metadata.unwrap_or_default();
        let new = super::upload::new_upload(caller, meta)?;
        let Started { job, .. } = self
            .jobs
            .start_resumable(&new, self.quotas.limits, length, self.resumable.expires_in)
            .await
            .map_err(|e| jobs_error("recording an upload", &e))?
            .map_err(|over| self.quotas.refused(over))?;
        if self.live_queue.is_some() {
            self.parked
                .park(job.id, self.follows.start(&job.id.to_hex()), 0);
            self.announce_start(&job);
        }
        tracing::info!(job_id = %job.id, bytes = length, "resumable upload created");
        self.get_resumable(caller, job.id).await
    }

    pub(super) async fn get_resumable(
        &self,
        caller: &Caller,
        id: ObjectId,
    ) -> Result<ResumableUpload, Status> {
        let partial = self
            .jobs
            .partial(id, &caller.user_id)
            .await
            .map_err(|e| jobs_error("finding an upload", &e))?
            .ok_or_else(|| Status::not_found("no such upload"))?;
        let job = if partial.is_complete() {
            self.jobs
                .get_visible(id, &caller.user_id)
                .await
                .map_err(|e| jobs_error("finding a job", &e))?
                .map(|j| media_store::proto::job(&j))
        } else {
            None
        };
        Ok(view(&partial, job))
    }

    pub(super) async fn cancel_resumable(
        &self,
        caller: &Caller,
        id: ObjectId,
    ) -> Result<(), Status> {
        match self
            .jobs
            .cancel_upload(id, &caller.user_id)
            .await
            .map_err(|e| jobs_error("cancelling an upload", &e))?
        {
            Ok(()) => {
                drop(self.parked.take(id, u64::MAX));
                // An append still running finds its lease gone at its next
                // checkpoint; what it writes after this the janitor removes.
                if let Err(e) = media_store::resumable::remove(&self.store.video_files, id).await {
                    tracing::warn!(error = %e, job_id = %id, "removing a cancelled upload's bytes failed; the janitor will");
                }
                tracing::info!(job_id = %id, "resumable upload cancelled");
                Ok(())
            }
            Err(Some(_)) => Err(Status::failed_precondition(
                "the upload is complete: it is a job now (DeleteJob)",
            )),
            Err(None) => Err(Status::not_found("no such upload")),
        }
    }

    /// One append: the client's messages from `rx` into the upload's chunks,
    /// from its stored offset on; the job is queued if the last byte came.
    pub(super) async fn append(
        self,
        caller: Arc<Caller>,
        mut rx: mpsc::Receiver<Result<AppendUploadRequest, Status>>,
    ) -> Result<ResumableUpload, Status> {
        let start = match rx.recv().await {
            Some(Ok(AppendUploadRequest {
                payload: Some(Payload::Start(s)),
            })) => s,
            Some(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of an append must be its start",
                ));
            }
            Some(Err(s)) => {
                return Err(Status::aborted(format!(
                    "append stream failed: {}",
                    s.message()
                )));
            }
            None => return Err(Status::aborted("the append ended before its start")),
        };
        let AppendStart {
            job_id,
            offset,
            sha256,
        } = start;
        let id = super::parse_id("job_id", &job_id)?;
        let expected: Option<[u8; 32]> = match sha256.len() {
            0 => None,
            32 => sha256[..].try_into().ok(),
            _ => {
                return Err(svc_kit::error::invalid_argument(
                    "sha256",
                    "must be 32 bytes (a SHA-256 digest)",
                ));
            }
        };
        let writer = uuid::Uuid::new_v4().to_string();
        let lease = self.resumable.writer_lease;
        let (partial, tail) = match self
            .jobs
            .begin_append(id, &caller.user_id, offset, &writer, lease)
            .await
            .map_err(|e| jobs_error("starting an append", &e))?
        {
            Append::Granted(p, tail) => (p, tail),
            Append::Conflict(p) if p.is_complete() => {
                return Err(Status::failed_precondition(format!(
                    "the upload is complete ({} bytes)",
                    p.length
                )));
            }
            Append::Conflict(p) => {
                return Err(Status::failed_precondition(format!(
                    "the upload is at offset {}, not {offset}",
                    p.received
                )));
            }
            Append::Busy(_) => {
                return Err(Status::aborted(
                    "another append to this upload is in progress; retry shortly",
                ));
            }
            Append::NotFound => return Err(Status::not_found("no such upload")),
        };
        let mut appending = Appending {
            media: &self,
            partial: &partial,
            owner: &caller.user_id,
            writer: &writer,
            hasher: expected.map(|_| Sha256::new()),
            tee: self.parked.take(id, offset),
            checkpointed: offset,
        };
        let result = appending.run(&mut rx, expected, tail).await;
        let tee = appending.tee.take();
        match result {
            Ok(Some(job)) => {
                if let Some(tee) = tee {
                    tee.complete(partial.length);
                }
                self.notify(&job, false);
                tracing::info!(job_id = %id, bytes = partial.length, "resumable upload complete and queued");
                let mut done = partial.clone();
                done.state = job.state;
                Ok(view(&done, Some(media_store::proto::job(&job))))
            }
            Ok(None) => {
                let at = appending.checkpointed;
                if let Some(tee) = tee {
                    self.parked.park(id, tee, at);
                }
                self.release(id, &writer).await;
                let mut now = partial.clone();
                now.received = at;
                now.expires_at = std::time::SystemTime::now() + self.resumable.expires_in;
                Ok(view(&now, None))
            }
            Err(status) => {
                self.release(id, &writer).await;
                if status.code() == tonic::Code::Aborted
                    && let Some(tee) = tee
                {
                    // Cut, and what arrived is kept: the window can go on.
                    self.parked.park(id, tee, appending.checkpointed);
                }
                Err(status)
            }
        }
    }

    async fn release(&self, id: ObjectId, writer: &str) {
        if let Err(e) = self.jobs.end_append(id, writer).await {
            tracing::warn!(error = %e, job_id = %id, "releasing an append's lease failed; it runs out by itself");
        }
    }
}

/// One append in progress.
struct Appending<'a> {
    media: &'a Media,
    partial: &'a Partial,
    owner: &'a str,
    writer: &'a str,
    hasher: Option<Sha256>,
    tee: Option<TeeWriter>,
    /// The offset recorded as stored.
    checkpointed: u64,
}

impl Appending<'_> {
    /// Appends until the stream ends. `Some(job)`: the last byte came and
    /// the job is queued; `None`: the bytes are stored up to `checkpointed`.
    async fn run(
        &mut self,
        rx: &mut mpsc::Receiver<Result<AppendUploadRequest, Status>>,
        expected: Option<[u8; 32]>,
        tail: Vec<u8>,
    ) -> Result<Option<media_store::Job>, Status> {
        let id = self.partial.id;
        let bucket = &self.media.store.video_files;
        let mut appender = Appender::open(bucket, id, self.partial.received, tail)
            .map_err(|e| store_error("opening an upload", &e))?;
        let mut renew = tokio::time::interval(self.media.resumable.writer_lease / 3);
        renew.tick().await;
        let ended = loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => break Ended::Clean,
                    Some(Err(s)) => break Ended::Cut(Status::aborted(format!(
                        "the append stream broke ({}); what arrived is kept", s.message()
                    ))),
                    Some(Ok(AppendUploadRequest { payload: Some(Payload::Chunk(chunk)) })) => {
                        self.write(&mut appender, &chunk).await?;
                    }
                    Some(Ok(_)) => {
                        return Err(Status::invalid_argument("an append's start may only come first"));
                    }
                },
                _ = renew.tick() => self.checkpoint(&mut appender).await?,
                () = self.media.abort_uploads.cancelled() => {
                    break Ended::Cut(Status::unavailable(
                        "the server is shutting down; what arrived is kept, resume the upload",
                    ));
                }
            }
        };
        if let Some(hasher) = self.hasher.take() {
            // All or nothing: a cut append cannot be checked.
            if let Ended::Cut(status) = ended {
                return Err(status);
            }
            if expected != Some(hasher.finalize().into()) {
                return Err(Status::invalid_argument(CHECKSUM_MISMATCH));
            }
        }
        if appender.position() == self.partial.length {
            return self.finish(appender).await.map(Some);
        }
        self.checkpoint(&mut appender).await?;
        match ended {
            Ended::Clean => Ok(None),
            Ended::Cut(status) => Err(status),
        }
    }

    async fn write(&mut self, appender: &mut Appender, chunk: &bytes::Bytes) -> Result<(), Status> {
        if chunk.len() > MAX_CHUNK {
            return Err(Status::invalid_argument(format!(
                "append chunks must be at most {MAX_CHUNK} bytes"
            )));
        }
        if appender.position() + chunk.len() as u64 > self.partial.length {
            return Err(Status::invalid_argument(format!(
                "more bytes than the upload's {} ({} bytes)",
                crate::names::human_bytes(self.partial.length),
                self.partial.length
            )));
        }
        if let Some(h) = &mut self.hasher {
            h.update(chunk);
        }
        if let Some(tee) = &self.tee {
            tee.push(chunk);
        }
        appender
            .write(chunk)
            .await
            .map_err(|e| store_error("writing an upload", &e))?;
        if self.hasher.is_none() && appender.position() - self.checkpointed >= CHECKPOINT_BYTES {
            self.checkpoint(appender).await?;
        }
        Ok(())
    }

    /// Records what arrived (unless it must be checked first) and renews
    /// the lease; a writer that lost its upload stops here.
    async fn checkpoint(&mut self, appender: &mut Appender) -> Result<(), Status> {
        let r = &self.media.resumable;
        let jobs = &self.media.jobs;
        let id = self.partial.id;
        let held = if self.hasher.is_none() {
            jobs.checkpoint(
                id,
                self.writer,
                appender.durable(),
                r.writer_lease,
                r.expires_in,
            )
            .await
        } else {
            jobs.renew_append(id, self.writer, r.writer_lease).await
        }
        .map_err(|e| jobs_error("recording an upload's progress", &e))?;
        if !held {
            self.remove_if_gone().await;
            return Err(Status::aborted(
                "the upload was cancelled, expired or taken over by another append",
            ));
        }
        if self.hasher.is_none() {
            self.checkpointed = appender.position();
        }
        Ok(())
    }

    /// Removes what this append wrote if its upload is gone (cancelled or
    /// expired while it wrote): those chunks are nobody's. One taken over by
    /// another append is left to it.
    async fn remove_if_gone(&self) {
        let id = self.partial.id;
        if let Ok(None) = self.media.jobs.partial(id, self.owner).await
            && let Err(e) = media_store::resumable::remove(&self.media.store.video_files, id).await
        {
            tracing::warn!(error = %e, job_id = %id, "removing a cancelled upload's bytes failed; the janitor will");
        }
    }

    /// The last byte is stored: the video becomes a file and the job is
    /// queued (its event in the outbox, in the same transaction).
    async fn finish(&mut self, appender: Appender) -> Result<media_store::Job, Status> {
        let p = self.partial;
        appender
            .finish(
                p.length,
                &p.filename,
                doc! { "owner_id": self.owner, "content_type": &p.content_type },
            )
            .await
            .map_err(|e| store_error("finishing an upload", &e))?;
        metrics::counter!("mp3converter_gateway_upload_bytes_total").increment(p.length);
        match self.media.jobs.commit_upload(p.id, p.length).await {
            Ok(Some(job)) => Ok(job),
            Ok(None) => {
                self.remove_if_gone().await;
                Err(Status::not_found("the upload was cancelled or expired"))
            }
            Err(e) => Err(jobs_error("queueing an upload", &e)),
        }
    }
}
