//! The job as stored: its states, why it failed, its row.

use crate::db::Error;
use crate::options::OutputOptions;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use tokio_postgres::Row;

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

    pub(crate) fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "uploading" => Self::Uploading,
            "queued" => Self::Queued,
            "converting" => Self::Converting,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "deleted" => Self::Deleted,
            other => return Err(Error::Other(format!("unknown job state {other:?}"))),
        })
    }
}

/// Why a job failed, for what the user is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The input cannot be converted.
    InvalidInput,
    /// Every retry failed for a reason of ours.
    RetriesExhausted,
    /// It did not finish in time.
    TimedOut,
}

impl FailureKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::RetriesExhausted => "retries_exhausted",
            Self::TimedOut => "timed_out",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "invalid_input" => Some(Self::InvalidInput),
            "retries_exhausted" => Some(Self::RetriesExhausted),
            "timed_out" => Some(Self::TimedOut),
            _ => None,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Also the video's GridFS id.
    pub id: ObjectId,
    pub owner_id: String,
    pub owner_email: String,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub state: JobState,
    pub options: OutputOptions,
    pub mp3_id: Option<ObjectId>,
    pub mp3_size_bytes: Option<i64>,
    pub duration_seconds: Option<f64>,
    pub failure_reason: Option<String>,
    pub failure_kind: Option<FailureKind>,
    /// What the user should know about the outcome.
    pub notes: Vec<String>,
    /// Conversion progress, 0 to 100.
    pub progress: Option<f64>,
    pub lease_holder: Option<String>,
    pub lease_until: Option<SystemTime>,
    pub live_holder: Option<String>,
    pub live_until: Option<SystemTime>,
    /// How often the janitor put the job's event out again.
    pub republished: i32,
    /// Whether notify-svc's receipt came back: the user was told.
    pub notified: bool,
    /// When the outcome was last put in the outbox.
    pub announced_at: Option<SystemTime>,
    /// How often the janitor announced the outcome again for want of a
    /// receipt.
    pub reannounced: i32,
    /// Whether the uploaded video has been deleted (retention).
    pub source_deleted: bool,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// When the MP3 (and the job) will be deleted.
    pub expires_at: Option<SystemTime>,
}

pub(crate) const COLUMNS: &str = "id, owner_id, owner_email, filename, content_type, size_bytes, state, \
    options, mp3_id, mp3_size_bytes, duration_seconds, failure_reason, failure_kind, notes, \
    progress, lease_holder, lease_until, live_holder, live_until, republished, notified, \
    announced_at, reannounced, source_deleted, created_at, updated_at, expires_at";

pub(crate) fn oid(s: &str) -> Result<ObjectId, Error> {
    ObjectId::parse_str(s)
        .map_err(|_| Error::Other(format!("a stored id is not an ObjectId: {s:?}")))
}

impl Job {
    pub(crate) fn from_row(r: &Row) -> Result<Self, Error> {
        let options: serde_json::Value = r.try_get("options")?;
        Ok(Self {
            id: oid(r.try_get("id")?)?,
            owner_id: r.try_get("owner_id")?,
            owner_email: r.try_get("owner_email")?,
            filename: r.try_get("filename")?,
            content_type: r.try_get("content_type")?,
            size_bytes: r.try_get("size_bytes")?,
            state: JobState::parse(r.try_get("state")?)?,
            options: serde_json::from_value(options)
                .map_err(|e| Error::Other(format!("stored options: {e}")))?,
            mp3_id: r
                .try_get::<_, Option<&str>>("mp3_id")?
                .map(oid)
                .transpose()?,
            mp3_size_bytes: r.try_get("mp3_size_bytes")?,
            duration_seconds: r.try_get("duration_seconds")?,
            failure_reason: r.try_get("failure_reason")?,
            failure_kind: r
                .try_get::<_, Option<&str>>("failure_kind")?
                .and_then(FailureKind::parse),
            notes: r.try_get("notes")?,
            progress: r.try_get("progress")?,
            lease_holder: r.try_get("lease_holder")?,
            lease_until: r.try_get("lease_until")?,
            live_holder: r.try_get("live_holder")?,
            live_until: r.try_get("live_until")?,
            republished: r.try_get("republished")?,
            notified: r.try_get("notified")?,
            announced_at: r.try_get("announced_at")?,
            reannounced: r.try_get("reannounced")?,
            source_deleted: r.try_get("source_deleted")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            expires_at: r.try_get("expires_at")?,
        })
    }

    pub(crate) fn from_rows(rows: &[Row]) -> Result<Vec<Self>, Error> {
        rows.iter().map(Self::from_row).collect()
    }

    /// Whether another instance holds a lease that has not run out.
    pub fn leased_by_other(&self, instance: &str, now: SystemTime) -> Option<SystemTime> {
        match (&self.lease_holder, self.lease_until) {
            (Some(holder), Some(until)) if holder != instance && until > now => Some(until),
            _ => None,
        }
    }
}

/// Every column of `table` (an alias in a statement), in [`COLUMNS`] order.
pub(crate) fn qualified(table: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{table}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
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
        for s in [
            JobState::Uploading,
            JobState::Queued,
            JobState::Converting,
            JobState::Done,
            JobState::Failed,
            JobState::Deleted,
        ] {
            assert_eq!(JobState::parse(s.as_str()).unwrap(), s);
        }
    }

    #[test]
    fn columns_qualify_in_order() {
        let q = qualified("old");
        assert!(q.starts_with("old.id, old.owner_id,"), "{q}");
        assert_eq!(q.matches("old.").count(), COLUMNS.split(", ").count());
    }
}
