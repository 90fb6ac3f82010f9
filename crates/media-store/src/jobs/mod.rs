//! The conversion job and its state machine, in PostgreSQL (the `media`
//! database; migrations in `migrations/`). This module owns the schema and
//! every query; services call its typed methods. Every move is one
//! statement whose `WHERE` says who may make it, so competing gateways,
//! converters and the janitor can never both win (the row lock and
//! PostgreSQL's re-check of the `WHERE` after it make that so):
//!
//! ```text
//!  uploading ──commit──► queued ──claim──► converting ──► done
//!      │                   ▲                   │  │
//!      └─ abandoned        └──── release ──────┘  └────► failed
//!         (removed)
//!  any state ──owner deletes / retention──► deleted (a tombstone)
//! ```
//!
//! A converter may also claim an `uploading` job (a *live* claim,
//! [`Jobs::claim_live`]) and convert the video while it arrives; the commit
//! then hands the job to it (`uploading ──commit──► converting`, under the
//! claim's lease) instead of queueing it.
//!
//! `done`, `failed` and `deleted` are terminal. A job being converted carries
//! a lease that its converter renews while it works; only the lease holder
//! may finish a job, or anyone once no live lease exists (the holder died).
//! Leases run on the database's clock, so converters' clocks do not matter.
//! `uploading` and `deleted` jobs are internal: users never see them.
//!
//! The events that follow a transition (`VideoUploaded` at the commit,
//! `Mp3Ready`/`ConversionFailed` at the finish) are written to the
//! [`outbox`](crate::outbox) in the transition's own transaction.
//!
//! By concern: `crate::job` (the job as stored and its states), `upload`
//! (starting and committing uploads, quotas), `convert` (claims, leases and
//! outcomes), `owner` (what owners see and delete), `janitor` (retention,
//! lost messages and notifications, abandoned uploads, the named [`Lease`]);
//! resumable uploads' offsets are in [`crate::resumable`].

use crate::{
    job::{COLUMNS, oid, qualified},
    outbox,
};
use mongodb::bson::oid::ObjectId;
use std::time::Duration;

mod convert;
mod janitor;
mod owner;
#[cfg(feature = "testing")]
mod testing;
mod upload;

pub use crate::db::{DatabaseArgs, Error, Jobs, Routes};
pub use crate::job::{FailureKind, Job, JobState};
pub use convert::{Claim, Finish, Mp3Facts};
pub use janitor::Lease;
pub use owner::Deleted;
pub use upload::{NewUpload, OverQuota, Quotas, Started, UPLOAD_ALIVE};

impl Jobs {
    async fn one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Job>, Error> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(sql).await?;
        client
            .query_opt(&stmt, params)
            .await?
            .as_ref()
            .map(Job::from_row)
            .transpose()
    }

    async fn many(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Job>, Error> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(sql).await?;
        Job::from_rows(&client.query(&stmt, params).await?)
    }

    async fn count(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, Error> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.execute(&stmt, params).await?)
    }

    /// A transition and the event that follows it, in one transaction.
    /// `event` builds the event from the moved job; nothing is written if the
    /// job did not move.
    async fn move_and_announce(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        event: impl FnOnce(&Job, &Routes) -> outbox::Event,
    ) -> Result<Option<Job>, Error> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let stmt = tx.prepare_cached(sql).await?;
        let Some(row) = tx.query_opt(&stmt, params).await? else {
            return Ok(None);
        };
        let job = Job::from_row(&row)?;
        let event = event(&job, &self.routes);
        outbox::write(&tx, &event).await?;
        if event.is_outcome() {
            crate::webhooks::schedule_outcome(
                &tx,
                &job,
                &event.event_id,
                &self.routes.webhook_queue,
            )
            .await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        Ok(Some(job))
    }

    pub async fn get(&self, id: ObjectId) -> Result<Option<Job>, Error> {
        self.one(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"),
            &[&id.to_hex()],
        )
        .await
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
