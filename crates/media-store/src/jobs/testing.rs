//! Jobs set up as tests need them (the `testing` feature).

use super::{COLUMNS, Error, FailureKind, Job, JobState, Jobs};
use crate::options::OutputOptions;
use deadpool_postgres::GenericClient;
use mongodb::bson::oid::ObjectId;
use std::time::SystemTime;

/// Setting jobs up as a test needs them, state and all (the `testing`
/// feature; never used by the services).
impl Jobs {
    /// Writes `job` as it is, every column.
    pub async fn insert(&self, job: &Job) -> Result<(), Error> {
        let options = serde_json::to_value(&job.options)
            .map_err(|e| Error::Other(format!("encoding options: {e}")))?;
        let client = self.pool.get().await?;
        client
            .execute(
                &format!(
                    "INSERT INTO jobs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                     $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)"
                ),
                &[
                    &job.id.to_hex(),
                    &job.owner_id,
                    &job.owner_email,
                    &job.filename,
                    &job.content_type,
                    &job.size_bytes,
                    &job.state.as_str(),
                    &options,
                    &job.mp3_id.map(|i| i.to_hex()),
                    &job.mp3_size_bytes,
                    &job.duration_seconds,
                    &job.failure_reason,
                    &job.failure_kind.map(FailureKind::as_str),
                    &job.notes,
                    &job.progress,
                    &job.lease_holder,
                    &job.lease_until,
                    &job.live_holder,
                    &job.live_until,
                    &job.republished,
                    &job.notified,
                    &job.announced_at,
                    &job.reannounced,
                    &job.source_deleted,
                    &job.created_at,
                    &job.updated_at,
                    &job.expires_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// Every job, oldest first.
    pub async fn all(&self) -> Result<Vec<Job>, Error> {
        self.many(&format!("SELECT {COLUMNS} FROM jobs ORDER BY id"), &[])
            .await
    }

    /// Events written so far: (kind, event id, sent).
    pub async fn events(&self) -> Result<Vec<(String, String, bool)>, Error> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                "SELECT kind, event_id, sent_at IS NOT NULL FROM outbox ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}
impl Job {
    /// A new job for an upload that is starting (set the rest as the test
    /// needs).
    pub fn uploading(
        id: ObjectId,
        owner_id: &str,
        owner_email: &str,
        filename: &str,
        content_type: &str,
        options: OutputOptions,
    ) -> Self {
        let now = SystemTime::now();
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
            notes: Vec::new(),
            progress: None,
            lease_holder: None,
            lease_until: None,
            live_holder: None,
            live_until: None,
            republished: 0,
            notified: false,
            announced_at: None,
            reannounced: 0,
            source_deleted: false,
            created_at: now,
            updated_at: now,
            expires_at: None,
        }
    }
}
