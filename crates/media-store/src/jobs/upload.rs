//! Uploads starting (under the owner's quotas), kept alive, committed or
//! discarded.

use super::{COLUMNS, Error, Job, Jobs};
use crate::{options::OutputOptions, outbox};
use mongodb::bson::oid::ObjectId;
use std::time::{Duration, SystemTime};

/// An upload about to start: what the job is made of.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub id: ObjectId,
    pub owner_id: String,
    pub owner_email: String,
    pub filename: String,
    pub content_type: String,
    pub options: OutputOptions,
}

/// A user's limits, checked when an upload starts.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Uploads at once.
    pub max_uploads: u64,
    /// Jobs waiting for (or in) conversion.
    pub max_waiting: u64,
    /// Bytes stored: videos not yet deleted, and MP3s.
    pub max_stored: u64,
}

/// Which quota an upload would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverQuota {
    Uploads { max: u64 },
    Waiting { max: u64 },
    Stored { max: u64, used: u64 },
}

/// An upload that may go ahead.
#[derive(Debug, Clone)]
pub struct Started {
    pub job: Job,
    /// Bytes the user may still store (the upload may not grow past it).
    pub room: u64,
}

/// An upload whose job has not been touched for this long is dead (its
/// heartbeat is every 30 s) and no longer counts as one at once.
pub const UPLOAD_ALIVE: Duration = Duration::from_secs(90);
impl Jobs {
    /// Records an upload that is starting, if the owner's quotas allow it:
    /// the counts and the insert happen under a lock on the owner, so two
    /// uploads racing for the last slot cannot both have it.
    pub async fn start_upload(
        &self,
        new: &NewUpload,
        quotas: Quotas,
    ) -> Result<Result<Started, OverQuota>, Error> {
        self.start(new, quotas, None).await
    }

    /// As [`Self::start_upload`], for a resumable upload of `length` bytes:
    /// its whole length counts against the stored bytes from the start, and
    /// it counts as an upload at once until it completes or expires.
    pub async fn start_resumable(
        &self,
        new: &NewUpload,
        quotas: Quotas,
        length: u64,
        expires_in: Duration,
    ) -> Result<Result<Started, OverQuota>, Error> {
        self.start(new, quotas, Some((length, expires_in))).await
    }

    async fn start(
        &self,
        new: &NewUpload,
        quotas: Quotas,
        resumable: Option<(u64, Duration)>,
    ) -> Result<Result<Started, OverQuota>, Error> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            // A lock per owner (hashed), held to the commit.
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 7172147))",
            &[&new.owner_id],
        )
        .await?;
        let alive = SystemTime::now() - UPLOAD_ALIVE;
        let counts = tx
            .query_one(
                "SELECT \
                   count(*) FILTER (WHERE state = 'uploading' \
                                      AND (updated_at > $2 OR upload_expires_at > now())) AS uploading, \
                   count(*) FILTER (WHERE state IN ('queued', 'converting')) AS waiting, \
                   coalesce(sum(CASE WHEN source_deleted THEN 0 \
                                     ELSE greatest(size_bytes, coalesce(upload_length, 0)) END \
                                + coalesce(mp3_size_bytes, 0)) \
                            FILTER (WHERE state <> 'deleted'), 0)::bigint AS stored \
                 FROM jobs WHERE owner_id = $1",
                &[&new.owner_id, &alive],
            )
            .await?;
        let n = |k: &str| -> Result<u64, Error> {
            Ok(u64::try_from(counts.try_get::<_, i64>(k)?).unwrap_or(0))
        };
        let (uploading, waiting, used) = (n("uploading")?, n("waiting")?, n("stored")?);
        if waiting >= quotas.max_waiting {
            return Ok(Err(OverQuota::Waiting {
                max: quotas.max_waiting,
            }));
        }
        if uploading >= quotas.max_uploads {
            return Ok(Err(OverQuota::Uploads {
                max: quotas.max_uploads,
            }));
        }
        let room = quotas.max_stored.saturating_sub(used);
        if room == 0 || resumable.is_some_and(|(length, _)| length > room) {
            return Ok(Err(OverQuota::Stored {
                max: quotas.max_stored,
                used,
            }));
        }
        let options = serde_json::to_value(&new.options)
            .map_err(|e| Error::Other(format!("encoding options: {e}")))?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO jobs (id, owner_id, owner_email, filename, content_type, state, \
                                       options, upload_length, upload_expires_at) \
                     VALUES ($1, $2, $3, $4, $5, 'uploading', $6, $7, now() + make_interval(secs => $8)) \
                     RETURNING {COLUMNS}"
                ),
                &[
                    &new.id.to_hex(),
                    &new.owner_id,
                    &new.owner_email,
                    &new.filename,
                    &new.content_type,
                    &options,
                    &resumable.map(|(length, _)| i64::try_from(length).unwrap_or(i64::MAX)),
                    &resumable.map(|(_, expires)| expires.as_secs_f64()),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(Ok(Started {
            job: Job::from_row(&row)?,
            room,
        }))
    }

    /// Keeps an upload's job alive (the janitor removes uploads that stop).
    pub async fn touch_upload(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "UPDATE jobs SET updated_at = now() WHERE id = $1 AND state = 'uploading'",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }

    /// The upload is complete: uploading → converting under the live claim
    /// of the converter that has been converting it as it arrived, if one
    /// holds a claim, else uploading → queued; its `VideoUploaded` goes in
    /// the outbox with it. `None`: not uploading any more (abandoned).
    pub async fn commit_upload(&self, id: ObjectId, size: u64) -> Result<Option<Job>, Error> {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let sql = format!(
            "UPDATE jobs SET \
               state = CASE WHEN live_until > now() THEN 'converting' ELSE 'queued' END, \
               lease_holder = CASE WHEN live_until > now() THEN live_holder END, \
               lease_until = CASE WHEN live_until > now() THEN live_until END, \
               progress = CASE WHEN live_until > now() THEN 0 END, \
               live_holder = NULL, live_until = NULL, writer = NULL, writer_until = NULL, \
               received_bytes = coalesce(upload_length, 0), upload_tail = NULL, \
               size_bytes = $2, updated_at = now() \
             WHERE id = $1 AND state = 'uploading' RETURNING {COLUMNS}"
        );
        self.move_and_announce(&sql, &[&id.to_hex(), &size], |job, routes| {
            outbox::Event::video_uploaded(job, routes)
        })
        .await
    }

    /// Removes the job of an upload that did not complete.
    pub async fn discard_upload(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "DELETE FROM jobs WHERE id = $1 AND state = 'uploading'",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }
}
