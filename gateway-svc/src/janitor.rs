//! The janitor: makes sure every accepted upload ends in exactly one outcome
//! the user hears about, and that nothing is kept that should not be. One
//! replica at a time does this (a lease in the job database); the others
//! stand by. Events it sends go through the outbox, like every other.
//!
//! Each round:
//! - **stuck**: a job queued or converting, without a live lease, that has
//!   not moved for `STUCK_AFTER` gets its event put out again (the same
//!   event id; converters look at the job, so a duplicate does nothing) when
//!   the queue is idle, i.e. its message was lost (a dead-lettered message, a
//!   retry lost in a broker crash). After `MAX_REPUBLISH` tries, or once it
//!   is `MAX_JOB_AGE` old, it is failed and the user is told.
//! - **unnotified**: a finished job whose outcome went out `UNNOTIFIED_AFTER`
//!   ago without notify-svc's receipt coming back (the message was lost on
//!   its way to the inbox) gets it announced again, under the same event id
//!   (notify's sent-log sends at most one email), up to `MAX_REANNOUNCE`
//!   times; then it is counted (`gave_up_notifying`) for an operator.
//! - **abandoned uploads**: an upload whose heartbeat stopped (the gateway
//!   died mid-upload), or a resumable one not continued by its expiry
//!   (`UPLOAD_EXPIRES`), is removed with its chunks.
//! - **retention**: source videos of finished jobs (if the converter could
//!   not delete them), MP3s past their expiry (the job goes too), old
//!   tombstones of deleted jobs, and sent events.
//! - **orphans** (less often): GridFS chunks without a files document, and
//!   files without a live job.

use crate::media::Media;
use media_store::{FailureKind, Finish, Job, Lease, gridfs, jobs::Error};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) interval: Duration,
    pub(crate) stuck_after: Duration,
    pub(crate) max_republish: u32,
    pub(crate) max_job_age: Duration,
    pub(crate) upload_stale: Duration,
    pub(crate) orphan_age: Duration,
    pub(crate) orphan_interval: Duration,
    pub(crate) tombstone_age: Duration,
    pub(crate) delete_source: bool,
    pub(crate) unnotified_after: Duration,
    pub(crate) max_reannounce: u32,
}

pub(crate) struct Janitor {
    pub(crate) media: Media,
    pub(crate) lease: Lease,
    pub(crate) settings: Settings,
}

/// At most this many jobs per kind of work per round.
const BATCH: i64 = 100;

/// Sent events are kept this long (to look at, then gone).
const SENT_EVENTS_KEPT: Duration = Duration::from_secs(24 * 3600);
/// How long the users' webhook delivery log goes back.
const WEBHOOK_DELIVERIES_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

fn ago(d: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(d)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn count(action: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("mp3converter_janitor_actions_total", "action" => action)
            .increment(n as u64);
        tracing::info!(action, n, "janitor");
    }
}

/// Labels a failure with what the janitor was doing.
fn doing(what: &'static str) -> impl Fn(Error) -> String {
    move |e| format!("{what}: {e}")
}

impl Janitor {
    /// Works a round every interval while it holds the lease, until `token`.
    pub(crate) async fn run(self, token: CancellationToken) {
        let mut last_orphans: Option<Instant> = None;
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.lease.acquire().await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "janitor: cannot take its lease");
                    continue;
                }
            }
            metrics::counter!("mp3converter_janitor_rounds_total").increment(1);
            let started = Instant::now();
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "janitor round failed");
            }
            metrics::histogram!("mp3converter_janitor_round_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            if last_orphans.is_none_or(|t| t.elapsed() >= self.settings.orphan_interval) {
                last_orphans = Some(Instant::now());
                if let Err(e) = self.orphans().await {
                    tracing::warn!(error = %e, "janitor: sweeping orphans failed");
                }
            }
        }
        // Let another replica take over at once.
        let _ = self.lease.release().await;
    }

    /// One round of everything but the orphan sweep.
    pub(crate) async fn round(&self) -> Result<(), String> {
        self.stuck().await?;
        self.unnotified().await?;
        self.abandoned_uploads().await?;
        self.sources().await?;
        self.expired().await?;
        self.tombstones().await?;
        self.jobs()
            .purge_sent_events(ago(SENT_EVENTS_KEPT))
            .await
            .map_err(doing("forgetting sent events"))?;
        self.jobs()
            .purge_webhook_deliveries(ago(WEBHOOK_DELIVERIES_KEPT))
            .await
            .map_err(doing("forgetting old webhook deliveries"))?;
        Ok(())
    }

    fn jobs(&self) -> &media_store::Jobs {
        &self.media.jobs
    }

    async fn stuck(&self) -> Result<(), String> {
        let before = ago(self.settings.stuck_after);
        let jobs = self
            .jobs()
            .stuck(before, BATCH)
            .await
            .map_err(doing("finding stuck jobs"))?;
        if jobs.is_empty() {
            return Ok(());
        }
        let backlog = self
            .media
            .publisher
            .queue_depth(&self.jobs().routes().video_queue)
            .await
            .ok();
        let (mut republished, mut failed) = (0, 0);
        for job in jobs {
            let too_old = job.created_at < ago(self.settings.max_job_age);
            if too_old
                || job.republished >= i32::try_from(self.settings.max_republish).unwrap_or(i32::MAX)
            {
                if self.fail(&job).await? {
                    failed += 1;
                }
            } else if backlog == Some(0) {
                // Nothing waits in the queue, yet this job waits: its message
                // is gone. (With a backlog it is probably just in line.)
                if self
                    .jobs()
                    .republish(job.id, before)
                    .await
                    .map_err(doing("republishing a stuck job"))?
                {
                    tracing::warn!(job_id = %job.id, attempt = job.republished + 1, "re-published a stuck job");
                    republished += 1;
                }
            }
        }
        count("republished_stuck", republished);
        count("failed_stuck", failed);
        Ok(())
    }

    /// Fails a stuck job (unless someone finished or leased it meanwhile);
    /// its outcome goes out with the transition.
    async fn fail(&self, job: &Job) -> Result<bool, String> {
        let reason = "the conversion did not finish in time; please upload the video again later";
        let failed = match self
            .jobs()
            .finish_failed(job.id, None, reason, FailureKind::TimedOut)
            .await
            .map_err(doing("failing a job"))?
        {
            Finish::Moved(j) => j,
            Finish::AlreadyThere(_) | Finish::Refused(_) => return Ok(false),
        };
        self.media.notify(&failed, false);
        tracing::warn!(job_id = %failed.id, "failed a stuck job");
        // Its source goes with the next `sources` pass.
        Ok(true)
    }

    /// Finished jobs announced a while ago whose receipt never came back:
    /// announced again, a bounded number of times.
    async fn unnotified(&self) -> Result<(), String> {
        let max = i32::try_from(self.settings.max_reannounce).unwrap_or(i32::MAX);
        let jobs = self
            .jobs()
            .unnotified(ago(self.settings.unnotified_after), max, BATCH)
            .await
            .map_err(doing("finding unnotified jobs"))?;
        let (mut again, mut gave_up) = (0, 0);
        for job in jobs {
            if job.reannounced >= max {
                self.jobs()
                    .give_up_notifying(job.id)
                    .await
                    .map_err(doing("giving up on a job's receipt"))?;
                tracing::error!(job_id = %job.id, owner_id = %job.owner_id, "the user was never told of this job's outcome; giving up");
                gave_up += 1;
                continue;
            }
            if self
                .jobs()
                .reannounce(job.id)
                .await
                .map_err(doing("announcing an outcome again"))?
            {
                tracing::warn!(job_id = %job.id, "no receipt for the outcome; announcing it again");
                again += 1;
            }
        }
        count("reannounced_unnotified", again);
        count("gave_up_notifying", gave_up);
        Ok(())
    }

    async fn abandoned_uploads(&self) -> Result<(), String> {
        let before = ago(self.settings.upload_stale);
        let jobs = self
            .jobs()
            .abandoned_uploads(before, BATCH)
            .await
            .map_err(doing("finding abandoned uploads"))?;
        let mut removed = 0;
        for job in &jobs {
            // The job first, if it is still abandoned (a resumable upload may
            // have been continued since), then its bytes: chunks left by a
            // failure here are orphans of no job, which the sweep removes.
            if !self
                .jobs()
                .remove_abandoned(job.id, before)
                .await
                .map_err(doing("removing an abandoned upload"))?
            {
                continue;
            }
            gridfs::delete_file(&self.media.store.video_files, &job.id.into())
                .await
                .map_err(|e| e.to_string())?;
            removed += 1;
        }
        count("removed_abandoned_uploads", removed);
        Ok(())
    }

    async fn sources(&self) -> Result<(), String> {
        if !self.settings.delete_source {
            return Ok(());
        }
        let ids = self
            .jobs()
            .sources_to_delete(ago(Duration::from_secs(120)), BATCH)
            .await
            .map_err(doing("finding sources to delete"))?;
        if ids.is_empty() {
            return Ok(());
        }
        self.media
            .store
            .delete_videos(&ids)
            .await
            .map_err(|e| format!("deleting sources: {e}"))?;
        self.jobs()
            .mark_sources_deleted(&ids)
            .await
            .map_err(doing("recording deleted sources"))?;
        count("deleted_sources", ids.len());
        Ok(())
    }

    async fn expired(&self) -> Result<(), String> {
        let jobs = self
            .jobs()
            .expire_due(BATCH)
            .await
            .map_err(doing("expiring MP3s"))?;
        for job in &jobs {
            self.media
                .store
                .delete_media(job)
                .await
                .map_err(|e| e.to_string())?;
            self.media.notify(job, true);
        }
        count("expired_mp3s", jobs.len());
        Ok(())
    }

    async fn tombstones(&self) -> Result<(), String> {
        let jobs = self
            .jobs()
            .old_tombstones(ago(self.settings.tombstone_age), BATCH)
            .await
            .map_err(doing("finding old tombstones"))?;
        for job in &jobs {
            // Files first (idempotent), in case the delete could not do it.
            self.media
                .store
                .delete_media(job)
                .await
                .map_err(|e| e.to_string())?;
            self.jobs()
                .purge_tombstone(job.id)
                .await
                .map_err(doing("purging a tombstone"))?;
        }
        count("purged_tombstones", jobs.len());
        Ok(())
    }

    /// Chunks without files, and files without a live job.
    pub(crate) async fn orphans(&self) -> Result<(), String> {
        let store = &self.media.store;
        let age = self.settings.orphan_age;
        for (bucket, action) in [
            (&store.video_files, "removed_orphan_video_chunks"),
            (&store.mp3_files, "removed_orphan_mp3_chunks"),
        ] {
            let mut ids = gridfs::orphans(bucket, age)
                .await
                .map_err(|e| e.to_string())?;
            // A resumable upload's chunks have no files document until its
            // last byte, however long it pauses: its job says when it goes.
            let uploads: Vec<_> = ids.iter().filter_map(|id| id.as_object_id()).collect();
            let live = self
                .jobs()
                .live_ids(&uploads)
                .await
                .map_err(doing("looking up the jobs of chunks"))?;
            ids.retain(|id| id.as_object_id().is_none_or(|id| !live.contains(&id)));
            for id in &ids {
                gridfs::delete_chunks(bucket, id)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            count(action, ids.len());
        }
        for (bucket, by_video, action) in [
            (&store.video_files, false, "removed_unowned_videos"),
            (&store.mp3_files, true, "removed_unowned_mp3s"),
        ] {
            let files = gridfs::older_files(bucket, age, by_video, 1000)
                .await
                .map_err(|e| e.to_string())?;
            let jobs: Vec<_> = files.iter().map(|(_, job)| *job).collect();
            let live = self
                .jobs()
                .live_ids(&jobs)
                .await
                .map_err(doing("looking up the jobs of stored files"))?;
            let mut n = 0;
            for (file, job) in &files {
                if !live.contains(job) {
                    gridfs::delete_file(bucket, file)
                        .await
                        .map_err(|e| e.to_string())?;
                    n += 1;
                }
            }
            count(action, n);
        }
        Ok(())
    }
}
