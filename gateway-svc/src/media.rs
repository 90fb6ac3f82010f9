//! `mp3converter.media.v1.MediaService`: uploads into GridFS, jobs, downloads.
//!
//! Driver work runs in spawned tasks fed through channels, never in the
//! handler's own future: a client that cancels drops the handler mid-await,
//! and dropping a driver future half-way can leave its state inconsistent
//! (mongodb README, "cancellation"). The task sees the channel close instead,
//! and cleans up.

use crate::{
    auth::Caller,
    error::{io_store_error, store_error},
};
use amqp_kit::{Publisher, event_properties};
use futures::{AsyncWriteExt, StreamExt, TryStreamExt};
use media_store::{
    Job, JobState, Store,
    mongodb::bson::{DateTime, doc, oid::ObjectId},
};
use mp3converter_proto::{
    EventType,
    events::v1::VideoUploaded,
    media::v1::{
        self as pb, DownloadRequest, DownloadResponse, GetJobRequest, GetJobResponse,
        ListJobsRequest, ListJobsResponse, Mp3Metadata, UploadRequest, UploadResponse,
        download_response, media_service_server::MediaService, upload_request,
    },
};
use std::{pin::Pin, sync::Arc};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Largest chunk in either direction.
pub(crate) const MAX_CHUNK: usize = 1 << 20;

#[derive(Clone, Debug)]
pub(crate) struct Media {
    pub(crate) store: Store,
    pub(crate) publisher: Publisher,
    pub(crate) video_queue: String,
    pub(crate) max_upload: u64,
}

fn caller<T>(req: &Request<T>) -> Result<Arc<Caller>, Status> {
    // The auth layer always sets it; its absence is a wiring bug, not the
    // client's fault, and must never mean "let it through".
    req.extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("not authenticated"))
}

fn parse_id(field: &str, raw: &str) -> Result<ObjectId, Status> {
    ObjectId::parse_str(raw.trim())
        .map_err(|_| svc_kit::error::invalid_argument(field, "is not a valid id"))
}

/// A display name without paths or control characters.
fn clean_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(200)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "upload".to_owned()
    } else {
        cleaned
    }
}

pub(crate) fn job_to_proto(job: &Job) -> pb::Job {
    let ts = |t: DateTime| prost_types::Timestamp::from(t.to_system_time());
    pb::Job {
        job_id: job.id.to_hex(),
        video_id: job.id.to_hex(),
        filename: job.filename.clone(),
        size_bytes: u64::try_from(job.size_bytes).unwrap_or_default(),
        state: match job.state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Converting => pb::JobState::Converting,
            JobState::Done => pb::JobState::Done,
            JobState::Failed => pb::JobState::Failed,
        } as i32,
        mp3_id: job.mp3_id.map(|id| id.to_hex()).unwrap_or_default(),
        failure_reason: job.failure_reason.clone().unwrap_or_default(),
        create_time: Some(ts(job.created_at)),
        update_time: Some(ts(job.updated_at)),
    }
}

impl Media {
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
        if let Some(declared) = meta.declared_size_bytes
            && declared > self.max_upload
        {
            return Err(too_large(self.max_upload));
        }
        let filename = clean_filename(&meta.filename);
        let content_type = if meta.content_type.trim().is_empty() {
            "application/octet-stream".to_owned()
        } else {
            meta.content_type.chars().take(100).collect()
        };

        let id = ObjectId::new();
        let span = tracing::info_span!(
            "gridfs.write",
            otel.name = "gridfs.write videos",
            otel.status_code = tracing::field::Empty,
            db.system.name = "mongodb",
            db.collection.name = "videos",
            video_id = %id,
            bytes = tracing::field::Empty,
        );
        let total = match self
            .write_video(&caller, id, &filename, &content_type, &mut rx)
            .instrument(span.clone())
            .await
        {
            Ok(total) => {
                span.record("bytes", total);
                total
            }
            Err(status) => {
                span.record("otel.status_code", "ERROR");
                return Err(status);
            }
        };
        drop(span);
        metrics::counter!("mp3converter_gateway_upload_bytes_total").increment(total);

        let now = DateTime::now();
        let job = Job {
            id,
            owner_id: caller.user_id.clone(),
            owner_email: caller.email.clone(),
            filename,
            content_type,
            size_bytes: i64::try_from(total).unwrap_or(i64::MAX),
            state: JobState::Queued,
            mp3_id: None,
            failure_reason: None,
            created_at: now,
            updated_at: now,
            published: false,
        };
        if let Err(e) = self.store.jobs.insert_one(&job).await {
            self.delete_video(id).await;
            return Err(store_error("recording a job", &e));
        }
        if let Err(status) = self.publish(&job).await {
            // Not queued means not accepted: remove what was stored so the
            // user can simply retry.
            if let Err(e) = self.store.jobs.delete_one(doc! { "_id": id }).await {
                tracing::error!(error = %e, job_id = %id, "deleting an unpublished job failed");
            }
            self.delete_video(id).await;
            return Err(status);
        }
        if let Err(e) = self
            .store
            .jobs
            .update_one(doc! { "_id": id }, doc! { "$set": { "published": true } })
            .await
        {
            tracing::warn!(error = %e, job_id = %id, "marking a job published failed");
        }
        tracing::info!(job_id = %id, bytes = total, "video uploaded and queued");
        Ok(job_to_proto(&Job {
            published: true,
            ..job
        }))
    }

    /// Streams the chunks into a new GridFS file `id`; anything short of a
    /// committed upload aborts it, so no chunk is left behind.
    async fn write_video(
        &self,
        caller: &Caller,
        id: ObjectId,
        filename: &str,
        content_type: &str,
        rx: &mut mpsc::Receiver<Result<UploadRequest, Status>>,
    ) -> Result<u64, Status> {
        let mut upload = self
            .store
            .videos
            .open_upload_stream(filename)
            .id(id.into())
            .metadata(doc! { "owner_id": &caller.user_id, "content_type": content_type })
            .await
            .map_err(|e| store_error("opening a GridFS upload", &e))?;
        let total = match self.receive_chunks(rx, &mut upload).await {
            Ok(total) => total,
            Err(status) => {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(error = %e, video_id = %id, "aborting a GridFS upload failed");
                }
                tracing::info!(video_id = %id, code = ?status.code(), message = status.message(), "upload rejected");
                return Err(status);
            }
        };
        upload
            .close()
            .await
            .map_err(|e| io_store_error("finishing a GridFS upload", &e))?;
        Ok(total)
    }

    async fn receive_chunks(
        &self,
        rx: &mut mpsc::Receiver<Result<UploadRequest, Status>>,
        upload: &mut media_store::mongodb::gridfs::GridFsUploadStream,
    ) -> Result<u64, Status> {
        use upload_request::Payload;
        let mut total: u64 = 0;
        loop {
            let msg = match rx.recv().await {
                None => {
                    return Err(Status::aborted(
                        "the upload ended without a commit message; it was truncated and discarded",
                    ));
                }
                Some(Err(s)) => {
                    return Err(Status::aborted(format!(
                        "the upload stream failed ({}); discarded",
                        s.message()
                    )));
                }
                Some(Ok(m)) => m,
            };
            match msg.payload {
                Some(Payload::Chunk(chunk)) => {
                    if chunk.len() > MAX_CHUNK {
                        return Err(Status::invalid_argument(format!(
                            "chunks must be at most {MAX_CHUNK} bytes, got {}",
                            chunk.len()
                        )));
                    }
                    total += chunk.len() as u64;
                    if total > self.max_upload {
                        return Err(too_large(self.max_upload));
                    }
                    upload
                        .write_all(&chunk)
                        .await
                        .map_err(|e| io_store_error("writing to GridFS", &e))?;
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

    async fn publish(&self, job: &Job) -> Result<(), Status> {
        let event = VideoUploaded {
            event_id: uuid::Uuid::new_v4().to_string(),
            job_id: job.id.to_hex(),
            video_id: job.id.to_hex(),
            owner_id: job.owner_id.clone(),
            owner_email: job.owner_email.clone(),
            filename: job.filename.clone(),
            content_type: job.content_type.clone(),
            size_bytes: u64::try_from(job.size_bytes).unwrap_or_default(),
            occur_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        };
        let payload = prost::Message::encode_to_vec(&event);
        let props = event_properties(VideoUploaded::TYPE, &event.event_id, Default::default());
        self.publisher
            .publish(&self.video_queue, &payload, props)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, job_id = %job.id, "publishing VideoUploaded failed");
                metrics::counter!("mp3converter_gateway_publish_failures_total").increment(1);
                Status::unavailable("the job queue is unavailable; nothing was stored, retry later")
            })
    }

    /// Publishes the events of jobs that were recorded but never confirmed
    /// (the gateway died between the insert and the publish), so no upload is
    /// silently dropped. A duplicate is harmless: the converter is idempotent.
    pub(crate) async fn republish_unconfirmed(
        &self,
        older_than: std::time::Duration,
    ) -> Result<usize, Status> {
        let cutoff = DateTime::from_system_time(std::time::SystemTime::now() - older_than);
        let stale: Vec<Job> = self
            .store
            .jobs
            .find(doc! { "published": false, "state": "queued", "created_at": { "$lte": cutoff } })
            .limit(100)
            .await
            .map_err(|e| store_error("finding unconfirmed jobs", &e))?
            .try_collect()
            .await
            .map_err(|e| store_error("finding unconfirmed jobs", &e))?;
        let mut done = 0;
        for job in stale {
            self.publish(&job).await?;
            self.store
                .jobs
                .update_one(
                    doc! { "_id": job.id },
                    doc! { "$set": { "published": true } },
                )
                .await
                .map_err(|e| store_error("marking a job published", &e))?;
            tracing::warn!(job_id = %job.id, "re-published the event of an unconfirmed job");
            done += 1;
        }
        Ok(done)
    }

    async fn delete_video(&self, id: ObjectId) {
        if let Err(e) = self.store.videos.delete(id.into()).await {
            tracing::error!(error = %e, video_id = %id, "deleting a video failed; it is orphaned");
        }
    }
}

fn too_large(limit: u64) -> Status {
    Status::resource_exhausted(format!(
        "the file is larger than the limit of {limit} bytes"
    ))
}

type DownloadStream = Pin<Box<dyn futures::Stream<Item = Result<DownloadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MediaService for Media {
    async fn upload(
        &self,
        req: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let caller = caller(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let worker = tokio::spawn(self.clone().store_upload(caller, rx).in_current_span());
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
        // At most 4 GridFS chunks (4 × 255 KiB) per message: under 1 MiB.
        let mut reader = self.store.mp3_reader(&file);
        let (tx, rx) = mpsc::channel::<Result<DownloadResponse, Status>>(4);
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
                if tx
                    .send(Ok(msg(download_response::Payload::Metadata(meta))))
                    .await
                    .is_err()
                {
                    return;
                }
                let mut sent: u64 = 0;
                loop {
                    let block = match reader.next_block().await {
                        Ok(Some(b)) => b,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, mp3_id = %id, "reading an MP3 failed");
                            let _ = tx
                                .send(Err(Status::unavailable(
                                    "storage is unavailable; retry later",
                                )))
                                .await;
                            return;
                        }
                    };
                    sent += block.len() as u64;
                    if tx
                        .send(Ok(msg(download_response::Payload::Chunk(block))))
                        .await
                        .is_err()
                    {
                        return; // the client went away
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
            .store
            .jobs
            .find_one(doc! { "_id": id, "owner_id": &caller.user_id })
            .await
            .map_err(|e| store_error("finding a job", &e))?
            .ok_or_else(|| Status::not_found("no such job"))?;
        Ok(Response::new(GetJobResponse {
            job: Some(job_to_proto(&job)),
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
        let mut filter = doc! { "owner_id": &caller.user_id };
        if !r.page_token.is_empty() {
            let after = parse_id("page_token", &r.page_token)?;
            filter.insert("_id", doc! { "$lt": after });
        }
        let mut jobs: Vec<Job> = self
            .store
            .jobs
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(i64::from(size) + 1)
            .await
            .map_err(|e| store_error("listing jobs", &e))?
            .try_collect()
            .await
            .map_err(|e| store_error("listing jobs", &e))?;
        let more = jobs.len() > size as usize;
        jobs.truncate(size as usize);
        let next_page_token = match (more, jobs.last()) {
            (true, Some(last)) => last.id.to_hex(),
            _ => String::new(),
        };
        Ok(Response::new(ListJobsResponse {
            jobs: jobs.iter().map(job_to_proto).collect(),
            next_page_token,
        }))
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
        assert_eq!(clean_filename(""), "upload");
        assert_eq!(clean_filename(".hidden"), "hidden");
        assert_eq!(clean_filename(&"x".repeat(500)).len(), 200);
    }
}
