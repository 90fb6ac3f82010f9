//! The conversion job and its state machine. Every move is one conditional
//! update, so competing gateways, converters and the janitor cannot both win:
//!
//! ```text
//!  uploading ──commit──► queued ──claim──► converting ──► done
//!      │                   ▲                   │  │
//!      └─ abandoned        └──── release ──────┘  └────► failed
//!         (deleted)                                        
//!  any state ──owner deletes / retention──► deleted (a tombstone)
//! ```
//!
//! A converter may also claim an `uploading` job (a *live* claim, see
//! [`Jobs::claim_live`]) and convert the video while it arrives; the commit
//! then hands the job to it (`uploading ──commit──► converting`, under the
//! claim's lease) instead of queueing it. The claim lives in a document of its
//! own, so that until the commit only the gateway writes the job: FerretDB
//! (the local stand-in for MongoDB) applies concurrent updates of one document
//! non-atomically, and the later write silently undoes the earlier one
//! (measured: 4 × 100 `$inc` on one document left 102).
//!
//! `done`, `failed` and `deleted` are terminal. A job being converted carries
//! a lease (`lease_holder`, `lease_until`) that its converter renews while it
//! works; only the lease holder may finish a job, or anyone once no live lease
//! exists (the holder died). `uploading` and `deleted` jobs are internal:
//! users never see them.

use crate::options::OutputOptions;
use futures::TryStreamExt;
use mongodb::{
    Collection, IndexModel,
    bson::{DateTime, Document, doc, oid::ObjectId},
    error::Error,
    options::ReturnDocument,
};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// The video is still arriving (internal).
    Uploading,
    Queued,
    Converting,
    Done,
    Failed,
    /// Deleted by its owner or by retention (internal tombstone).
    Deleted,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Deleted)
    }

    /// Whether users see jobs in this state.
    pub fn is_visible(self) -> bool {
        !matches!(self, Self::Uploading | Self::Deleted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploading => "uploading",
            Self::Queued => "queued",
            Self::Converting => "converting",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }
}

/// Why a job failed, for what the user is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The input cannot be converted.
    InvalidInput,
    /// A transient failure persisted through every retry.
    RetriesExhausted,
    /// Nobody finished it in time.
    TimedOut,
}

/// A conversion job. Its `_id` is the video's GridFS id: one job per upload,
/// and every consumer can find the job from the event alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub owner_id: String,
    pub owner_email: String,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub state: JobState,
    #[serde(default)]
    pub options: OutputOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mp3_id: Option<ObjectId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mp3_size_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    /// Whether the outcome (Mp3Ready / ConversionFailed) was confirmed
    /// published; `false` once done or failed until it is. (`None`: a job
    /// from before this was recorded.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<bool>,
    /// When the outcome was last confirmed published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_at: Option<DateTime>,
    /// Whether notify-svc's receipt (`UserNotified`) came back: the user was
    /// told. `false` once done or failed until it does. (`None`: a job from
    /// before this was recorded.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified: Option<bool>,
    /// How often the janitor announced the outcome again for want of a
    /// receipt.
    #[serde(default)]
    pub reannounced: u32,
    /// Conversion progress, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime>,
    /// How often the janitor re-published this job's event.
    #[serde(default)]
    pub republished: u32,
    /// Whether the uploaded video has been deleted (retention).
    #[serde(default)]
    pub source_deleted: bool,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    /// When the MP3 (and the job) will be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime>,
    /// Set once the broker confirmed the `VideoUploaded` event.
    #[serde(default)]
    pub published: bool,
}

impl Job {
    /// A new job for an upload that is starting.
    pub fn uploading(
        id: ObjectId,
        owner_id: &str,
        owner_email: &str,
        filename: &str,
        content_type: &str,
        options: OutputOptions,
    ) -> Self {
        let now = DateTime::now();
        Self {
            id,
            owner_id: owner_id.to_owned(),
            owner_email: owner_email.to_owned(),
            filename: filename.to_owned(),
            content_type: content_type.to_owned(),
            size_bytes: 0,
            state: JobState::Uploading,
            options,
            mp3_id: None,
            mp3_size_bytes: None,
            duration_seconds: None,
            failure_reason: None,
            failure_kind: None,
            announced: None,
            announced_at: None,
            notified: None,
            reannounced: 0,
            progress: None,
            lease_holder: None,
            lease_until: None,
            republished: 0,
            source_deleted: false,
            created_at: now,
            updated_at: now,
            expires_at: None,
            published: false,
        }
    }

    /// Whether another instance holds a lease that has not run out.
    pub fn leased_by_other(&self, instance: &str, now: SystemTime) -> Option<SystemTime> {
        match (&self.lease_holder, self.lease_until) {
            (Some(holder), Some(until)) if holder != instance && until.to_system_time() > now => {
                Some(until.to_system_time())
            }
            _ => None,
        }
    }
}

fn at(t: SystemTime) -> DateTime {
    DateTime::from_system_time(t)
}

/// Who may finish a job: its lease holder, or anyone if no live lease exists.
fn finishable_by(instance: Option<&str>, now: SystemTime) -> Document {
    let mut arms = vec![
        doc! { "state": "queued" },
        doc! { "state": "converting", "lease_until": { "$lt": at(now) } },
    ];
    if let Some(me) = instance {
        arms.push(doc! { "state": "converting", "lease_holder": me });
    }
    doc! { "$or": arms }
}

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

/// What deleting a job found.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    /// Deleted now; the job as it was.
    Now(Box<Job>),
    /// Deleted before.
    Already,
    /// Not the caller's, or unknown.
    NotFound,
}

/// The jobs collection and the moves on it.
#[derive(Debug, Clone)]
pub struct Jobs {
    pub coll: Collection<Job>,
    /// Live claims: `{_id: job id, holder, until}`.
    pub live: Collection<Document>,
}

impl Jobs {
    pub async fn ensure_indexes(&self) -> Result<(), Error> {
        for keys in [
            doc! { "owner_id": 1, "_id": -1 },
            doc! { "state": 1, "updated_at": 1 },
        ] {
            self.coll
                .create_index(IndexModel::builder().keys(keys).build())
                .await?;
        }
        Ok(())
    }

    pub async fn get(&self, id: ObjectId) -> Result<Option<Job>, Error> {
        self.coll.find_one(doc! { "_id": id }).await
    }

    /// A job as its owner may see it.
    pub async fn get_visible(&self, id: ObjectId, owner: &str) -> Result<Option<Job>, Error> {
        Ok(self
            .coll
            .find_one(doc! { "_id": id, "owner_id": owner })
            .await?
            .filter(|j| j.state.is_visible()))
    }

    /// The owner's visible jobs, newest first, after `before` (exclusive).
    pub async fn list_visible(
        &self,
        owner: &str,
        before: Option<ObjectId>,
        limit: i64,
    ) -> Result<Vec<Job>, Error> {
        let mut filter = doc! {
            "owner_id": owner,
            "state": { "$in": ["queued", "converting", "done", "failed"] },
        };
        if let Some(before) = before {
            filter.insert("_id", doc! { "$lt": before });
        }
        self.coll
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    pub async fn insert(&self, job: &Job) -> Result<(), Error> {
        self.coll.insert_one(job).await.map(drop)
    }

    /// Keeps an upload's job alive (the janitor removes uploads that stop).
    pub async fn touch_upload(&self, id: ObjectId) -> Result<(), Error> {
        self.coll
            .update_one(
                doc! { "_id": id, "state": "uploading" },
                doc! { "$set": { "updated_at": DateTime::now() } },
            )
            .await
            .map(drop)
    }

    /// The upload is complete: uploading → converting under the live claim
    /// of the converter that has been converting it as it arrived, if one
    /// holds a claim, else uploading → queued.
    pub async fn commit_upload(&self, id: ObjectId, size: u64) -> Result<Option<Job>, Error> {
        let now = SystemTime::now();
        let claim = self
            .live
            .find_one(doc! { "_id": id, "until": { "$gt": at(now) } })
            .await?;
        let mut set = doc! {
            "state": "queued",
            "size_bytes": i64::try_from(size).unwrap_or(i64::MAX),
            "updated_at": at(now),
        };
        if let Some(c) = claim
            && let (Ok(holder), Ok(until)) = (c.get_str("holder"), c.get_datetime("until"))
        {
            set.insert("state", "converting");
            set.insert("lease_holder", holder);
            set.insert("lease_until", *until);
            set.insert("progress", 0.0);
        }
        self.coll
            .find_one_and_update(
                doc! { "_id": id, "state": "uploading" },
                doc! { "$set": set },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// Removes the job of an upload that did not complete (or whose event
    /// could not be published: the user was told to retry).
    pub async fn discard_upload(&self, id: ObjectId) -> Result<(), Error> {
        self.coll
            .delete_one(doc! { "_id": id, "$or": [
                { "state": "uploading" },
                { "state": "queued", "published": false },
                { "state": "converting", "published": false },
            ] })
            .await
            .map(drop)
    }

    /// Claims an upload still arriving, so this instance converts it as it
    /// arrives: the job, if it is uploading and nobody else holds a claim.
    /// Writes only the claim; the commit reads it (see the module docs).
    pub async fn claim_live(
        &self,
        id: ObjectId,
        instance: &str,
        ttl: Duration,
    ) -> Result<Option<Job>, Error> {
        let uploading = |job: Option<Job>| job.filter(|j| j.state == JobState::Uploading);
        if uploading(self.get(id).await?).is_none() {
            return Ok(None);
        }
        let claim = self
            .live
            .insert_one(
                doc! { "_id": id, "holder": instance, "until": at(SystemTime::now() + ttl) },
            )
            .await;
        match claim {
            Ok(_) => {}
            Err(e) if crate::is_duplicate_key(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        // Committed between the look and the claim: too late.
        let job = uploading(self.get(id).await?);
        if job.is_none() {
            self.drop_live(id, instance).await?;
        }
        Ok(job)
    }

    /// Extends our live claim; false if it is gone.
    pub async fn renew_live(
        &self,
        id: ObjectId,
        instance: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let res = self
            .live
            .update_one(
                doc! { "_id": id, "holder": instance },
                doc! { "$set": { "until": at(SystemTime::now() + ttl) } },
            )
            .await?;
        Ok(res.matched_count == 1)
    }

    /// Removes our live claim (the live attempt is over, whichever way).
    pub async fn drop_live(&self, id: ObjectId, instance: &str) -> Result<(), Error> {
        self.live
            .delete_one(doc! { "_id": id, "holder": instance })
            .await
            .map(drop)
    }

    /// Claims whose holder stopped renewing them before `before` (a converter
    /// that died mid-upload); returns how many were removed.
    pub async fn purge_live(&self, before: SystemTime) -> Result<u64, Error> {
        Ok(self
            .live
            .delete_many(doc! { "until": { "$lt": at(before) } })
            .await?
            .deleted_count)
    }

    pub async fn mark_published(&self, id: ObjectId) -> Result<(), Error> {
        self.coll
            .update_one(doc! { "_id": id }, doc! { "$set": { "published": true } })
            .await
            .map(drop)
    }

    /// Takes the job for conversion if it is queued, or converting under an
    /// expired lease (its converter died) or our own (an earlier attempt of
    /// ours that could not give it back).
    pub async fn claim(&self, id: ObjectId, instance: &str, ttl: Duration) -> Result<Claim, Error> {
        let now = SystemTime::now();
        let claimed = self
            .coll
            .find_one_and_update(
                doc! { "_id": id, "$or": [
                    { "state": "queued" },
                    { "state": "converting", "lease_until": { "$lt": at(now) } },
                    { "state": "converting", "lease_holder": instance },
                ] },
                doc! {
                    "$set": {
                        "state": "converting",
                        "lease_holder": instance,
                        "lease_until": at(now + ttl),
                        "updated_at": at(now),
                        "progress": 0.0,
                    },
                },
            )
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(job) = claimed {
            return Ok(Claim::Claimed(job));
        }
        Ok(match self.get(id).await? {
            Some(job) if matches!(job.state, JobState::Done | JobState::Failed) => {
                Claim::Finished(job)
            }
            Some(job) if job.state == JobState::Converting => match job.lease_until {
                Some(until) => Claim::HeldElsewhere(until.to_system_time()),
                // A converting job always has a lease; be safe anyway.
                None => Claim::HeldElsewhere(now + ttl),
            },
            // Just expired between the two reads: try again soon.
            Some(job) if job.state == JobState::Queued => Claim::HeldElsewhere(now),
            _ => Claim::Gone,
        })
    }

    /// Extends our lease; false if we lost it (expired and taken, deleted).
    pub async fn renew(&self, id: ObjectId, instance: &str, ttl: Duration) -> Result<bool, Error> {
        self.renew_where(
            doc! { "_id": id, "state": "converting", "lease_holder": instance },
            ttl,
        )
        .await
    }

    /// [`Jobs::renew`], but only once the gateway has recorded the job's
    /// event as sent: a job committed to a live conversion is still the
    /// gateway's to write until then, and FerretDB applies concurrent
    /// updates of one document non-atomically (a renewal racing
    /// `mark_published` could undo it). The live claim covers the gap.
    pub async fn renew_published(
        &self,
        id: ObjectId,
        instance: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.renew_where(
            doc! { "_id": id, "state": "converting", "lease_holder": instance, "published": true },
            ttl,
        )
        .await
    }

    async fn renew_where(&self, filter: Document, ttl: Duration) -> Result<bool, Error> {
        let res = self
            .coll
            .update_one(
                filter,
                doc! { "$set": { "lease_until": at(SystemTime::now() + ttl) } },
            )
            .await?;
        Ok(res.matched_count == 1)
    }

    /// Records conversion progress under our lease; the job after it. Not
    /// before the gateway has recorded the job's event as sent (see
    /// [`Jobs::renew_published`]): progress is not worth racing its write.
    pub async fn progress(
        &self,
        id: ObjectId,
        instance: &str,
        percent: f64,
    ) -> Result<Option<Job>, Error> {
        self.coll
            .find_one_and_update(
                doc! { "_id": id, "state": "converting", "lease_holder": instance, "published": true },
                doc! { "$set": { "progress": percent.clamp(0.0, 100.0), "updated_at": DateTime::now() } },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// Gives the job back (shutdown, a transient failure): queued again.
    pub async fn release(&self, id: ObjectId, instance: &str) -> Result<Option<Job>, Error> {
        self.coll
            .find_one_and_update(
                doc! { "_id": id, "state": "converting", "lease_holder": instance },
                doc! {
                    "$set": { "state": "queued", "updated_at": DateTime::now() },
                    "$unset": { "lease_holder": "", "lease_until": "", "progress": "" },
                },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// converting → done, by the lease holder (or anyone if no live lease).
    pub async fn finish_done(
        &self,
        id: ObjectId,
        instance: Option<&str>,
        mp3: Mp3Facts,
    ) -> Result<Finish, Error> {
        let now = SystemTime::now();
        let mut filter = finishable_by(instance, now);
        filter.insert("_id", id);
        let mut set = doc! {
            "state": "done",
            "mp3_id": mp3.id,
            "mp3_size_bytes": i64::try_from(mp3.size_bytes).unwrap_or(i64::MAX),
            "duration_seconds": mp3.duration_seconds,
            "progress": 100.0,
            "announced": false,
            "notified": false,
            "updated_at": at(now),
        };
        if let Some(exp) = mp3.expires_at {
            set.insert("expires_at", at(exp));
        }
        let moved = self
            .coll
            .find_one_and_update(
                filter,
                doc! { "$set": set, "$unset": { "lease_holder": "", "lease_until": "", "failure_reason": "" } },
            )
            .return_document(ReturnDocument::After)
            .await?;
        self.finish_outcome(id, moved, JobState::Done).await
    }

    /// → failed, by the lease holder (or anyone if no live lease); never
    /// from a terminal state.
    pub async fn finish_failed(
        &self,
        id: ObjectId,
        instance: Option<&str>,
        reason: &str,
        kind: FailureKind,
    ) -> Result<Finish, Error> {
        let now = SystemTime::now();
        let mut filter = finishable_by(instance, now);
        filter.insert("_id", id);
        let moved = self
            .coll
            .find_one_and_update(
                filter,
                doc! {
                    "$set": {
                        "state": "failed",
                        "failure_reason": reason,
                        "failure_kind": mongodb::bson::to_bson(&kind).unwrap_or_default(),
                        "announced": false,
                        "notified": false,
                        "updated_at": at(now),
                    },
                    "$unset": { "lease_holder": "", "lease_until": "", "progress": "" },
                },
            )
            .return_document(ReturnDocument::After)
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

    /// The outcome event was confirmed published.
    pub async fn mark_announced(&self, id: ObjectId) -> Result<(), Error> {
        self.coll
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "announced": true, "announced_at": DateTime::now() } },
            )
            .await
            .map(drop)
    }

    /// notify-svc's receipt came back: the user was told. Idempotent; a job
    /// deleted meanwhile is left alone.
    pub async fn mark_notified(&self, id: ObjectId) -> Result<(), Error> {
        self.coll
            .update_one(
                doc! { "_id": id, "notified": false },
                doc! { "$set": { "notified": true } },
            )
            .await
            .map(drop)
    }

    /// The janitor is announcing the outcome again (no receipt came back).
    pub async fn note_reannounced(&self, id: ObjectId) -> Result<(), Error> {
        self.coll
            .update_one(doc! { "_id": id }, doc! { "$inc": { "reannounced": 1 } })
            .await
            .map(drop)
    }

    /// Records that the uploaded video is gone.
    pub async fn mark_source_deleted(&self, id: ObjectId) -> Result<(), Error> {
        self.coll
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "source_deleted": true } },
            )
            .await
            .map(drop)
    }

    /// Records that the uploaded videos of these jobs are gone.
    pub async fn mark_sources_deleted(&self, ids: &[ObjectId]) -> Result<(), Error> {
        self.coll
            .update_many(
                doc! { "_id": { "$in": ids } },
                doc! { "$set": { "source_deleted": true } },
            )
            .await
            .map(drop)
    }

    /// The owner deletes a job (any state): it becomes a tombstone, so a
    /// converter still at work loses its lease and a repeated delete is
    /// recognised.
    pub async fn delete(&self, id: ObjectId, owner: &str) -> Result<Deleted, Error> {
        let before = self
            .coll
            .find_one_and_update(
                doc! { "_id": id, "owner_id": owner, "state": { "$in": ["queued", "converting", "done", "failed"] } },
                delete_update(),
            )
            .return_document(ReturnDocument::Before)
            .await?;
        if let Some(job) = before {
            return Ok(Deleted::Now(Box::new(job)));
        }
        Ok(
            match self
                .coll
                .find_one(doc! { "_id": id, "owner_id": owner })
                .await?
            {
                Some(j) if j.state == JobState::Deleted => Deleted::Already,
                _ => Deleted::NotFound,
            },
        )
    }

    /// Retention: a done job whose MP3 expired becomes a tombstone.
    pub async fn expire(&self, id: ObjectId) -> Result<Option<Job>, Error> {
        self.coll
            .find_one_and_update(
                doc! { "_id": id, "state": "done", "expires_at": { "$lte": DateTime::now() } },
                delete_update(),
            )
            .return_document(ReturnDocument::Before)
            .await
    }

    /// Jobs matching `filter`, oldest change first, at most `limit`.
    pub async fn find(&self, filter: Document, limit: i64) -> Result<Vec<Job>, Error> {
        self.coll
            .find(filter)
            .sort(doc! { "updated_at": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    /// The janitor re-published a stuck job's event.
    pub async fn note_republished(&self, id: ObjectId) -> Result<(), Error> {
        self.coll
            .update_one(
                doc! { "_id": id },
                doc! { "$inc": { "republished": 1 }, "$set": { "published": true, "updated_at": DateTime::now() } },
            )
            .await
            .map(drop)
    }
}

fn delete_update() -> Document {
    doc! {
        "$set": { "state": "deleted", "updated_at": DateTime::now() },
        "$unset": { "lease_holder": "", "lease_until": "", "progress": "" },
    }
}

/// What is known of a stored MP3 when its job is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Mp3Facts {
    pub id: ObjectId,
    pub size_bytes: u64,
    pub duration_seconds: f64,
    pub expires_at: Option<SystemTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_some_states_are_seen_or_final() {
        assert!(!JobState::Uploading.is_visible());
        assert!(!JobState::Deleted.is_visible());
        assert!(JobState::Failed.is_visible() && JobState::Failed.is_terminal());
        assert!(!JobState::Converting.is_terminal());
    }

    #[test]
    fn a_lease_binds_others_until_it_runs_out() {
        let now = SystemTime::now();
        let mut job = Job::uploading(
            ObjectId::new(),
            "u",
            "e",
            "f",
            "c",
            OutputOptions::default(),
        );
        job.lease_holder = Some("a".into());
        job.lease_until = Some(at(now + Duration::from_secs(5)));
        assert!(job.leased_by_other("b", now).is_some());
        assert!(job.leased_by_other("a", now).is_none(), "not by its holder");
        assert!(
            job.leased_by_other("b", now + Duration::from_secs(6))
                .is_none(),
            "not once it ran out"
        );
    }

    #[test]
    fn anyone_may_finish_without_a_live_lease_but_only_the_holder_with_one() {
        let now = SystemTime::now();
        let f = finishable_by(Some("me"), now);
        let arms = f.get_array("$or").unwrap();
        assert_eq!(arms.len(), 3);
        assert_eq!(finishable_by(None, now).get_array("$or").unwrap().len(), 2);
    }
}
