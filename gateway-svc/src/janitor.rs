//! The janitor: makes sure every accepted upload ends in exactly one outcome
//! the user hears about, and that nothing is kept that should not be. One
//! replica at a time does this (a lease in MongoDB); the others stand by.
//!
//! Each round:
//! - **unconfirmed**: a job recorded but whose event was never confirmed (the
//!   gateway died between the two) gets its event published.
//! - **stuck**: a job queued or converting, without a live lease, that has
//!   not moved for `STUCK_AFTER` gets its event published again (the same
//!   event id; converters look at the job, so a duplicate does nothing) when
//!   the queue is idle, i.e. its message was lost (a dead-lettered message, a
//!   retry lost in a broker crash). After `MAX_REPUBLISH` tries, or once it
//!   is `MAX_JOB_AGE` old, it is failed and the user is told.
//! - **unannounced**: a finished job whose outcome event was never confirmed
//!   gets it published.
//! - **unnotified**: a finished job whose outcome went out `UNNOTIFIED_AFTER`
//!   ago without notify-svc's receipt coming back (the message was lost on
//!   its way to the inbox) gets it published again, under the same event id
//!   (notify's sent-log sends at most one email), up to `MAX_REANNOUNCE`
//!   times; then it is counted (`gave_up_notifying`) for an operator.
//! - **abandoned uploads**: an upload whose heartbeat stopped (the gateway
//!   died mid-upload) is removed with its chunks; so are live claims whose
//!   converter died (nobody renewed them for an hour).
//! - **retention**: source videos of finished jobs (if the converter could
//!   not delete them), MP3s past their expiry (the job goes too), and old
//!   tombstones of deleted jobs.
//! - **orphans** (less often): GridFS chunks without a files document, and
//!   files without a live job.

use crate::media::Media;
use amqp_kit::event_properties;
use futures::TryStreamExt;
use media_store::{
    FailureKind, Finish, Job, JobState, Lock,
    gridfs::{self, Bucket},
    mongodb::bson::{Bson, DateTime, Document, doc},
};
use mp3converter_proto::{
    EventType,
    events::v1::{ConversionFailed, Mp3Ready},
};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) interval: Duration,
    pub(crate) unconfirmed_after: Duration,
    pub(crate) stuck_after: Duration,
    pub(crate) max_republish: u32,
    pub(crate) max_job_age: Duration,
    pub(crate) upload_stale: Duration,
    pub(crate) orphan_age: Duration,
    pub(crate) orphan_interval: Duration,
    pub(crate) tombstone_age: Duration,
    pub(crate) delete_source: bool,
    pub(crate) mp3_queue: String,
    pub(crate) unnotified_after: Duration,
    pub(crate) max_reannounce: u32,
}

pub(crate) struct Janitor {
    pub(crate) media: Media,
    pub(crate) lock: Lock,
    pub(crate) settings: Settings,
}

/// At most this many jobs per kind of work per round.
const BATCH: i64 = 100;

fn ago(d: Duration) -> DateTime {
    DateTime::from_system_time(
        SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

fn count(action: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("mp3converter_janitor_actions_total", "action" => action)
            .increment(n as u64);
        tracing::info!(action, n, "janitor");
    }
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
            match self.lock.acquire().await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "janitor: cannot take its lease");
                    continue;
                }
            }
            metrics::counter!("mp3converter_janitor_rounds_total").increment(1);
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "janitor round failed");
            }
            if last_orphans.is_none_or(|t| t.elapsed() >= self.settings.orphan_interval) {
                last_orphans = Some(Instant::now());
                if let Err(e) = self.orphans().await {
                    tracing::warn!(error = %e, "janitor: sweeping orphans failed");
                }
            }
        }
        // Let another replica take over at once.
        let _ = self.lock.release().await;
    }

    /// One round of everything but the orphan sweep.
    pub(crate) async fn round(&self) -> Result<(), String> {
        self.unconfirmed().await?;
        self.stuck().await?;
        self.unannounced().await?;
        self.unnotified().await?;
        self.abandoned_uploads().await?;
        let stale = std::time::SystemTime::now() - Duration::from_secs(3600);
        let purged = self
            .jobs()
            .purge_live(stale)
            .await
            .map_err(|e| e.to_string())?;
        count(
            "removed_stale_live_claims",
            usize::try_from(purged).unwrap_or(0),
        );
        self.sources().await?;
        self.expired().await?;
        self.tombstones().await
    }

    fn jobs(&self) -> &media_store::Jobs {
        &self.media.store.jobs
    }

    async fn find(&self, filter: Document) -> Result<Vec<Job>, String> {
        self.jobs()
            .find(filter, BATCH)
            .await
            .map_err(|e| format!("finding jobs: {e}"))
    }

    async fn unconfirmed(&self) -> Result<(), String> {
        let jobs = self
            .find(doc! { "state": "queued", "published": false, "created_at": { "$lte": ago(self.settings.unconfirmed_after) } })
            .await?;
        let mut n = 0;
        for job in jobs {
            if self.media.publish(&job).await.is_err() {
                break; // the broker is down: next round
            }
            let _ = self.jobs().mark_published(job.id).await;
            tracing::warn!(job_id = %job.id, "published the event of an unconfirmed job");
            n += 1;
        }
        count("published_unconfirmed", n);
        Ok(())
    }

    async fn stuck(&self) -> Result<(), String> {
        let now = DateTime::now();
        let jobs = self
            .find(doc! {
                "state": { "$in": ["queued", "converting"] },
                "published": true,
                "updated_at": { "$lte": ago(self.settings.stuck_after) },
                "$or": [ { "lease_until": { "$exists": false } }, { "lease_until": { "$lt": now } } ],
            })
            .await?;
        if jobs.is_empty() {
            return Ok(());
        }
        let backlog = self
            .media
            .publisher
            .queue_depth(&self.media.video_queue)
            .await
            .ok();
        let (mut republished, mut failed) = (0, 0);
        for job in jobs {
            let too_old =
                job.created_at.to_system_time() < SystemTime::now() - self.settings.max_job_age;
            if too_old || job.republished >= self.settings.max_republish {
                if self.fail(&job).await? {
                    failed += 1;
                }
            } else if backlog == Some(0) {
                // Nothing waits in the queue, yet this job waits: its message
                // is gone. (With a backlog it is probably just in line.)
                if self.media.publish(&job).await.is_err() {
                    break;
                }
                let _ = self.jobs().note_republished(job.id).await;
                tracing::warn!(job_id = %job.id, attempt = job.republished + 1, "re-published a stuck job");
                republished += 1;
            }
        }
        count("republished_stuck", republished);
        count("failed_stuck", failed);
        Ok(())
    }

    /// Fails a stuck job (unless someone finished or leased it meanwhile) and
    /// tells the user.
    async fn fail(&self, job: &Job) -> Result<bool, String> {
        let reason = "the conversion did not finish in time; please upload the video again later";
        let failed = match self
            .jobs()
            .finish_failed(job.id, None, reason, FailureKind::TimedOut)
            .await
            .map_err(|e| format!("failing a job: {e}"))?
        {
            Finish::Moved(j) => j,
            Finish::AlreadyThere(_) | Finish::Refused(_) => return Ok(false),
        };
        self.media.notify(&failed, false);
        tracing::warn!(job_id = %failed.id, "failed a stuck job");
        let failed = self.delete_source(&failed).await;
        // Should this fail, the job is unannounced: see `unannounced`.
        self.announce(&failed).await?;
        Ok(true)
    }

    /// Publishes a finished job's outcome (under its one event id) and
    /// records that it was.
    async fn announce(&self, job: &Job) -> Result<(), String> {
        let (kind, id, payload) = match job.state {
            JobState::Done => {
                let e = media_store::proto::mp3_ready(job);
                (
                    Mp3Ready::TYPE,
                    e.event_id.clone(),
                    prost::Message::encode_to_vec(&e),
                )
            }
            _ => {
                let e = media_store::proto::conversion_failed(job);
                (
                    ConversionFailed::TYPE,
                    e.event_id.clone(),
                    prost::Message::encode_to_vec(&e),
                )
            }
        };
        self.media
            .publisher
            .publish(
                &self.settings.mp3_queue,
                &payload,
                event_properties(kind, &id, Default::default()),
            )
            .await
            .map_err(|e| format!("announcing a finished job: {e}"))?;
        self.jobs()
            .mark_announced(job.id)
            .await
            .map_err(|e| format!("recording an announcement: {e}"))
    }

    /// Finished jobs whose outcome was never confirmed published (the
    /// broker or MongoDB failed right after the job finished): announced now,
    /// so the user hears about every upload.
    async fn unannounced(&self) -> Result<(), String> {
        let jobs = self
            .find(doc! {
                "state": { "$in": ["done", "failed"] },
                "announced": false,
                "updated_at": { "$lte": ago(self.settings.unconfirmed_after) },
            })
            .await?;
        let mut n = 0;
        for job in jobs {
            self.announce(&job).await?;
            n += 1;
        }
        count("announced_unannounced", n);
        Ok(())
    }

    /// Finished jobs announced a while ago whose receipt never came back:
    /// announced again, a bounded number of times.
    async fn unnotified(&self) -> Result<(), String> {
        let jobs = self
            .find(doc! {
                "state": { "$in": ["done", "failed"] },
                "announced": true,
                "notified": false,
                "announced_at": { "$lte": ago(self.settings.unnotified_after) },
                // (missing: a job recorded before this was counted)
                "$or": [
                    { "reannounced": { "$lte": self.settings.max_reannounce } },
                    { "reannounced": { "$exists": false } },
                ],
            })
            .await?;
        let (mut again, mut gave_up) = (0, 0);
        for job in jobs {
            // Counted first: a failure to publish still spends an attempt, so
            // a job that cannot be announced does not come back every round.
            self.jobs()
                .note_reannounced(job.id)
                .await
                .map_err(|e| format!("counting an announcement: {e}"))?;
            if job.reannounced >= self.settings.max_reannounce {
                tracing::error!(job_id = %job.id, owner_id = %job.owner_id, "the user was never told of this job's outcome; giving up");
                gave_up += 1;
                continue;
            }
            tracing::warn!(job_id = %job.id, "no receipt for the outcome; announcing it again");
            self.announce(&job).await?;
            again += 1;
        }
        count("reannounced_unnotified", again);
        count("gave_up_notifying", gave_up);
        Ok(())
    }

    async fn delete_source(&self, job: &Job) -> Job {
        if !self.settings.delete_source || job.source_deleted {
            return job.clone();
        }
        let res = async {
            let store = &self.media.store;
            gridfs::delete_file(store.video_files(job.id), &job.id.into()).await?;
            self.jobs().mark_source_deleted(job.id).await
        }
        .await;
        match res {
            Ok(()) => Job {
                source_deleted: true,
                ..job.clone()
            },
            Err(_) => job.clone(),
        }
    }

    async fn abandoned_uploads(&self) -> Result<(), String> {
        let jobs = self
            .find(doc! { "state": "uploading", "updated_at": { "$lte": ago(self.settings.upload_stale) } })
            .await?;
        let mut n = 0;
        for job in jobs {
            gridfs::delete_file(self.media.store.video_files(job.id), &job.id.into())
                .await
                .map_err(|e| e.to_string())?;
            self.jobs()
                .discard_upload(job.id)
                .await
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        count("removed_abandoned_uploads", n);
        Ok(())
    }

    async fn sources(&self) -> Result<(), String> {
        if !self.settings.delete_source {
            return Ok(());
        }
        let jobs = self
            .find(doc! {
                "state": { "$in": ["done", "failed"] },
                "source_deleted": { "$ne": true },
                "updated_at": { "$lte": ago(Duration::from_secs(120)) },
            })
            .await?;
        // One delete query per bucket and collection for all of them: on a server that
        // scans to delete (FerretDB), one pass instead of one per source.
        let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
        self.media
            .store
            .delete_videos(&ids)
            .await
            .map_err(|e| format!("deleting sources: {e}"))?;
        self.jobs()
            .mark_sources_deleted(&ids)
            .await
            .map_err(|e| format!("recording deleted sources: {e}"))?;
        count("deleted_sources", ids.len());
        Ok(())
    }

    async fn expired(&self) -> Result<(), String> {
        let jobs = self
            .find(doc! { "state": "done", "expires_at": { "$lte": DateTime::now() } })
            .await?;
        let mut n = 0;
        for job in jobs {
            let Some(before) = self
                .jobs()
                .expire(job.id)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            self.media
                .store
                .delete_media(&before)
                .await
                .map_err(|e| e.to_string())?;
            self.media.notify(&before, true);
            n += 1;
        }
        count("expired_mp3s", n);
        Ok(())
    }

    async fn tombstones(&self) -> Result<(), String> {
        let jobs = self
            .find(doc! { "state": "deleted", "updated_at": { "$lte": ago(self.settings.tombstone_age) } })
            .await?;
        let mut n = 0;
        for job in jobs {
            // Files first (idempotent), in case the delete could not do it.
            self.media
                .store
                .delete_media(&job)
                .await
                .map_err(|e| e.to_string())?;
            self.jobs()
                .coll
                .delete_one(doc! { "_id": job.id, "state": "deleted" })
                .await
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        count("purged_tombstones", n);
        Ok(())
    }

    /// Chunks without files, and files without a live job.
    pub(crate) async fn orphans(&self) -> Result<(), String> {
        let store = &self.media.store;
        let age = self.settings.orphan_age;
        let buckets = store
            .video_buckets()
            .map(|b| (b, "removed_orphan_video_chunks"))
            .chain([(&store.mp3_files, "removed_orphan_mp3_chunks")]);
        for (bucket, action) in buckets {
            let ids = gridfs::orphans(bucket, age)
                .await
                .map_err(|e| e.to_string())?;
            for id in &ids {
                bucket
                    .chunks
                    .delete_many(doc! { "files_id": id })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            count(action, ids.len());
        }
        for bucket in store.video_buckets() {
            self.unowned_files(bucket, "_id", "removed_unowned_videos")
                .await?;
        }
        self.unowned_files(
            &store.mp3_files,
            "metadata.video_id",
            "removed_unowned_mp3s",
        )
        .await
    }

    /// Files older than the orphan age whose job (found through `job_key`) is
    /// gone or deleted.
    async fn unowned_files(
        &self,
        bucket: &Bucket,
        job_key: &str,
        action: &'static str,
    ) -> Result<(), String> {
        let files: Vec<Document> = bucket
            .files
            .find(doc! { "uploadDate": { "$lte": ago(self.settings.orphan_age) } })
            .projection(doc! { "_id": 1, "metadata.video_id": 1 })
            .limit(1000)
            .await
            .map_err(|e| e.to_string())?
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut n = 0;
        for f in files {
            let job_id = if job_key == "_id" {
                f.get_object_id("_id").ok()
            } else {
                f.get_document("metadata")
                    .ok()
                    .and_then(|m| m.get_object_id("video_id").ok())
            };
            let Some(job_id) = job_id else { continue };
            let live = self
                .jobs()
                .get(job_id)
                .await
                .map_err(|e| e.to_string())?
                .is_some_and(|j| j.state != media_store::JobState::Deleted);
            if !live {
                let id = f.get("_id").cloned().unwrap_or(Bson::Null);
                gridfs::delete_file(bucket, &id)
                    .await
                    .map_err(|e| e.to_string())?;
                n += 1;
            }
        }
        count(action, n);
        Ok(())
    }
}
