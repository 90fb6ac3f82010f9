//! The upload pipeline: a client's stream of messages into a GridFS file,
//! the job recorded and its event in the outbox, or nothing left behind.
//!
//! The storage work runs in a spawned task fed through a channel, not in the
//! handler's own future: a client that cancels drops the handler mid-await,
//! and dropping a GridFS upload half-way would leave its chunks (mongodb
//! README, "cancellation"). The task sees the channel close instead, and
//! cleans up.

use super::{MAX_CHUNK, Media};
use crate::{
    auth::Caller,
    error::{io_store_error, jobs_error, store_error},
    follow::TeeWriter,
    names::{check_names, clean_filename, human_bytes},
};
use amqp_kit::event_properties;
use futures::AsyncWriteExt;
use media_store::{
    Job, NewUpload, Started,
    mongodb::bson::{doc, oid::ObjectId},
};
use mp3converter_proto::{
    EventType,
    events::v1::UploadStarted,
    media::v1::{self as pb, UploadMetadata, UploadRequest, upload_request},
};
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument;

/// How often an upload in progress tells the janitor it is alive.
const UPLOAD_HEARTBEAT: Duration = Duration::from_secs(30);

fn too_big_chunk() -> Status {
    Status::invalid_argument(format!("upload chunks must be at most {MAX_CHUNK} bytes"))
}

/// The job an upload described by `meta` becomes, its names cleaned and its
/// options checked before a byte is stored.
pub(super) fn new_upload(caller: &Caller, meta: UploadMetadata) -> Result<NewUpload, Status> {
    check_names(&meta.filename, &meta.content_type)?;
    let options = media_store::proto::parse_options(meta.options.as_ref())
        .map_err(|e| svc_kit::error::invalid_argument(e.field, e.why))?;
    let content_type = if meta.content_type.trim().is_empty() {
        "application/octet-stream".to_owned()
    } else {
        meta.content_type
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect()
    };
    Ok(NewUpload {
        id: ObjectId::new(),
        owner_id: caller.user_id.clone(),
        owner_email: caller.email.clone(),
        filename: clean_filename(&meta.filename),
        content_type,
        options,
    })
}

pub(super) fn too_large(limit: u64) -> Status {
    Status::resource_exhausted(format!(
        "the file is larger than the limit of {} ({limit} bytes)",
        human_bytes(limit)
    ))
}

impl Media {
    /// Reads the client's messages from `rx` into a GridFS upload, then
    /// records the job and publishes its event. Anything short of a complete,
    /// committed, queued upload leaves nothing behind.
    pub(super) async fn store_upload(
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
        let declared = meta.declared_size_bytes;
        // The job first, under the owner's quotas (so concurrent uploads
        // count), then the bytes: an upload over quota stores nothing.
        let new = new_upload(&caller, meta)?;
        let id = new.id;
        let Started { job, room } = self
            .jobs
            .start_upload(&new, self.quotas.limits)
            .await
            .map_err(|e| jobs_error("recording an upload", &e))?
            .map_err(|over| self.quotas.refused(over))?;
        if declared.is_some_and(|d| d > room) {
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
        let mut scanner = mp4_index::Scanner::default();
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
        scanner: &mut mp4_index::Scanner,
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
    pub(super) fn announce_start(&self, job: &Job) {
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
