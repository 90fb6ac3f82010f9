//! `mp3converter.media.v1.MediaService`: uploads into GridFS ([`upload`]),
//! jobs, downloads, deletion, live job changes.

use crate::{
    auth::{Bearer, Caller, Validator, failure_status},
    error::{jobs_error, store_error},
    follow::Follows,
    quota::Quotas,
    watch::{Hub, Update},
};
use amqp_kit::{Publisher, broadcast::Broadcaster};
use futures::StreamExt;
use media_store::{
    Deleted, Job, Jobs, Store,
    mongodb::bson::{doc, oid::ObjectId},
};
use mp3converter_proto::{
    EventType,
    events::v1::JobChanged,
    media::v1::{
        self as pb, AppendUploadRequest, AppendUploadResponse, CancelUploadRequest,
        CancelUploadResponse, CreateUploadRequest, CreateUploadResponse, DeleteJobRequest,
        DeleteJobResponse, DownloadRequest, DownloadResponse, GetJobRequest, GetJobResponse,
        GetUploadRequest, GetUploadResponse, ListJobsRequest, ListJobsResponse, Mp3Metadata,
        UploadRequest, UploadResponse, WatchJobsRequest, WatchJobsResponse, download_response,
        media_service_server::MediaService, watch_jobs_response,
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

mod resumable;
mod upload;

pub(crate) use resumable::{CHECKSUM_MISMATCH, Parked, Resumable};

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
    /// How resumable uploads are kept.
    pub(crate) resumable: Resumable,
    /// Their follow windows between appends.
    pub(crate) parked: Parked,
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
}

/// Hands a client stream's messages to the worker storing them, up to the
/// first error (which the worker sees too).
async fn forward_stream<T>(mut inbound: Streaming<T>, tx: mpsc::Sender<Result<T, Status>>) {
    while let Some(msg) = inbound.next().await {
        let failed = msg.is_err();
        if tx.send(msg).await.is_err() || failed {
            break; // the worker has finished (with an error) or the stream broke
        }
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
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let worker = self
            .uploads
            .spawn(self.clone().store_upload(caller, rx).in_current_span());
        forward_stream(inbound, tx).await;
        let job = worker
            .await
            .map_err(|_| Status::internal("internal error"))??;
        Ok(Response::new(UploadResponse { job: Some(job) }))
    }

    async fn create_upload(
        &self,
        req: Request<CreateUploadRequest>,
    ) -> Result<Response<CreateUploadResponse>, Status> {
        let caller = caller(&req)?;
        let upload = self.create_resumable(&caller, req.into_inner()).await?;
        Ok(Response::new(CreateUploadResponse {
            upload: Some(upload),
        }))
    }

    async fn get_upload(
        &self,
        req: Request<GetUploadRequest>,
    ) -> Result<Response<GetUploadResponse>, Status> {
        let caller = caller(&req)?;
        let id = parse_id("job_id", &req.get_ref().job_id)?;
        let upload = self.get_resumable(&caller, id).await?;
        Ok(Response::new(GetUploadResponse {
            upload: Some(upload),
        }))
    }

    async fn append_upload(
        &self,
        req: Request<Streaming<AppendUploadRequest>>,
    ) -> Result<Response<AppendUploadResponse>, Status> {
        let caller = caller(&req)?;
        let inbound = req.into_inner();
        // As Upload: the storage work is not in this future, which a client
        // that goes away drops mid-await.
        let (tx, rx) = mpsc::channel(4);
        let worker = self
            .uploads
            .spawn(self.clone().append(caller, rx).in_current_span());
        forward_stream(inbound, tx).await;
        let upload = worker
            .await
            .map_err(|_| Status::internal("internal error"))??;
        Ok(Response::new(AppendUploadResponse {
            upload: Some(upload),
        }))
    }

    async fn cancel_upload(
        &self,
        req: Request<CancelUploadRequest>,
    ) -> Result<Response<CancelUploadResponse>, Status> {
        let caller = caller(&req)?;
        let id = parse_id("job_id", &req.get_ref().job_id)?;
        self.cancel_resumable(&caller, id).await?;
        Ok(Response::new(CancelUploadResponse {}))
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
            db.collection.name = "mp3s.chunks",
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
