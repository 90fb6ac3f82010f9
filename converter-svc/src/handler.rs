//! One `VideoUploaded`, start to finish. The MP3 is stored, the job marked
//! done and `Mp3Ready` confirmed by the broker before the delivery is acked;
//! every step can be repeated after a crash without a second conversion.

use crate::{
    ffmpeg::{self, ConvertError},
    jobs::Jobs,
};
use amqp_kit::{
    Publisher,
    consumer::{Handler, Outcome},
    event_properties,
    lapin::message::Delivery,
};
use futures::AsyncWriteExt;
use media_store::{
    Job, JobState,
    mongodb::{
        bson::{doc, oid::ObjectId},
        gridfs::FilesCollectionDocument,
    },
};
use mp3converter_proto::{
    EventType,
    events::v1::{ConversionFailed, FailureKind, Mp3Ready, VideoUploaded},
};
use std::{path::PathBuf, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub(crate) struct Converter {
    pub(crate) jobs: Jobs,
    pub(crate) publisher: Publisher,
    pub(crate) mp3_queue: String,
    pub(crate) quality: u8,
    pub(crate) job_timeout: Duration,
    pub(crate) tolerance: Duration,
    pub(crate) allow_audio_only: bool,
    pub(crate) work_dir: PathBuf,
}

/// Why a job did not finish.
#[derive(Debug)]
enum Failure {
    /// Tell the user; retrying cannot help.
    Permanent(String),
    /// Try again later.
    Transient(String),
    /// Shutdown: give the job back.
    Abandoned,
}

fn transient(what: &str) -> impl FnOnce(media_store::mongodb::error::Error) -> Failure + '_ {
    move |e| Failure::Transient(format!("{what}: {e}"))
}

fn decode(d: &Delivery) -> Result<(VideoUploaded, ObjectId), String> {
    let kind = d.properties.kind().as_ref().map(|k| k.as_str());
    if kind.is_some_and(|k| k != VideoUploaded::TYPE) {
        return Err(format!("unexpected message type {kind:?}"));
    }
    let event = <VideoUploaded as prost::Message>::decode(d.data.as_slice())
        .map_err(|e| format!("undecodable VideoUploaded: {e}"))?;
    let id = ObjectId::parse_str(&event.video_id)
        .map_err(|_| format!("VideoUploaded with a bad video_id {:?}", event.video_id))?;
    Ok((event, id))
}

fn mp3_name(video_name: &str) -> String {
    let stem = video_name
        .rsplit_once('.')
        .map_or(video_name, |(stem, _)| stem);
    let stem = if stem.is_empty() { "audio" } else { stem };
    format!("{stem}.mp3")
}

impl Handler for Converter {
    async fn handle(&self, delivery: &Delivery, abandon: CancellationToken) -> Outcome {
        let (event, id) = match decode(delivery) {
            Ok(v) => v,
            Err(why) => return Outcome::DeadLetter(why),
        };
        let started = std::time::Instant::now();
        let _busy = svc_kit::observe::InFlight::new(metrics::gauge!(
            "mp3converter_conversions_in_progress"
        ));
        let span = tracing::info_span!(
            "convert",
            job_id = %id,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let result = self
            .convert(&event, id, abandon)
            .instrument(span.clone())
            .await;
        let failed = match &result {
            Err(Failure::Permanent(reason)) => Some(("invalid_input", reason.as_str())),
            Err(Failure::Transient(reason)) => Some(("transient", reason.as_str())),
            Ok(()) | Err(Failure::Abandoned) => None,
        };
        if let Some((kind, reason)) = failed {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", reason);
            span.record("error.type", kind);
        }
        let outcome = match result {
            Ok(()) => {
                metrics::histogram!("mp3converter_conversion_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("mp3converter_conversions_total", "outcome" => "done")
                    .increment(1);
                Outcome::Ack
            }
            Err(Failure::Permanent(reason)) => {
                metrics::counter!("mp3converter_conversions_total", "outcome" => "invalid_input")
                    .increment(1);
                tracing::info!(job_id = %id, %reason, "conversion failed for good");
                match self
                    .report_failure(&event, id, &reason, FailureKind::InvalidInput)
                    .await
                {
                    Ok(()) => Outcome::Ack,
                    Err(e) => Outcome::Retry(e),
                }
            }
            Err(Failure::Transient(reason)) => {
                metrics::counter!("mp3converter_conversions_total", "outcome" => "retry")
                    .increment(1);
                Outcome::Retry(reason)
            }
            Err(Failure::Abandoned) => {
                metrics::counter!("mp3converter_conversions_total", "outcome" => "abandoned")
                    .increment(1);
                Outcome::Requeue
            }
        };
        tracing::debug!(job_id = %id, ?outcome, elapsed = ?started.elapsed(), "job handled");
        outcome
    }

    async fn exhausted(&self, delivery: &Delivery, reason: &str) -> Result<(), String> {
        let Ok((event, id)) = decode(delivery) else {
            return Ok(()); // nothing to tell anyone about
        };
        metrics::counter!("mp3converter_conversions_total", "outcome" => "retries_exhausted")
            .increment(1);
        if let Ok(Some(job)) = self.jobs.get(id).await
            && job.state == JobState::Done
        {
            return Ok(());
        }
        self.report_failure(
            &event,
            id,
            &format!("the conversion kept failing ({reason}); please upload again later"),
            FailureKind::RetriesExhausted,
        )
        .await
    }
}

impl Converter {
    async fn convert(
        &self,
        event: &VideoUploaded,
        id: ObjectId,
        abandon: CancellationToken,
    ) -> Result<(), Failure> {
        let Some(job) = self
            .jobs
            .get(id)
            .await
            .map_err(transient("reading the job"))?
        else {
            // The upload was rolled back after the event went out.
            tracing::warn!(job_id = %id, "no such job; dropping the event");
            return Ok(());
        };
        match job.state {
            // A redelivery of finished work: say it again (consumers dedupe
            // by event id), convert nothing.
            JobState::Done => {
                if let Some(file) = self
                    .jobs
                    .mp3_for(id)
                    .await
                    .map_err(transient("finding the MP3"))?
                {
                    return self.announce(event, &job, &file).await;
                }
            }
            JobState::Failed => {
                let reason = job.failure_reason.clone().unwrap_or_default();
                return self
                    .report_failure(event, id, &reason, FailureKind::InvalidInput)
                    .await
                    .map_err(Failure::Transient);
            }
            JobState::Queued | JobState::Converting => {}
        }
        // Stored by a converter that died before recording it.
        if let Some(file) = self
            .jobs
            .mp3_for(id)
            .await
            .map_err(transient("finding the MP3"))?
        {
            self.jobs
                .done(id, file.id.as_object_id().unwrap_or(id))
                .await
                .map_err(transient("marking the job done"))?;
            return self.announce(event, &job, &file).await;
        }
        if self
            .jobs
            .claim(id)
            .await
            .map_err(transient("claiming the job"))?
            .is_none()
        {
            return Err(Failure::Transient(
                "the job is being converted by another instance".into(),
            ));
        }

        // Renew the lease while we work; losing it stops the work.
        let lost = CancellationToken::new();
        let renewer = {
            let (jobs, lost) = (self.jobs.clone(), lost.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(jobs.lease_ttl / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match jobs.renew(id).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(job_id = %id, "lost the job's lease");
                            lost.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(job_id = %id, error = %e, "renewing the lease failed")
                        }
                    }
                }
            })
        };
        let stop = CancellationToken::new();
        let watcher = {
            let (stop, abandon, lost) = (stop.clone(), abandon.clone(), lost.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = abandon.cancelled() => {}
                    () = lost.cancelled() => {}
                }
                stop.cancel();
            })
        };
        let res = self.convert_claimed(event, &job, stop).await;
        renewer.abort();
        watcher.abort();
        let res = match res {
            Err(Failure::Abandoned) if !abandon.is_cancelled() => {
                Err(Failure::Transient("lost the job's lease".into()))
            }
            other => other,
        };
        if matches!(res, Err(Failure::Transient(_) | Failure::Abandoned)) {
            // Let the retry (or another instance) claim it at once.
            if let Err(e) = self.jobs.release(id).await {
                tracing::warn!(job_id = %id, error = %e, "releasing the job failed; its lease will expire");
            }
        }
        res
    }

    async fn convert_claimed(
        &self,
        event: &VideoUploaded,
        job: &Job,
        stop: CancellationToken,
    ) -> Result<(), Failure> {
        let id = job.id;
        let dir = tempfile::Builder::new()
            .prefix("convert-")
            .tempdir_in(&self.work_dir)
            .map_err(|e| Failure::Transient(format!("no temporary directory: {e}")))?;
        let input = dir.path().join("input");
        let output = dir.path().join("output.mp3");

        // Spool the video: ffmpeg needs a seekable input (see ffmpeg.rs).
        self.spool(id, &input, &stop)
            .instrument(tracing::info_span!(
                "gridfs.read",
                otel.name = "gridfs.read videos",
                db.system.name = "mongodb",
                db.collection.name = "videos",
                video_id = %id,
            ))
            .await?;

        let invalid = |e: ConvertError| match e {
            ConvertError::Invalid(r) => Failure::Permanent(r),
            e @ ConvertError::TimedOut(_) => Failure::Permanent(e.to_string()),
            ConvertError::Abandoned => Failure::Abandoned,
            e @ (ConvertError::Killed(_) | ConvertError::Io(_)) => {
                Failure::Transient(e.to_string())
            }
        };
        let probe = ffmpeg::probe(&input).await.map_err(invalid)?;
        if !probe.has_audio {
            return Err(Failure::Permanent(
                "the video has no audio track, so there is nothing to put in an MP3".into(),
            ));
        }
        if !probe.has_video && !self.allow_audio_only {
            return Err(Failure::Permanent(
                "the file is not a video (it has no video stream)".into(),
            ));
        }
        ffmpeg::to_mp3(&input, &output, self.quality, self.job_timeout, stop)
            .instrument(tracing::info_span!(
                "ffmpeg",
                otel.name = "ffmpeg to_mp3",
                process.executable.name = "ffmpeg",
                audio.codec = "libmp3lame",
                audio.quality = self.quality,
                input.duration_seconds = probe.duration,
            ))
            .await
            .map_err(invalid)?;
        let out = ffmpeg::probe(&output).await.map_err(|_| {
            Failure::Permanent("ffmpeg produced no readable MP3 from this file".into())
        })?;
        let (Some(got), Some(want)) = (out.duration, probe.duration) else {
            return Err(Failure::Permanent(
                "the file's duration cannot be determined; it may be damaged".into(),
            ));
        };
        if (got - want).abs() > self.tolerance.as_secs_f64() {
            return Err(Failure::Permanent(format!(
                "the video looks truncated or damaged: only {got:.1} s of its {want:.1} s of audio could be decoded"
            )));
        }

        let stored = self
            .store_mp3(job, &output, got)
            .instrument(tracing::info_span!(
                "gridfs.write",
                otel.name = "gridfs.write mp3s",
                db.system.name = "mongodb",
                db.collection.name = "mp3s",
                video_id = %id,
            ))
            .await?;
        self.jobs
            .done(id, stored.id.as_object_id().unwrap_or(id))
            .await
            .map_err(transient("marking the job done"))?;
        tracing::info!(job_id = %id, seconds = got, bytes = stored.length, "converted");
        self.announce(event, job, &stored).await
    }

    /// Copies the stored video into `input`.
    async fn spool(
        &self,
        id: ObjectId,
        input: &std::path::Path,
        stop: &CancellationToken,
    ) -> Result<(), Failure> {
        let file = self
            .jobs
            .store
            .videos
            .find_one(doc! { "_id": id })
            .await
            .map_err(transient("finding the video"))?
            .ok_or_else(|| Failure::Permanent("the uploaded video is no longer stored".into()))?;
        let mut reader = self.jobs.store.video_reader(&file);
        let mut spool = tokio::fs::File::create(input)
            .await
            .map_err(|e| Failure::Transient(format!("spooling the video: {e}")))?;
        loop {
            if stop.is_cancelled() {
                return Err(Failure::Abandoned);
            }
            match reader.next_block().await {
                Ok(Some(block)) => spool
                    .write_all(&block)
                    .await
                    .map_err(|e| Failure::Transient(format!("spooling the video: {e}")))?,
                Ok(None) => break,
                Err(media_store::ReadError::Mongo(e)) => {
                    return Err(Failure::Transient(format!("reading the video: {e}")));
                }
                Err(e @ media_store::ReadError::Corrupt(_)) => {
                    return Err(Failure::Permanent(format!(
                        "the stored video is damaged ({e})"
                    )));
                }
            }
        }
        spool
            .sync_all()
            .await
            .map_err(|e| Failure::Transient(format!("spooling the video: {e}")))?;
        Ok(())
    }

    /// Streams the MP3 file into GridFS. If another converter stored one for
    /// this video first (the unique index says so), theirs is used.
    async fn store_mp3(
        &self,
        job: &Job,
        path: &std::path::Path,
        duration: f64,
    ) -> Result<FilesCollectionDocument, Failure> {
        let id = job.id;
        let mut upload = self
            .jobs
            .store
            .mp3s
            .open_upload_stream(mp3_name(&job.filename))
            .metadata(doc! {
                "owner_id": &job.owner_id,
                "video_id": id,
                "duration_seconds": duration,
            })
            .await
            .map_err(transient("opening the MP3 upload"))?;
        let mp3_id = upload.id().clone();
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Failure::Transient(format!("reading the MP3: {e}")))?;
        let mut buf = vec![0u8; 1 << 20];
        let written: Result<(), String> = async {
            loop {
                let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                upload
                    .write_all(&buf[..n])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            upload.close().await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = written {
            // Abort deletes the chunks; if close() wrote nothing, neither is
            // there a files document. Then see whether someone else won.
            let _ = upload.abort().await;
            let _ = self.jobs.store.mp3s.delete(mp3_id).await;
            if let Ok(Some(theirs)) = self.jobs.mp3_for(id).await {
                tracing::info!(job_id = %id, "another converter stored the MP3 first");
                return Ok(theirs);
            }
            return Err(Failure::Transient(format!("storing the MP3: {e}")));
        }
        self.jobs
            .store
            .mp3s
            .find_one(doc! { "_id": mp3_id })
            .await
            .map_err(transient("reading the stored MP3"))?
            .ok_or_else(|| Failure::Transient("the stored MP3 vanished".into()))
    }

    async fn announce(
        &self,
        event: &VideoUploaded,
        job: &Job,
        file: &FilesCollectionDocument,
    ) -> Result<(), Failure> {
        let mp3_id = file
            .id
            .as_object_id()
            .map(|o| o.to_hex())
            .unwrap_or_default();
        let duration = file
            .metadata
            .as_ref()
            .and_then(|m| m.get_f64("duration_seconds").ok())
            .unwrap_or_default();
        let ready = Mp3Ready {
            // Derived from the job: a repeat announcement is recognisably the
            // same event, so notify-svc sends one email.
            event_id: format!("mp3ready-{}", job.id.to_hex()),
            job_id: job.id.to_hex(),
            video_id: job.id.to_hex(),
            mp3_id,
            owner_id: job.owner_id.clone(),
            owner_email: event.owner_email.clone(),
            filename: file
                .filename
                .clone()
                .unwrap_or_else(|| mp3_name(&job.filename)),
            size_bytes: file.length,
            duration_seconds: duration,
            occur_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        };
        self.publish(
            Mp3Ready::TYPE,
            &ready.event_id,
            &prost::Message::encode_to_vec(&ready),
        )
        .await
        .map_err(Failure::Transient)
    }

    async fn report_failure(
        &self,
        event: &VideoUploaded,
        id: ObjectId,
        reason: &str,
        kind: FailureKind,
    ) -> Result<(), String> {
        self.jobs
            .failed(id, reason)
            .await
            .map_err(|e| format!("marking the job failed: {e}"))?;
        let failed = ConversionFailed {
            event_id: format!("failed-{}", id.to_hex()),
            job_id: id.to_hex(),
            video_id: id.to_hex(),
            owner_id: event.owner_id.clone(),
            owner_email: event.owner_email.clone(),
            filename: event.filename.clone(),
            reason: reason.to_owned(),
            kind: kind as i32,
            occur_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        };
        self.publish(
            ConversionFailed::TYPE,
            &failed.event_id,
            &prost::Message::encode_to_vec(&failed),
        )
        .await
    }

    async fn publish(&self, kind: &str, event_id: &str, payload: &[u8]) -> Result<(), String> {
        self.publisher
            .publish(
                &self.mp3_queue,
                payload,
                event_properties(kind, event_id, Default::default()),
            )
            .await
            .map_err(|e| format!("publishing {kind}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp3_names_keep_the_stem() {
        assert_eq!(mp3_name("holiday.mkv"), "holiday.mp3");
        assert_eq!(mp3_name("a.b.mp4"), "a.b.mp3");
        assert_eq!(mp3_name("noext"), "noext.mp3");
        assert_eq!(mp3_name(".mp4"), "audio.mp3");
    }
}
