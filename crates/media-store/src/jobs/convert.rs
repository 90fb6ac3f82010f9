//! A job through conversion: live claims on uploads still arriving, claims
//! and their leases, progress, and the outcome (done or failed) with its
//! event.

use super::{COLUMNS, Error, FailureKind, Job, JobState, Jobs, millis};
use crate::outbox;
use mongodb::bson::oid::ObjectId;
use std::time::{Duration, SystemTime};

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Ours now, until the lease runs out.
    Claimed(Job),
    /// Another instance converts it; its lease lasts until then.
    HeldElsewhere(SystemTime),
    /// Already done or failed.
    Finished(Job),
    /// Deleted, never committed, or unknown: nothing to do.
    Gone,
}

/// How a finish went.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// This call moved the job.
    Moved(Job),
    /// The job is (already) in this terminal state.
    AlreadyThere(Job),
    /// It cannot be finished by us: another holds a live lease, or it ended
    /// otherwise (deleted, or the other outcome).
    Refused(Option<Job>),
}
/// What is known of a stored MP3 when its job is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Mp3Facts {
    pub id: ObjectId,
    pub size_bytes: u64,
    pub duration_seconds: f64,
    pub expires_at: Option<SystemTime>,
    /// What the user should know (see [`Job::notes`]).
    pub notes: Vec<String>,
}
/// Who may finish a job: its lease holder (`$2`), or anyone if no live
/// lease exists (`$2` NULL).
const FINISHABLE: &str = "(state = 'queued' \
    OR (state = 'converting' AND (lease_until < now() OR lease_holder = $2)))";
impl Jobs {
    /// Claims an upload still arriving, so this instance converts it as it
    /// arrives: the job, if it is uploading and nobody else holds a claim.
    pub async fn claim_live(
        &self,
        id: ObjectId,
        instance: &str,
        ttl: Duration,
    ) -> Result<Option<Job>, Error> {
        self.one(
            &format!(
                "UPDATE jobs SET live_holder = $2, live_until = now() + $3 * interval '1 ms' \
                 WHERE id = $1 AND state = 'uploading' \
                   AND (live_holder IS NULL OR live_until < now() OR live_holder = $2) \
                 RETURNING {COLUMNS}"
            ),
            &[&id.to_hex(), &instance, &millis(ttl)],
        )
        .await
    }

    /// Extends our live claim; false if it is gone (committed: the lease
    /// took over, see [`Jobs::renew`]).
    pub async fn renew_live(
        &self,
        id: ObjectId,
        instance: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        Ok(self
            .count(
                "UPDATE jobs SET live_until = now() + $3 * interval '1 ms' \
                 WHERE id = $1 AND state = 'uploading' AND live_holder = $2",
                &[&id.to_hex(), &instance, &millis(ttl)],
            )
            .await?
            == 1)
    }

    /// Gives our live claim up (the live attempt is over, whichever way).
    pub async fn drop_live(&self, id: ObjectId, instance: &str) -> Result<(), Error> {
        self.count(
            "UPDATE jobs SET live_holder = NULL, live_until = NULL \
             WHERE id = $1 AND live_holder = $2",
            &[&id.to_hex(), &instance],
        )
        .await
        .map(drop)
    }

    /// Takes the job for conversion if it is queued, or converting under an
    /// expired lease (its converter died) or our own (an earlier attempt of
    /// ours that could not give it back).
    pub async fn claim(&self, id: ObjectId, instance: &str, ttl: Duration) -> Result<Claim, Error> {
        let claimed = self
            .one(
                &format!(
                    "UPDATE jobs SET state = 'converting', lease_holder = $2, \
                       lease_until = now() + $3 * interval '1 ms', progress = COALESCE(progress, 0), \
                       updated_at = now() \
                     WHERE id = $1 AND (state = 'queued' OR (state = 'converting' \
                       AND (lease_until < now() OR lease_holder = $2))) \
                     RETURNING {COLUMNS}"
                ),
                &[&id.to_hex(), &instance, &millis(ttl)],
            )
            .await?;
        if let Some(job) = claimed {
            return Ok(Claim::Claimed(job));
        }
        let now = SystemTime::now();
        Ok(match self.get(id).await? {
            Some(job) if matches!(job.state, JobState::Done | JobState::Failed) => {
                Claim::Finished(job)
            }
            Some(job) if job.state == JobState::Converting => {
                Claim::HeldElsewhere(job.lease_until.unwrap_or(now + ttl))
            }
            // Just released between the two statements: try again soon.
            Some(job) if job.state == JobState::Queued => Claim::HeldElsewhere(now),
            _ => Claim::Gone,
        })
    }

    /// Extends our lease; false if we lost it (taken over, deleted).
    pub async fn renew(&self, id: ObjectId, instance: &str, ttl: Duration) -> Result<bool, Error> {
        Ok(self
            .count(
                "UPDATE jobs SET lease_until = now() + $3 * interval '1 ms' \
                 WHERE id = $1 AND state = 'converting' AND lease_holder = $2",
                &[&id.to_hex(), &instance, &millis(ttl)],
            )
            .await?
            == 1)
    }

    /// Records conversion progress under our lease; the job after it.
    /// Progress never goes backwards: an attempt that starts over (a live
    /// attempt falling back to the stored file, a converter lost) shows the
    /// furthest point reached until it passes it, as users expect of a bar.
    pub async fn progress(
        &self,
        id: ObjectId,
        instance: &str,
        percent: f64,
    ) -> Result<Option<Job>, Error> {
        self.one(
            &format!(
                "UPDATE jobs SET progress = GREATEST(COALESCE(progress, 0), $3), updated_at = now() \
                 WHERE id = $1 AND state = 'converting' AND lease_holder = $2 \
                 RETURNING {COLUMNS}"
            ),
            &[&id.to_hex(), &instance, &percent.clamp(0.0, 100.0)],
        )
        .await
    }

    /// Gives the job back (shutdown, a transient failure): queued again. Its
    /// message is still in the broker (retried or requeued).
    pub async fn release(&self, id: ObjectId, instance: &str) -> Result<Option<Job>, Error> {
        self.one(
            &format!(
                "UPDATE jobs SET state = 'queued', lease_holder = NULL, lease_until = NULL, \
                   updated_at = now() \
                 WHERE id = $1 AND state = 'converting' AND lease_holder = $2 \
                 RETURNING {COLUMNS}"
            ),
            &[&id.to_hex(), &instance],
        )
        .await
    }

    /// converting → done, by the lease holder (or anyone if no live lease),
    /// with its `Mp3Ready` in the outbox.
    pub async fn finish_done(
        &self,
        id: ObjectId,
        instance: Option<&str>,
        mp3: Mp3Facts,
    ) -> Result<Finish, Error> {
        let sql = format!(
            "UPDATE jobs SET state = 'done', mp3_id = $3, mp3_size_bytes = $4, \
               duration_seconds = $5, expires_at = $6, notes = $7, progress = 100, \
               lease_holder = NULL, lease_until = NULL, failure_reason = NULL, \
               announced_at = now(), updated_at = now() \
             WHERE id = $1 AND {FINISHABLE} RETURNING {COLUMNS}"
        );
        let moved = self
            .move_and_announce(
                &sql,
                &[
                    &id.to_hex(),
                    &instance,
                    &mp3.id.to_hex(),
                    &i64::try_from(mp3.size_bytes).unwrap_or(i64::MAX),
                    &mp3.duration_seconds,
                    &mp3.expires_at,
                    &mp3.notes,
                ],
                outbox::Event::outcome,
            )
            .await?;
        self.finish_outcome(id, moved, JobState::Done).await
    }

    /// → failed, by the lease holder (or anyone if no live lease), with its
    /// `ConversionFailed` in the outbox; never from a terminal state.
    pub async fn finish_failed(
        &self,
        id: ObjectId,
        instance: Option<&str>,
        reason: &str,
        kind: FailureKind,
    ) -> Result<Finish, Error> {
        let sql = format!(
            "UPDATE jobs SET state = 'failed', failure_reason = $3, failure_kind = $4, \
               lease_holder = NULL, lease_until = NULL, progress = NULL, \
               announced_at = now(), updated_at = now() \
             WHERE id = $1 AND {FINISHABLE} RETURNING {COLUMNS}"
        );
        let moved = self
            .move_and_announce(
                &sql,
                &[&id.to_hex(), &instance, &reason, &kind.as_str()],
                outbox::Event::outcome,
            )
            .await?;
        self.finish_outcome(id, moved, JobState::Failed).await
    }

    async fn finish_outcome(
        &self,
        id: ObjectId,
        moved: Option<Job>,
        target: JobState,
    ) -> Result<Finish, Error> {
        if let Some(job) = moved {
            return Ok(Finish::Moved(job));
        }
        Ok(match self.get(id).await? {
            Some(job) if job.state == target => Finish::AlreadyThere(job),
            other => Finish::Refused(other),
        })
    }

    /// notify-svc's receipt came back: the user was told. Idempotent.
    pub async fn mark_notified(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "UPDATE jobs SET notified = true WHERE id = $1 AND NOT notified",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }
}
