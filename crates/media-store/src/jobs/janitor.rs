//! The janitor's queries: retention, jobs whose message or notification
//! may be lost, abandoned uploads, orphaned files, and the named lease that
//! lets one replica at a time do it.

use super::{COLUMNS, Error, Job, Jobs, millis, oid, qualified};
use crate::outbox;
use deadpool_postgres::{GenericClient, Pool};
use mongodb::bson::oid::ObjectId;
use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

/// An upload given up (`$1`: when a streaming upload's heartbeat must have
/// come by).
const ABANDONED: &str = "state = 'uploading' AND \
    ((upload_length IS NULL AND updated_at <= $1) \
     OR (upload_length IS NOT NULL AND upload_expires_at <= now() \
         AND (writer_until IS NULL OR writer_until < now())))";
impl Jobs {
    /// Records that the uploaded videos of these jobs are gone.
    pub async fn mark_sources_deleted(&self, ids: &[ObjectId]) -> Result<(), Error> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_hex()).collect();
        self.count(
            "UPDATE jobs SET source_deleted = true WHERE id = ANY($1) AND NOT source_deleted",
            &[&ids],
        )
        .await
        .map(drop)
    }

    /// Retention: up to `limit` done jobs whose MP3 expired become tombstones;
    /// the jobs as they were.
    pub async fn expire_due(&self, limit: i64) -> Result<Vec<Job>, Error> {
        self.many(
            &format!(
                "WITH due AS (SELECT * FROM jobs WHERE state = 'done' AND expires_at <= now() \
                   ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE jobs j SET state = 'deleted', updated_at = now() \
                 FROM due WHERE j.id = due.id RETURNING {}",
                qualified("due")
            ),
            &[&limit],
        )
        .await
    }

    /// Jobs queued or converting without a live lease that have not moved
    /// since `before`: their message may be lost.
    pub async fn stuck(&self, before: SystemTime, limit: i64) -> Result<Vec<Job>, Error> {
        self.many(
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'converting') \
                   AND updated_at <= $1 AND (lease_until IS NULL OR lease_until < now()) \
                 ORDER BY updated_at LIMIT $2"
            ),
            &[&before, &limit],
        )
        .await
    }

    /// Puts a stuck job's `VideoUploaded` out again (the same event id),
    /// unless it moved meanwhile; whether it did.
    pub async fn republish(&self, id: ObjectId, before: SystemTime) -> Result<bool, Error> {
        let sql = format!(
            "UPDATE jobs SET republished = republished + 1, updated_at = now() \
             WHERE id = $1 AND state IN ('queued', 'converting') AND updated_at <= $2 \
               AND (lease_until IS NULL OR lease_until < now()) \
             RETURNING {COLUMNS}"
        );
        Ok(self
            .move_and_announce(&sql, &[&id.to_hex(), &before], |job, routes| {
                outbox::Event::video_uploaded(job, routes)
            })
            .await?
            .is_some())
    }

    /// Finished jobs whose outcome went out before `before` (and is not
    /// waiting in the outbox still) with no receipt back, announced again at
    /// most `max` times so far.
    pub async fn unnotified(
        &self,
        before: SystemTime,
        max: i32,
        limit: i64,
    ) -> Result<Vec<Job>, Error> {
        self.many(
            &format!(
                "SELECT {COLUMNS} FROM jobs j WHERE state IN ('done', 'failed') AND NOT notified \
                   AND announced_at <= $1 AND reannounced <= $2 \
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id AND o.sent_at IS NULL) \
                 ORDER BY announced_at LIMIT $3"
            ),
            &[&before, &max, &limit],
        )
        .await
    }

    /// Announces a finished job's outcome again (the same event id: notify
    /// sends one email per id), counting it.
    pub async fn reannounce(&self, id: ObjectId) -> Result<bool, Error> {
        let sql = format!(
            "UPDATE jobs SET reannounced = reannounced + 1, announced_at = now() \
             WHERE id = $1 AND state IN ('done', 'failed') AND NOT notified \
             RETURNING {COLUMNS}"
        );
        Ok(self
            .move_and_announce(&sql, &[&id.to_hex()], outbox::Event::outcome)
            .await?
            .is_some())
    }

    /// Counts a last announcement as given up (no receipt ever came): the
    /// job is not looked at again.
    pub async fn give_up_notifying(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "UPDATE jobs SET reannounced = reannounced + 1 WHERE id = $1",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }

    /// Uploads given up: streaming ones whose heartbeat stopped before
    /// `before`, resumable ones past their expiry with nobody appending.
    pub async fn abandoned_uploads(
        &self,
        before: SystemTime,
        limit: i64,
    ) -> Result<Vec<Job>, Error> {
        self.many(
            &format!("SELECT {COLUMNS} FROM jobs WHERE {ABANDONED} ORDER BY updated_at LIMIT $2"),
            &[&before, &limit],
        )
        .await
    }

    /// Removes the job of an abandoned upload if it still is one (an upload
    /// resumed in the meantime is kept); its chunks go after.
    pub async fn remove_abandoned(&self, id: ObjectId, before: SystemTime) -> Result<bool, Error> {
        self.count(
            &format!("DELETE FROM jobs WHERE id = $2 AND {ABANDONED}"),
            &[&before, &id.to_hex()],
        )
        .await
        .map(|n| n > 0)
    }

    /// Finished jobs (since before `before`) whose source is still stored.
    pub async fn sources_to_delete(
        &self,
        before: SystemTime,
        limit: i64,
    ) -> Result<Vec<ObjectId>, Error> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed') AND NOT source_deleted \
                   AND updated_at <= $1 ORDER BY updated_at LIMIT $2",
            )
            .await?;
        client
            .query(&stmt, &[&before, &limit])
            .await?
            .iter()
            .map(|r| oid(r.try_get(0)?))
            .collect()
    }

    /// Tombstones older than `before`.
    pub async fn old_tombstones(&self, before: SystemTime, limit: i64) -> Result<Vec<Job>, Error> {
        self.many(
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE state = 'deleted' AND updated_at <= $1 \
                 ORDER BY updated_at LIMIT $2"
            ),
            &[&before, &limit],
        )
        .await
    }

    /// Removes a tombstone for good (its files are gone).
    pub async fn purge_tombstone(&self, id: ObjectId) -> Result<(), Error> {
        self.count(
            "DELETE FROM jobs WHERE id = $1 AND state = 'deleted'",
            &[&id.to_hex()],
        )
        .await
        .map(drop)
    }

    /// Which of `ids` belong to a job that is not deleted (files of the
    /// others are orphans).
    pub async fn live_ids(&self, ids: &[ObjectId]) -> Result<HashSet<ObjectId>, Error> {
        let hex: Vec<String> = ids.iter().map(|i| i.to_hex()).collect();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT id FROM jobs WHERE id = ANY($1) AND state <> 'deleted'")
            .await?;
        client
            .query(&stmt, &[&hex])
            .await?
            .iter()
            .map(|r| oid(r.try_get(0)?))
            .collect()
    }

    /// Forgets sent events older than `before`.
    pub async fn purge_sent_events(&self, before: SystemTime) -> Result<u64, Error> {
        self.count(
            "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1",
            &[&before],
        )
        .await
    }

    /// A named lease on this database (see [`Lease`]).
    pub fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Lease {
        Lease {
            pool: self.pool.clone(),
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl,
        }
    }
}

/// A named lease: whoever holds it may act, one holder at a time; it lapses
/// by itself if its holder dies.
#[derive(Debug, Clone)]
pub struct Lease {
    pool: Pool,
    name: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// Takes or renews the lease; false if another holds it.
    pub async fn acquire(&self) -> Result<bool, Error> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO leases (name, holder, until) \
                 VALUES ($1, $2, now() + $3 * interval '1 ms') \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
                 WHERE leases.until < now() OR leases.holder = excluded.holder \
                 RETURNING holder",
            )
            .await?;
        Ok(client
            .query_opt(&stmt, &[&self.name, &self.holder, &millis(self.ttl)])
            .await?
            .is_some())
    }

    /// Gives the lease up (shutdown), so another replica takes over at once.
    pub async fn release(&self) -> Result<(), Error> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[&self.name, &self.holder],
            )
            .await?;
        Ok(())
    }
}
