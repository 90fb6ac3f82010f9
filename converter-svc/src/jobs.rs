//! The converter's moves on a job document, each a single conditional update
//! so that competing instances cannot both win.
//!
//! A job being converted carries a lease (`lease_holder`, `lease_until`)
//! that its converter renews while it works. A redelivered message whose job
//! is leased elsewhere waits (retry queue) instead of converting twice; a
//! lease left by a killed converter expires and the job is taken over.

use media_store::{
    Job, Store,
    mongodb::{
        IndexModel,
        bson::{DateTime, Document, doc, oid::ObjectId},
        error::Error,
        gridfs::FilesCollectionDocument,
        options::{IndexOptions, ReturnDocument},
    },
};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub(crate) struct Jobs {
    pub(crate) store: Store,
    pub(crate) instance: String,
    pub(crate) lease_ttl: Duration,
}

fn at(t: SystemTime) -> DateTime {
    DateTime::from_system_time(t)
}

impl Jobs {
    /// One MP3 per video, enforced by the database: the last line of defence
    /// if two converters ever raced past the lease.
    pub(crate) async fn ensure_indexes(&self) -> Result<(), Error> {
        self.store
            .db
            .collection::<Document>(&format!("{}.files", media_store::MP3S_BUCKET))
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "metadata.video_id": 1 })
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name("one_mp3_per_video".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await?;
        self.store.ensure_indexes().await
    }

    pub(crate) async fn get(&self, id: ObjectId) -> Result<Option<Job>, Error> {
        self.store.jobs.find_one(doc! { "_id": id }).await
    }

    /// Takes the job if it is queued, or converting under an expired lease
    /// (or our own). `None`: someone else holds it, or it is finished.
    pub(crate) async fn claim(&self, id: ObjectId) -> Result<Option<Job>, Error> {
        let now = SystemTime::now();
        self.store
            .jobs
            .find_one_and_update(
                doc! {
                    "_id": id,
                    "$or": [
                        { "state": "queued" },
                        { "state": "converting", "lease_until": { "$lt": at(now) } },
                        { "state": "converting", "lease_holder": &self.instance },
                    ],
                },
                doc! { "$set": {
                    "state": "converting",
                    "lease_holder": &self.instance,
                    "lease_until": at(now + self.lease_ttl),
                    "updated_at": at(now),
                } },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// Extends our lease; false if we lost it.
    pub(crate) async fn renew(&self, id: ObjectId) -> Result<bool, Error> {
        let res = self
            .store
            .jobs
            .update_one(
                doc! { "_id": id, "state": "converting", "lease_holder": &self.instance },
                doc! { "$set": { "lease_until": at(SystemTime::now() + self.lease_ttl) } },
            )
            .await?;
        Ok(res.matched_count == 1)
    }

    /// Gives the job back (shutdown): queued again, for whoever gets the
    /// redelivery.
    pub(crate) async fn release(&self, id: ObjectId) -> Result<(), Error> {
        self.store
            .jobs
            .update_one(
                doc! { "_id": id, "state": "converting", "lease_holder": &self.instance },
                doc! {
                    "$set": { "state": "queued", "updated_at": DateTime::now() },
                    "$unset": { "lease_holder": "", "lease_until": "" },
                },
            )
            .await
            .map(drop)
    }

    /// Marks the job done. Idempotent: a job already done with this MP3 stays
    /// so.
    pub(crate) async fn done(&self, id: ObjectId, mp3_id: ObjectId) -> Result<(), Error> {
        self.store
            .jobs
            .update_one(
                doc! { "_id": id },
                doc! {
                    "$set": { "state": "done", "mp3_id": mp3_id, "updated_at": DateTime::now() },
                    "$unset": { "lease_holder": "", "lease_until": "", "failure_reason": "" },
                },
            )
            .await
            .map(drop)
    }

    /// Marks the job failed, unless it is already done.
    pub(crate) async fn failed(&self, id: ObjectId, reason: &str) -> Result<(), Error> {
        self.store
            .jobs
            .update_one(
                doc! { "_id": id, "state": { "$ne": "done" } },
                doc! {
                    "$set": { "state": "failed", "failure_reason": reason, "updated_at": DateTime::now() },
                    "$unset": { "lease_holder": "", "lease_until": "" },
                },
            )
            .await
            .map(drop)
    }

    /// The MP3 already stored for a video, if any (a converter stored it and
    /// died before recording it on the job).
    pub(crate) async fn mp3_for(
        &self,
        video_id: ObjectId,
    ) -> Result<Option<FilesCollectionDocument>, Error> {
        self.store
            .mp3s
            .find_one(doc! { "metadata.video_id": video_id })
            .await
    }
}
