//! `mp3converter.media.v1.MediaService`: uploads into GridFS, jobs,
//! downloads, deletion, live job changes.
//!
//! An upload's storage work runs in a spawned task fed through a channel,
//! not in the handler's own future: a client that cancels drops the handler
//! mid-await, and dropping a GridFS upload half-way would leave its chunks
//! (mongodb README, "cancellation"). The task sees the channel close instead,
//! and cleans up. The other calls are single statements, safe to drop.

use crate::{
    auth::{Bearer, Caller, Validator, failure_status},
    error::{io_store_error, jobs_error, store_error},
    follow::{Follows, TeeWriter},
    quota::Quotas,
    watch::{Hub, Update},
};
use amqp_kit::{Publisher, broadcast::Broadcaster, event_properties};
use futures::{AsyncWriteExt, StreamExt};
use media_store::{
    Deleted, Job, Jobs, NewUpload, Started, Store,
    mongodb::bson::{doc, oid::ObjectId},
};
use mp3converter_proto::{
    EventType,
    events::v1::{JobChanged, UploadStarted},
    media::v1::{
        self as pb, DeleteJobRequest, DeleteJobResponse, DownloadRequest, DownloadResponse,
        GetJobRequest, GetJobResponse, ListJobsRequest, ListJobsResponse, Mp3Metadata,
        UploadRequest, UploadResponse, WatchJobsRequest, WatchJobsResponse, download_response,
        media_service_server::MediaService, upload_request, watch_jobs_response,
    },
};
use std::{pin::Pin, sync::Arc, time::Duration};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Largest chunk in either direction.
pub(crate) const MAX_CHUNK: usize = 1 << 20;

/// How often an upload in progress tells the janitor it is alive.
const UPLOAD_HEARTBEAT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub(crate) struct Media {
    /// The bytes (GridFS).
    pub(crate) store: Store,
    /// The jobs (PostgreSQL).
    pub(crate) jobs: Jobs,
    pub(crate) publisher: Publisher,
    pub(crate) job_events: Broadcaster,
    pub(crate) hub: Hub,
    /// Where uploads are announced as they begin; `None`: not announced.
    pub(crate) live_queue: Option<String>,
    /// Uploads converters can follow as they arrive.
    pub(crate) follows: Follows,
    pub(crate) max_upload: u64,
    pub(crate) quotas: Quotas,
    /// A download whose client reads nothing for this long is dropped.
    pub(crate) download_stall: Duration,
    pub(crate) max_watchers_per_user: usize,
    /// Uploads in progress, so shutdown can abort them cleanly.
    pub(crate) uploads: TaskTracker,
    /// Cancelled when shutdown gives up on the uploads still running.
    pub(crate) abort_uploads: CancellationToken,
    /// Checks the tokens of long streams again.
    pub(crate) validator: Validator,
    /// How often a stream's token is checked again.
    pub(crate) stream_recheck: Duration,
}

/// A long stream's token, checked with auth-svc again every `every` (and its
/// expiry kept), so a logout, a disabled account or an expired token ends the
/// stream as it would end any request.
struct StillSignedIn {
    validator: Validator,
    bearer: Option<Bearer>,
    expires: std::time::SystemTime,
    every: Duration,
}

impl StillSignedIn {
    /// Resolves with the status to end the stream with, once the caller is no
    /// longer signed in.
    async fn lapses(&mut self) -> Status {
        loop {
            let left = self
                .expires
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            if left < self.every {
                tokio::time::sleep(left).await;
                return Status::unauthenticated("the token has expired");
            }
            tokio::time::sleep(self.every).await;
            let Some(bearer) = &self.bearer else {
                return Status::unauthenticated("not authenticated");
            };
            match self.validator.revalidate(bearer.expose()).await {
                Ok(caller) => self.expires = caller.expires,
                Err(failure) => return failure_status(&failure),
            }
        }
    }
}

pub(crate) fn caller<T>(req: &Request<T>) -> Result<Arc<Caller>, Status> {
    // The auth layer always sets it; its absence is a wiring bug, not the
    // client's fault, and must never mean "let it through".
    req.extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("not authenticated"))
}

/// An id as the API gives it: 24 hex digits, nothing around them (the
/// OpenAPI description's pattern).
fn parse_id(field: &str, raw: &str) -> Result<ObjectId, Status> {
    ObjectId::parse_str(raw)
        .map_err(|_| svc_kit::error::invalid_argument(field, "is not a valid id"))
}

/// Longest file name accepted, in bytes (a file system's limit is 255).
pub(crate) const MAX_FILE_NAME: usize = 1024;
/// Longest content type accepted, in bytes.
const MAX_CONTENT_TYPE: usize = 255;

/// An upload's file name and content type are refused, not cut, when they are
/// longer than any real one: they go into the job and every message about it.
pub(crate) fn check_names(filename: &str, content_type: &str) -> Result<(), Status> {
    if filename.len() > MAX_FILE_NAME {
        return Err(svc_kit::error::invalid_argument(
            "filename",
            format!("is longer than {MAX_FILE_NAME} bytes"),
        ));
    }
    if content_type.len() > MAX_CONTENT_TYPE {
        return Err(svc_kit::error::invalid_argument(
            "content_type",
            format!("is longer than {MAX_CONTENT_TYPE} bytes"),
        ));
    }
    Ok(())
}

/// A display name: no paths, no control or bidirectional-override
/// characters, at most 200 characters. It is shown in emails and pages and
/// used for the MP3's name, always as data (escaped, quoted), never as code.
pub(crate) fn clean_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && !is_bidi_control(*c))
        .take(200)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "upload".to_owned()
    } else {
        cleaned
    }
}

/// Characters that reorder how text is displayed (U+202E, RIGHT-TO-LEFT
/// OVERRIDE, makes `clip<U+202E>4pm.exe` look like `clipexe.mp4`).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn too_big_chunk() -> Status {
    Status::invalid_argument(format!("upload chunks must be at most {MAX_CHUNK} bytes"))
}

fn too_large(limit: u64) -> Status {
    Status::resource_exhausted(format!(
        "the file is larger than the limit of {} ({limit} bytes)",
        human_bytes(limit)
    ))
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl Media {
    /// What keeps a stream's caller signed in while it lasts.
    fn stream_auth<T>(&self, req: &Request<T>, caller: &Caller) -> StillSignedIn {
        StillSignedIn {
            validator: self.validator.clone(),
            bearer: req.extensions().get::<Bearer>().cloned(),
            expires: caller.expires,
            every: self.stream_recheck,
        }
    }

    /// Tells live watchers, on every replica, about a job.
    pub(crate) fn notify(&self, job: &Job, deleted: bool) {
        let change = media_store::proto::job_changed(job, deleted);
        self.job_events
            .send(JobChanged::TYPE, prost::Message::encode_to_vec(&change));
    }

    /// Reads the client's messages from `rx` into a GridFS upload, then
    /// records the job and publishes its event. Anything short of a complete,
    /// committed, queued upload leaves nothing behind.
    async fn store_upload(
        self,
        caller: Arc<Caller>,
        mut rx: mpsc::Receiver<Result<UploadRequest, Status>>,
    ) -> Result<pb::Job, Status> {
        let _busy = svc_kit::observe::InFlight::new(metrics::gauge!(
            "mp3converter_gateway_uploads_in_progress"
        ));
        let meta = match rx.recv().await {
            Some(Ok(UploadRequest {
                payload: Some(upload_request::Payload::Metadata(m)),
            })) => m,
            Some(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of an upload must be its metadata",
                ));
            }
            Some(Err(s)) => {
                return Err(Status::aborted(format!(
                    "upload stream failed: {}",
                    s.message()
                )));
            }
            None => return Err(Status::aborted("the upload ended before its metadata")),
        };
        check_names(&meta.filename, &meta.content_type)?;
        let options = media_store::proto::parse_options(meta.options.as_ref())
            .map_err(|e| svc_kit::error::invalid_argument(e.field, e.why))?;
        if let Some(declared) = meta.declared_size_bytes
            && declared > self.max_upload
        {
            return Err(too_large(self.max_upload));
        }
        let filename = clean_filename(&meta.filename);
        let content_type = if meta.content_type.trim().is_empty() {
            "application/octet-stream".to_owned()
        } else {
            meta.content_type
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect()
        };

        // The job first, under the owner's quotas (so concurrent uploads
        // count), then the bytes: an upload over quota stores nothing.
        let id = ObjectId::new();
        let new = NewUpload {
            id,
            owner_id: caller.user_id.clone(),
            owner_email: caller.email.clone(),
            filename,
            content_type,
            options,
        };
        let Started { job, room } = self
            .jobs
            .start_upload(&new, self.quotas.limits)
            .await
            .map_err(|e| jobs_error("recording an upload", &e))?
            .map_err(|over| self.quotas.refused(over))?;
        if meta.declared_size_bytes.is_some_and(|d| d > room) {
            self.discard(id).await;
            return Err(self.quotas.stored_exceeded());
        }
        let tee = self.follows.start(&id.to_hex());
        self.announce_start(&job);

        let span = tracing::info_span!(
            "gridfs.write",
            otel.name = "gridfs.write videos",
            otel.status_code = tracing::field::Empty,
            db.system.name = "mongodb",
            db.collection.name = "videos.chunks",
            video_id = %id,
            bytes = tracing::field::Empty,
        );
        let limit = self.max_upload.min(room);
        let total = match self
            .write_video(&new, limit, &tee, &mut rx)
            .instrument(span.clone())
            .await
        {
            Ok(total) => {
                span.record("bytes", total);
                total
            }
            Err(status) => {
                span.record("otel.status_code", "ERROR");
                self.discard(id).await;
                return Err(status);
            }
        };
        drop(span);
        metrics::counter!("mp3converter_gateway_upload_bytes_total").increment(total);

        // Queued (its VideoUploaded in the outbox, in the same transaction):
        // from here the upload is accepted and ends in one outcome.
        let job = match self.jobs.commit_upload(id, total).await {
            Ok(Some(job)) => {
                // Accepted: a converter following it may finish it now.
                tee.complete(total);
                job
            }
            Ok(None) => {
                self.discard(id).await;
                return Err(Status::aborted("the upload was abandoned; retry"));
            }
            Err(e) => {
                self.discard(id).await;
                return Err(jobs_error("recording a job", &e));
            }
        };
        self.notify(&job, false);
        tracing::info!(job_id = %id, bytes = total, "video uploaded and queued");
        Ok(media_store::proto::job(&job))
    }

    /// Streams the chunks into a new GridFS file `id`; anything short of a
    /// committed upload aborts it, so no chunk is left behind.
    async fn write_video(
        &self,
        new: &NewUpload,
        limit: u64,
        tee: &TeeWriter,
        rx: &mut mpsc::Receiver<Result<UploadRequest, Status>>,
    ) -> Result<u64, Status> {
        let mut upload = self
            .store
            .videos
            .open_upload_stream(&new.filename)
            .id(new.id.into())
            .metadata(doc! { "owner_id": &new.owner_id, "content_type": &new.content_type })
            .await
            .map_err(|e| store_error("opening a GridFS upload", &e))?;
        let id = new.id;
        let mut scanner = media_store::mp4::Scanner::default();
        let received = tokio::select! {
            r = self.receive_chunks(id, limit, rx, &mut upload, &mut scanner, tee) => r,
            () = self.abort_uploads.cancelled() => {
                Err(Status::unavailable("the server is shutting down; retry the upload"))
            }
        };
        let total = match received {
            Ok(total) => total,
            Err(status) => {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(error = %e, video_id = %id, "aborting a GridFS upload failed; the janitor will remove its chunks");
                }
                tracing::info!(video_id = %id, code = ?status.code(), message = status.message(), "upload rejected");
                return Err(status);
            }
        };
        if let Err(e) = upload.close().await {
            // The files document may not be there: remove the chunks
            // ourselves (abort() refuses a closed stream).
            let _ = media_store::gridfs::delete_file(&self.store.video_files, &id.into()).await;
            return Err(io_store_error("finishing a GridFS upload", &e));
        }
        // An MP4 whose index came last: keep the index beside the video, so
        // the converter need not read it back from the end of the file.
        if let Some(index) = scanner.finish()
            && let Err(e) =
                media_store::gridfs::keep_mp4_index(&self.store.video_files, id, &index).await
        {
            tracing::warn!(error = %e, video_id = %id, "keeping the MP4 index failed; the converter will read it");
        }
        Ok(total)
    }

    async fn receive_chunks(
        &self,
        id: ObjectId,
        limit: u64,
        rx: &mut mpsc::Receiver<Result<UploadRequest, Status>>,
        upload: &mut media_store::mongodb::gridfs::GridFsUploadStream,
        scanner: &mut media_store::mp4::Scanner,
        tee: &TeeWriter,
    ) -> Result<u64, Status> {
        use upload_request::Payload;
        let mut total: u64 = 0;
        let mut heartbeat = tokio::time::Instant::now();
        loop {
            let msg = match rx.recv().await {
                None => {
                    return Err(Status::aborted(
                        "the upload ended without a commit message; it was truncated and discarded",
                    ));
                }
                Some(Err(s)) if s.code() == tonic::Code::OutOfRange => {
                    // tonic refused a message over the decoding limit.
                    return Err(too_big_chunk());
                }
                Some(Err(s)) => {
                    // A stream that went silent keeps its code (the client
                    // stalled); anything else broke the stream.
                    let code = match s.code() {
                        tonic::Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
                        _ => tonic::Code::Aborted,
                    };
                    return Err(Status::new(
                        code,
                        format!("the upload stream failed ({}); discarded", s.message()),
                    ));
                }
                Some(Ok(m)) => m,
            };
            match msg.payload {
                Some(Payload::Chunk(chunk)) => {
                    if chunk.len() > MAX_CHUNK {
                        return Err(too_big_chunk());
                    }
                    total += chunk.len() as u64;
                    if total > self.max_upload {
                        return Err(too_large(self.max_upload));
                    }
                    if total > limit {
                        return Err(self.quotas.stored_exceeded());
                    }
                    scanner.feed(&chunk);
                    tee.push(&chunk);
                    upload
                        .write_all(&chunk)
                        .await
                        .map_err(|e| io_store_error("writing to GridFS", &e))?;
                    if heartbeat.elapsed() > UPLOAD_HEARTBEAT {
                        heartbeat = tokio::time::Instant::now();
                        if let Err(e) = self.jobs.touch_upload(id).await {
                            tracing::warn!(error = %e, job_id = %id, "upload heartbeat failed");
                        }
                    }
                }
                Some(Payload::Commit(commit)) => {
                    if commit.total_bytes != total {
                        return Err(Status::aborted(format!(
                            "the commit says {} bytes but {total} arrived; discarded",
                            commit.total_bytes
                        )));
                    }
                    if total == 0 {
                        return Err(Status::invalid_argument("the file is empty"));
                    }
                    // Nothing may follow the commit.
                    return match rx.recv().await {
                        None => Ok(total),
                        Some(Err(s)) => Err(Status::aborted(format!(
                            "the upload stream failed after the commit ({})",
                            s.message()
                        ))),
                        Some(Ok(_)) => {
                            Err(Status::invalid_argument("no message may follow the commit"))
                        }
                    };
                }
                Some(Payload::Metadata(_)) => {
                    return Err(Status::invalid_argument("metadata may only be sent first"));
                }
                None => return Err(Status::invalid_argument("an upload message was empty")),
            }
        }
    }

    /// Removes an upload that will not become a job (its video, if any, and
    /// its record); the janitor catches what this cannot.
    async fn discard(&self, id: ObjectId) {
        if let Err(e) = media_store::gridfs::delete_file(&self.store.video_files, &id.into()).await
        {
            tracing::warn!(error = %e, video_id = %id, "deleting a discarded video failed; the janitor will");
        }
        if let Err(e) = self.jobs.discard_upload(id).await {
            tracing::warn!(error = %e, job_id = %id, "deleting a discarded upload's job failed; the janitor will");
        }
    }

    /// Tells converters an upload has begun, so one can convert it as it
    /// arrives. A hint, off the upload's path: if it is lost, the video is
    /// converted after its upload, as it would be anyway.
    fn announce_start(&self, job: &Job) {
        let Some(queue) = self.live_queue.clone() else {
            return;
        };
        let event = media_store::proto::upload_started(job.id, self.follows.url());
        let publisher = self.publisher.clone();
        let job_id = job.id;
        tokio::spawn(
            async move {
                let payload = prost::Message::encode_to_vec(&event);
                let props = event_properties(UploadStarted::TYPE, &event.event_id, Default::default())
                    .with_delivery_mode(1); // a hint need not survive a broker restart
                if let Err(e) = publisher.publish(&queue, &payload, props).await {
                    tracing::debug!(error = %e, %job_id, "announcing an upload failed; it is converted after its upload");
                }
            }
            .in_current_span(),
        );
    }
}

type DownloadStream = Pin<Box<dyn futures::Stream<Item = Result<DownloadResponse, Status>> + Send>>;
type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<WatchJobsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MediaService for Media {
    async fn upload(
        &self,
        req: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let caller = caller(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let worker = self
            .uploads
            .spawn(self.clone().store_upload(caller, rx).in_current_span());
        while let Some(msg) = inbound.next().await {
            let failed = msg.is_err();
            if tx.send(msg).await.is_err() || failed {
                break; // the worker has finished (with an error) or the stream broke
            }
        }
        drop(tx);
        let job = worker
            .await
            .map_err(|_| Status::internal("internal error"))??;
        Ok(Response::new(UploadResponse { job: Some(job) }))
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        req: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let caller = caller(&req)?;
        let id = parse_id("mp3_id", &req.get_ref().mp3_id)?;
        // Someone else's MP3 is NOT_FOUND, exactly like a missing one, so ids
        // cannot be probed.
        let file = self
            .store
            .mp3s
            .find_one(doc! { "_id": id, "metadata.owner_id": &caller.user_id })
            .await
            .map_err(|e| store_error("finding an MP3", &e))?
            .ok_or_else(|| Status::not_found("no such MP3"))?;
        let meta = Mp3Metadata {
            mp3_id: id.to_hex(),
            filename: file
                .filename
                .clone()
                .unwrap_or_else(|| format!("{}.mp3", id.to_hex())),
            content_type: "audio/mpeg".into(),
            size_bytes: file.length,
        };
        // One cursor, 4 GridFS chunks (~1 MiB) per message and one message
        // queued: a stalled client holds little, and not for long. A second
        // slot is kept for the status that ends a stalled download, so the
        // client learns it was cut off rather than seeing OK after a short
        // file (the slot is free however full the first one is).
        let mut reader = self.store.mp3_files.stream((&file).into(), 0, 4);
        let (tx, rx) = mpsc::channel::<Result<DownloadResponse, Status>>(2);
        let last_word = tx
            .clone()
            .reserve_owned()
            .await
            .map_err(|_| Status::internal("internal error"))?;
        let stall = self.download_stall;
        let span = tracing::info_span!(
            "gridfs.read",
            otel.name = "gridfs.read mp3s",
            db.system.name = "mongodb",
            db.collection.name = "mp3s",
            mp3_id = %id,
        );
        tokio::spawn(
            async move {
                let msg = |p| DownloadResponse { payload: Some(p) };
                let send = |m| async {
                    matches!(tokio::time::timeout(stall, tx.send(m)).await, Ok(Ok(())))
                };
                if !send(Ok(msg(download_response::Payload::Metadata(meta)))).await {
                    return;
                }
                let mut sent: u64 = 0;
                loop {
                    let block = match reader.next_block(MAX_CHUNK).await {
                        Ok(Some(b)) => b,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, mp3_id = %id, "reading an MP3 failed");
                            let _ = send(Err(Status::unavailable(
                                "storage is unavailable; retry later",
                            )))
                            .await;
                            return;
                        }
                    };
                    sent += block.len() as u64;
                    if !send(Ok(msg(download_response::Payload::Chunk(block)))).await {
                        // The client went away or stopped reading.
                        metrics::counter!("mp3converter_gateway_downloads_dropped_total")
                            .increment(1);
                        last_word.send(Err(Status::deadline_exceeded(format!(
                            "the download was cut off: nothing was read for {stall:?}; download it again"
                        ))));
                        return;
                    }
                }
                metrics::counter!("mp3converter_gateway_download_bytes_total").increment(sent);
            }
            .instrument(span),
        );
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as DownloadStream
        ))
    }

    async fn get_job(
        &self,
        req: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        let caller = caller(&req)?;
        let id = parse_id("job_id", &req.get_ref().job_id)?;
        let job = self
            .jobs
            .get_visible(id, &caller.user_id)
            .await
            .map_err(|e| jobs_error("finding a job", &e))?
            .ok_or_else(|| Status::not_found("no such job"))?;
        Ok(Response::new(GetJobResponse {
            job: Some(media_store::proto::job(&job)),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.get_ref();
        let size = match r.page_size {
            0 => 20,
            n => n.min(100),
        };
        let before = if r.page_token.is_empty() {
            None
        } else {
            Some(parse_id("page_token", &r.page_token)?)
        };
        let mut jobs = self
            .jobs
            .list_visible(&caller.user_id, before, i64::from(size) + 1)
            .await
            .map_err(|e| jobs_error("listing jobs", &e))?;
        let more = jobs.len() > size as usize;
        jobs.truncate(size as usize);
        let next_page_token = match (more, jobs.last()) {
            (true, Some(last)) => last.id.to_hex(),
            _ => String::new(),
        };
        Ok(Response::new(ListJobsResponse {
            jobs: jobs.iter().map(media_store::proto::job).collect(),
            next_page_token,
        }))
    }

    async fn delete_job(
        &self,
        req: Request<DeleteJobRequest>,
    ) -> Result<Response<DeleteJobResponse>, Status> {
        let caller = caller(&req)?;
        let id = parse_id("job_id", &req.get_ref().job_id)?;
        let job = match self
            .jobs
            .delete(id, &caller.user_id)
            .await
            .map_err(|e| jobs_error("deleting a job", &e))?
        {
            Deleted::Now(job) => {
                self.notify(&job, true);
                tracing::info!(job_id = %id, state = job.state.as_str(), "job deleted by its owner");
                *job
            }
            // Again (a retry after an error): make sure its files are gone.
            Deleted::Already => match self.jobs.get(id).await {
                Ok(Some(job)) => job,
                _ => return Ok(Response::new(DeleteJobResponse {})),
            },
            Deleted::NotFound => return Err(Status::not_found("no such job")),
        };
        self.store
            .delete_media(&job)
            .await
            .map_err(|e| store_error("deleting a job's files", &e))?;
        Ok(Response::new(DeleteJobResponse {}))
    }

    type WatchJobsStream = WatchStream;

    async fn watch_jobs(
        &self,
        req: Request<WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let caller = caller(&req)?;
        let only = match req.get_ref().job_id.trim() {
            "" => None,
            raw => Some(parse_id("job_id", raw)?),
        };
        // Subscribe before reading the current state, so nothing that
        // happens in between is missed.
        let mut sub = self
            .hub
            .subscribe(&caller.user_id, self.max_watchers_per_user)
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "at most {} watchers per user at once",
                    self.max_watchers_per_user
                ))
            })?;
        let current = match only {
            Some(id) => self
                .jobs
                .get_visible(id, &caller.user_id)
                .await
                .map_err(|e| jobs_error("finding a job", &e))?
                .map(|j| vec![j])
                .ok_or_else(|| Status::not_found("no such job"))?,
            None => self
                .jobs
                .list_visible(&caller.user_id, None, 100)
                .await
                .map_err(|e| jobs_error("listing jobs", &e))?,
        };
        let (tx, rx) = mpsc::channel::<Result<WatchJobsResponse, Status>>(16);
        let only_hex = only.map(|i| i.to_hex());
        let mut still = self.stream_auth(&req, &caller);
        tokio::spawn(async move {
            use watch_jobs_response::Event;
            let send = |e| tx.send(Ok(WatchJobsResponse { event: Some(e) }));
            // Oldest first, so a client applying them in order ends with the
            // newest on top.
            for job in current.iter().rev() {
                if send(Event::Job(media_store::proto::job(job)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                let update = tokio::select! {
                    // The watcher went away: free its slot now, not at the
                    // next change.
                    () = tx.closed() => return,
                    ended = still.lapses() => {
                        let _ = tx.try_send(Err(ended));
                        return;
                    }
                    u = sub.rx.recv() => u,
                };
                let ev = match update {
                    Ok(Update::Changed(c)) => {
                        let Some(job) = c.job.clone() else { continue };
                        if only_hex.as_ref().is_some_and(|id| *id != job.job_id) {
                            continue;
                        }
                        if c.deleted {
                            Event::DeletedJobId(job.job_id)
                        } else {
                            Event::Job(job)
                        }
                    }
                    Ok(Update::Resync) | Err(RecvError::Lagged(_)) => {
                        metrics::counter!("mp3converter_gateway_watch_resyncs_total").increment(1);
                        Event::Resync(pb::Resync {})
                    }
                    Err(RecvError::Closed) => return,
                };
                if send(ev).await.is_err() {
                    return; // the watcher went away
                }
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as WatchStream
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\videos\\clip.mkv"), "clip.mkv");
        assert_eq!(clean_filename("a\u{0}b\"c.mp4"), "abc.mp4");
        assert_eq!(clean_filename("line\nbreak\r.mp4"), "linebreak.mp4");
        assert_eq!(clean_filename("clip\u{202E}4pm.exe"), "clip4pm.exe");
        assert_eq!(clean_filename(""), "upload");
        assert_eq!(clean_filename(".hidden"), "hidden");
        assert_eq!(clean_filename(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(2 << 30), "2 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }
}
