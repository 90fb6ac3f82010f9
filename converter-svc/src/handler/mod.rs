//! One `VideoUploaded`, start to finish. The MP3 is stored and the job
//! marked done, its `Mp3Ready` in the outbox in the same transaction, before
//! the delivery is acked; every step can be repeated after a crash without a
//! second conversion, and every accepted upload ends in exactly one outcome:
//! done or failed.
//!
//! Redeliveries meet the job's state machine ([`media_store::jobs`]): a job
//! another converter holds under a live lease is deferred until the lease
//! can have run out (never counted as a failure), a finished job is left
//! alone (its outcome went out with the transition), and only the lease
//! holder, or anyone once no live lease exists, may finish a job.

use crate::{
    convert::{Converted, Failure},
    workdir::WorkDir,
};
use crate::{
    lease::{LeaseGuard, Progress},
    observe,
};
use amqp_kit::{
    broadcast::Broadcaster,
    consumer::{Handler, Outcome},
    lapin::message::Delivery,
};
use media_store::{
    Claim, Finish, Job, JobState, Jobs, Mp3Facts, Store,
    mongodb::{bson::oid::ObjectId, gridfs::FilesCollectionDocument},
};
use mp3converter_proto::{
    EventType,
    events::v1::{JobChanged, VideoUploaded},
};
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};
use tokio_util::sync::CancellationToken;

/// What a user is told when every try failed for a reason of ours.
const RETRIES_EXHAUSTED: &str = "we could not convert it after several tries because of a problem on our side; please upload it again later";

#[derive(Debug, Clone)]
pub(crate) struct Converter {
    /// The bytes (GridFS).
    pub(crate) store: Store,
    /// The jobs (PostgreSQL).
    pub(crate) jobs: Jobs,
    /// This process, as lease holder.
    pub(crate) instance: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) job_events: Broadcaster,
    pub(crate) settings: crate::convert::Settings,
    pub(crate) work: Arc<WorkDir>,
    /// How long MP3s are kept; `None`: forever.
    pub(crate) retention: Option<Duration>,
    /// Delete the uploaded video once its job is done or failed.
    pub(crate) delete_source: bool,
    /// Deletes the sources of converted videos after the ack.
    pub(crate) sweeper: crate::sweeper::Sweeper,
    /// Jobs this process is converting now (a redelivery of one of them must
    /// wait, not start a second conversion under our own lease).
    pub(crate) active: Arc<Mutex<HashSet<ObjectId>>>,
    /// How uploads are followed when converted as they arrive.
    pub(crate) live: crate::live::Settings,
    /// How the gateways' follow listeners are reached.
    pub(crate) connect: crate::live::Connect,
}

/// The job a `VideoUploaded` is about (the job holds everything else).
fn decode(d: &Delivery) -> Result<ObjectId, String> {
    let event = amqp_kit::decode::<VideoUploaded>(d).map_err(|e| e.to_string())?;
    ObjectId::parse_str(&event.video_id)
        .map_err(|_| format!("VideoUploaded with a bad video_id {:?}", event.video_id))
}

/// A job id in the active set while the guard lives.
struct Active {
    set: Arc<Mutex<HashSet<ObjectId>>>,
    id: ObjectId,
}

impl Active {
    fn take(set: &Arc<Mutex<HashSet<ObjectId>>>, id: ObjectId) -> Option<Self> {
        let mut s = set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.insert(id).then(|| Self {
            set: set.clone(),
            id,
        })
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn transient<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Handler for Converter {
    async fn handle(&self, delivery: &Delivery, abandon: CancellationToken) -> Outcome {
        let id = match decode(delivery) {
            Ok(id) => id,
            Err(why) => return Outcome::DeadLetter(why),
        };
        let Some(active) = Active::take(&self.active, id) else {
            // We are converting it right now (a redelivery after our
            // connection dropped): look again once we may be done.
            return Outcome::Defer(self.lease_ttl);
        };
        let outcome = self.process(id, abandon).await;
        drop(active);
        outcome
    }

    async fn exhausted(&self, delivery: &Delivery, reason: &str) -> Result<(), String> {
        let Ok(id) = decode(delivery) else {
            return Ok(()); // nothing to tell anyone about
        };
        observe::ended("retries_exhausted");
        // The last error is ours to read, not the user's (paths, driver
        // messages): the user hears what happened in their words.
        tracing::warn!(job_id = %id, last_error = %reason, "the conversion kept failing; failing the job");
        // No lease of ours: this finishes the job only if nobody holds a live
        // lease on it (a converter still at work will finish it itself).
        self.fail(
            id,
            None,
            RETRIES_EXHAUSTED,
            media_store::FailureKind::RetriesExhausted,
        )
        .await
    }
}

impl Converter {
    #[tracing::instrument(
        name = "convert",
        skip_all,
        fields(
            job_id = %id,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    )]
    async fn process(&self, id: ObjectId, abandon: CancellationToken) -> Outcome {
        let job = match self.claim(id).await {
            Ok(job) => job,
            Err(outcome) => return outcome,
        };
        self.notify(&job, false);
        let _busy = observe::in_progress();
        let started = std::time::Instant::now();
        let result = self
            .convert_leased(&job, crate::convert::Source::Stored, abandon)
            .await;
        observe::converted(&result, started);
        let outcome = self.settle(&job, result).await;
        tracing::debug!(job_id = %id, ?outcome, elapsed = ?started.elapsed(), "job handled");
        outcome
    }

    /// The job, ours to convert; or what to do with its event instead.
    async fn claim(&self, id: ObjectId) -> Result<Job, Outcome> {
        let claim = self
            .jobs
            .claim(id, &self.instance, self.lease_ttl)
            .await
            .map_err(|e| Outcome::Retry(transient("claiming the job")(e)))?;
        match claim {
            Claim::Claimed(job) => Ok(job),
            Claim::HeldElsewhere(until) => {
                let left = until.duration_since(SystemTime::now()).unwrap_or_default();
                tracing::info!(job_id = %id, ?left, "another converter holds the job; deferring");
                Err(Outcome::Defer(left + Duration::from_secs(1)))
            }
            Claim::Gone => {
                // Deleted by its owner, or an upload rolled back after the
                // event went out.
                tracing::info!(job_id = %id, "the job is gone; dropping the event");
                Err(Outcome::Ack)
            }
            Claim::Finished(job) => {
                // Its outcome went out with the transition; only the source
                // may still be ours to delete (a crash before it was).
                self.delete_source(&job).await;
                Err(Outcome::Ack)
            }
        }
    }

    /// Finishes the job as the conversion ended: done, failed for good, or
    /// given back to be tried again.
    async fn settle(&self, job: &Job, result: Result<Converted, Failure>) -> Outcome {
        let id = job.id;
        match result {
            Ok(converted) => self.complete(job, converted).await,
            Err(Failure::Permanent(reason)) => {
                tracing::info!(job_id = %id, %reason, "conversion failed for good");
                let failed = self
                    .fail(
                        id,
                        Some(&self.instance),
                        &reason,
                        media_store::FailureKind::InvalidInput,
                    )
                    .await;
                match failed {
                    Ok(()) => Outcome::Ack,
                    Err(e) => {
                        self.release(id).await;
                        Outcome::Retry(e)
                    }
                }
            }
            Err(Failure::Transient(reason)) => {
                self.release(id).await;
                Outcome::Retry(reason)
            }
            // Deleted meanwhile, or taken over: either way not a failure of
            // ours; the next look decides.
            Err(Failure::LostLease) => Outcome::Defer(Duration::from_secs(1)),
            Err(Failure::Abandoned) => {
                self.release(id).await;
                Outcome::Requeue
            }
        }
    }

    /// Runs the conversion under the job's lease (losing it stops the
    /// conversion), its progress written as it goes.
    async fn convert_leased(
        &self,
        job: &Job,
        source: crate::convert::Source,
        abandon: CancellationToken,
    ) -> Result<Converted, Failure> {
        // Stored by a converter that died before recording it: adopt it.
        if let Some(file) = self
            .store
            .mp3_for(job.id)
            .await
            .map_err(|e| Failure::Transient(transient("finding the MP3")(e)))?
        {
            return Ok(Converted::adopted(&file));
        }
        let live = matches!(source, crate::convert::Source::Live { .. });
        let lease = LeaseGuard::start(
            self.jobs.clone(),
            job.id,
            self.instance.clone(),
            self.lease_ttl,
            live,
        );
        let progress = Progress::start({
            let (this, id) = (self.clone(), job.id);
            move |percent| {
                let this = this.clone();
                async move {
                    if let Ok(Some(job)) = this.jobs.progress(id, &this.instance, percent).await {
                        this.notify(&job, false);
                    }
                }
            }
        });
        let res = {
            let report = |percent| progress.report(percent);
            let ctx = crate::convert::Context {
                store: &self.store,
                work: &self.work,
                settings: &self.settings,
                progress: &report,
            };
            tokio::select! {
                r = crate::convert::run(&ctx, job, source) => r,
                () = abandon.cancelled() => Err(Failure::Abandoned),
                () = lease.lost() => Err(Failure::LostLease),
            }
        };
        drop(lease);
        progress.finish().await;
        res
    }

    /// The MP3 is stored: done, announced, the source deleted.
    async fn complete(&self, job: &Job, mp3: Converted) -> Outcome {
        let id = job.id;
        let facts = Mp3Facts {
            id: mp3.id,
            size_bytes: mp3.size_bytes,
            duration_seconds: mp3.duration_seconds,
            expires_at: self.retention.map(|r| SystemTime::now() + r),
            notes: mp3.notes.clone(),
        };
        let done = match self.jobs.finish_done(id, Some(&self.instance), facts).await {
            Ok(Finish::Moved(j) | Finish::AlreadyThere(j)) => j,
            Ok(Finish::Refused(now)) => {
                // Deleted (or failed) while we converted: the MP3 must not
                // outlive it. Taken over by another converter: that one will
                // adopt the MP3 (one per video), so it stays.
                match now {
                    Some(j) if j.state == JobState::Converting => {}
                    _ => {
                        if let Err(e) =
                            media_store::gridfs::delete_file(&self.store.mp3_files, &mp3.id.into())
                                .await
                        {
                            tracing::warn!(job_id = %id, error = %e, "removing the MP3 of a deleted job failed");
                        }
                    }
                }
                tracing::info!(job_id = %id, "the job ended otherwise while converting; dropping the MP3");
                return Outcome::Ack;
            }
            Err(e) => {
                self.release(id).await;
                return Outcome::Retry(transient("marking the job done")(e));
            }
        };
        observe::ended("done");
        tracing::info!(job_id = %id, seconds = mp3.duration_seconds, bytes = mp3.size_bytes, "converted");
        self.notify(&done, false);
        // Deleting the source (retention) follows, off this slot and batched
        // with others (see `sweeper`); what it misses, the janitor deletes.
        if self.delete_source && !done.source_deleted {
            self.sweeper.delete(done.id);
        }
        Outcome::Ack
    }

    /// Fails the job (if `lease` may: see [`media_store::Jobs::finish_failed`]);
    /// its outcome goes out with the transition.
    async fn fail(
        &self,
        id: ObjectId,
        lease: Option<&str>,
        reason: &str,
        kind: media_store::FailureKind,
    ) -> Result<(), String> {
        let job = match self
            .jobs
            .finish_failed(id, lease, reason, kind)
            .await
            .map_err(transient("marking the job failed"))?
        {
            Finish::Moved(j) => {
                self.notify(&j, false);
                j
            }
            Finish::AlreadyThere(j) => j,
            // Done, deleted, or held by a live lease elsewhere: that outcome
            // stands, and nothing is said here.
            Finish::Refused(_) => return Ok(()),
        };
        self.delete_source(&job).await;
        Ok(())
    }

    /// Deletes the uploaded video of a finished job if the policy says so
    /// (what fails here, the janitor deletes later).
    async fn delete_source(&self, job: &Job) {
        if !self.delete_source || job.source_deleted {
            return;
        }
        let deleted = async {
            media_store::gridfs::delete_file(&self.store.video_files, &job.id.into())
                .await
                .map_err(|e| e.to_string())?;
            self.jobs
                .mark_sources_deleted(&[job.id])
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = deleted {
            tracing::warn!(job_id = %job.id, error = %e, "deleting the source video failed; the janitor will");
        }
    }

    async fn release(&self, id: ObjectId) {
        match self.jobs.release(id, &self.instance).await {
            Ok(Some(job)) => self.notify(&job, false),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "releasing the job failed; its lease will expire")
            }
        }
    }

    /// Tells live watchers (WatchJobs, the web app) about the job.
    fn notify(&self, job: &Job, deleted: bool) {
        let change = media_store::proto::job_changed(job, deleted);
        self.job_events
            .send(JobChanged::TYPE, prost::Message::encode_to_vec(&change));
    }
}

mod live;
pub(crate) use live::Live;

impl Converted {
    pub(crate) fn adopted(file: &FilesCollectionDocument) -> Self {
        Self {
            notes: Vec::new(),
            id: file.id.as_object_id().unwrap_or_default(),
            size_bytes: file.length,
            duration_seconds: file
                .metadata
                .as_ref()
                .and_then(|m| m.get_f64("duration_seconds").ok())
                .unwrap_or_default(),
        }
    }
}
