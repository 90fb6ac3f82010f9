//! Converting an upload as it arrives: the handler of the live queue's
//! `UploadStarted` hints. The conversion follows the bytes on the gateway
//! receiving them ([`crate::live`]); once the gateway commits the upload to
//! this converter, the job is done the moment the MP3 is stored. Anything
//! else leaves the job to its own `VideoUploaded` (the stored path).

use super::{Active, Converted, Converter, Failure};
use crate::observe;
use amqp_kit::{
    consumer::{Handler, Outcome},
    lapin::message::Delivery,
};
use media_store::{Job, JobState, mongodb::bson::oid::ObjectId};
use mp3converter_proto::events::v1::UploadStarted;
use tokio_util::sync::CancellationToken;

/// The handler of the live queue: converts an upload as it arrives (see
/// [`crate::live`]). Every delivery is acked: the hint is spent either way,
/// and the job's own event carries it on.
#[derive(Debug, Clone)]
pub(crate) struct Live(pub(crate) Converter);

/// The upload an `UploadStarted` announces, and where to follow it.
fn decode_started(d: &Delivery) -> Option<(ObjectId, String)> {
    let event = amqp_kit::decode::<UploadStarted>(d).ok()?;
    Some((ObjectId::parse_str(&event.video_id).ok()?, event.follow_url))
}

impl Handler for Live {
    async fn handle(&self, delivery: &Delivery, abandon: CancellationToken) -> Outcome {
        let Some((id, url)) = decode_started(delivery) else {
            tracing::warn!("undecodable UploadStarted; dropped");
            return Outcome::Ack;
        };
        if url.is_empty() {
            // Nowhere to follow it from: converted after its upload.
            return Outcome::Ack;
        }
        if let Some(active) = Active::take(&self.0.active, id) {
            observe::live_ended(self.0.process_live(id, url, abandon).await);
            drop(active);
        }
        Outcome::Ack
    }

    async fn exhausted(&self, _: &Delivery, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// What became of a job once ffmpeg was done with its upload.
enum Committed {
    /// Ours, converting (accepted: its `VideoUploaded` is in the outbox).
    Yes(Box<Job>),
    /// Discarded, deleted or failed meanwhile.
    Gone,
    /// Not committed to us in time, or taken over.
    NotYet,
}

impl Converter {
    /// Converts an upload as it arrives; the outcome, for the metric. Any
    /// failure gives the job back to the `VideoUploaded` path.
    #[tracing::instrument(name = "convert", skip_all, fields(job_id = %id, live = true))]
    async fn process_live(
        &self,
        id: ObjectId,
        url: String,
        abandon: CancellationToken,
    ) -> &'static str {
        let job = match self
            .jobs
            .claim_live(id, &self.instance, self.lease_ttl)
            .await
        {
            Ok(Some(job)) => job,
            // Committed already (the hint came late), gone, or claimed.
            Ok(None) => return "missed",
            Err(e) => {
                tracing::debug!(job_id = %id, error = %e, "claiming an upload failed");
                return "missed";
            }
        };
        let started = std::time::Instant::now();
        let _busy = observe::in_progress();
        let source = crate::convert::Source::Live {
            settings: self.live,
            url,
            connect: self.connect.clone(),
        };
        let outcome = match self.convert_leased(&job, source, abandon.clone()).await {
            Ok(converted) => {
                let outcome = self.finish_live(id, converted, started).await;
                self.drop_claim(id).await;
                outcome
            }
            Err(f) => self.fall_back(id, f, abandon).await,
        };
        tracing::debug!(job_id = %id, outcome, elapsed = ?started.elapsed(), "live conversion handled");
        outcome
    }

    /// A live conversion that did not make it: the job is left to its own
    /// event, or, if the commit already handed it to us, converted from
    /// storage now rather than at its event's next look.
    async fn fall_back(
        &self,
        id: ObjectId,
        f: Failure,
        abandon: CancellationToken,
    ) -> &'static str {
        let reason = match &f {
            Failure::Permanent(r) | Failure::Transient(r) => r.as_str(),
            Failure::Abandoned => "shutting down",
            Failure::LostLease => "lost the lease",
        };
        tracing::info!(job_id = %id, reason, "left to the job's own event");
        // From now on a commit queues the job.
        self.drop_claim(id).await;
        if matches!(f, Failure::Abandoned) {
            // Shutting down: a committed job goes back to the queue, as any
            // abandoned conversion does.
            self.release(id).await;
            return "gave_up";
        }
        if !self.committed_to_us(id).await {
            return "gave_up";
        }
        let _ = self.process(id, abandon).await;
        "fell_back"
    }

    /// The MP3 of a live conversion is stored: once the gateway has committed
    /// the upload to us, the job is done.
    async fn finish_live(
        &self,
        id: ObjectId,
        converted: Converted,
        started: std::time::Instant,
    ) -> &'static str {
        match self.committed(id).await {
            Committed::Yes(job) => {
                observe::took(started);
                match self.complete(&job, converted).await {
                    Outcome::Ack => "done",
                    // Given back (complete released it): the job's event
                    // adopts the stored MP3.
                    _ => "gave_up",
                }
            }
            Committed::Gone => {
                if let Err(e) =
                    media_store::gridfs::delete_file(&self.store.mp3_files, &converted.id.into())
                        .await
                {
                    tracing::warn!(job_id = %id, error = %e, "removing the MP3 of an abandoned upload failed");
                }
                "abandoned"
            }
            Committed::NotYet => {
                // The MP3 stays: the job's event adopts it.
                self.release(id).await;
                "gave_up"
            }
        }
    }

    /// Waits for the gateway to commit the upload to us (so the job is
    /// accepted before it can be done).
    async fn committed(&self, id: ObjectId) -> Committed {
        let until = tokio::time::Instant::now() + self.live.commit_wait;
        loop {
            match self.jobs.get(id).await {
                Ok(Some(j))
                    if j.state == JobState::Converting
                        && j.lease_holder.as_deref() == Some(self.instance.as_str()) =>
                {
                    return Committed::Yes(Box::new(j));
                }
                Ok(Some(j)) if j.state == JobState::Uploading => {}
                // Discarded (its event could not go out), deleted, or failed:
                // the MP3 must not outlive it.
                Ok(None) => return Committed::Gone,
                Ok(Some(j)) if matches!(j.state, JobState::Deleted | JobState::Failed) => {
                    return Committed::Gone;
                }
                // Queued without us, or taken over: the MP3 is adopted.
                Ok(Some(_)) => return Committed::NotYet,
                Err(e) => tracing::debug!(job_id = %id, error = %e, "looking at the job failed"),
            }
            if tokio::time::Instant::now() >= until {
                return Committed::NotYet;
            }
            if let Err(e) = self
                .jobs
                .renew_live(id, &self.instance, self.lease_ttl)
                .await
            {
                tracing::debug!(job_id = %id, error = %e, "renewing a live claim failed");
            }
            tokio::time::sleep(self.live.poll).await;
        }
    }

    /// Whether the commit handed the job to us (looked at a few times: a
    /// commit that read our claim may land just after it was dropped).
    async fn committed_to_us(&self, id: ObjectId) -> bool {
        for _ in 0..3 {
            match self.jobs.get(id).await {
                Ok(Some(j)) if j.state == JobState::Converting => {
                    return j.lease_holder.as_deref() == Some(self.instance.as_str());
                }
                Ok(Some(j)) if j.state == JobState::Uploading => {}
                _ => return false,
            }
            tokio::time::sleep(self.live.poll).await;
        }
        false
    }

    async fn drop_claim(&self, id: ObjectId) {
        if let Err(e) = self.jobs.drop_live(id, &self.instance).await {
            tracing::warn!(job_id = %id, error = %e, "dropping a live claim failed; it expires");
        }
    }
}
