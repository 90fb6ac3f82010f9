//! What an owner sees of their jobs, and deleting one.

use super::{COLUMNS, Error, Job, JobState, Jobs, qualified};
use mongodb::bson::oid::ObjectId;

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
impl Jobs {
    /// A job as its owner may see it.
    pub async fn get_visible(&self, id: ObjectId, owner: &str) -> Result<Option<Job>, Error> {
        Ok(self
            .one(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND owner_id = $2"),
                &[&id.to_hex(), &owner],
            )
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
        // 'g' sorts after every hex digit: no `before` means from the top.
        let before = before.map_or_else(|| "g".to_owned(), |b| b.to_hex());
        self.many(
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE owner_id = $1 AND id < $2 \
                 AND state IN ('queued', 'converting', 'done', 'failed') \
                 ORDER BY id DESC LIMIT $3"
            ),
            &[&owner, &before, &limit],
        )
        .await
    }

    /// The owner deletes a job (any visible state): it becomes a tombstone,
    /// so a converter still at work loses its lease and a repeated delete is
    /// recognised.
    pub async fn delete(&self, id: ObjectId, owner: &str) -> Result<Deleted, Error> {
        let before = self
            .one(
                &format!(
                    "WITH old AS (SELECT * FROM jobs WHERE id = $1 AND owner_id = $2 FOR UPDATE) \
                     UPDATE jobs j SET state = 'deleted', lease_holder = NULL, lease_until = NULL, \
                       progress = NULL, updated_at = now() \
                     FROM old WHERE j.id = old.id \
                       AND old.state IN ('queued', 'converting', 'done', 'failed') \
                     RETURNING {}",
                    qualified("old")
                ),
                &[&id.to_hex(), &owner],
            )
            .await?;
        if let Some(job) = before {
            return Ok(Deleted::Now(Box::new(job)));
        }
        let now = self
            .one(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND owner_id = $2"),
                &[&id.to_hex(), &owner],
            )
            .await?;
        Ok(match now {
            Some(j) if j.state == JobState::Deleted => Deleted::Already,
            _ => Deleted::NotFound,
        })
    }
}
