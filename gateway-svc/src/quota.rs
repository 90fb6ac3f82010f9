//! Per-user quotas, checked before a byte is stored: uploads at once, jobs
//! waiting for a converter, and bytes stored (videos not yet deleted and
//! MP3s). Counted from the jobs collection, so they hold across gateway
//! replicas; two uploads racing for the last slot may both be refused, never
//! both accepted.

use crate::{error::store_error, media::human_bytes};
use futures::TryStreamExt;
use media_store::{
    Store,
    mongodb::bson::{DateTime, Document, doc},
};
use std::time::{Duration, SystemTime};
use tonic::Status;

#[derive(Debug, Clone)]
pub(crate) struct Quotas {
    pub(crate) max_uploads: u64,
    pub(crate) max_waiting: u64,
    pub(crate) max_stored: u64,
}

/// An upload whose job has not been touched for this long is dead (its
/// heartbeat is every 30 s) and no longer counts.
const UPLOAD_ALIVE: Duration = Duration::from_secs(90);

fn exceeded(what: String) -> Status {
    metrics::counter!("mp3converter_gateway_quota_refusals_total").increment(1);
    Status::resource_exhausted(format!("quota exceeded: {what}"))
}

impl Quotas {
    /// Jobs waiting and bytes stored, before a new upload starts; returns how
    /// many bytes the user may still store.
    pub(crate) async fn check_new_upload(
        &self,
        store: &Store,
        user: &str,
        declared: u64,
    ) -> Result<u64, Status> {
        let waiting = store
            .jobs
            .coll
            .count_documents(
                doc! { "owner_id": user, "state": { "$in": ["queued", "converting"] } },
            )
            .await
            .map_err(|e| store_error("counting jobs", &e))?;
        if waiting >= self.max_waiting {
            return Err(exceeded(format!(
                "at most {} jobs may wait for conversion per user; wait for some to finish",
                self.max_waiting
            )));
        }
        let used = self.stored(store, user).await?;
        let room = self.max_stored.saturating_sub(used);
        if room == 0 || declared > room {
            return Err(exceeded(format!(
                "at most {} may be stored per user ({} used); delete some jobs",
                human_bytes(self.max_stored),
                human_bytes(used)
            )));
        }
        Ok(room)
    }

    /// Uploads at once, counting the one just recorded.
    pub(crate) async fn check_concurrent(&self, store: &Store, user: &str) -> Result<(), Status> {
        let alive = DateTime::from_system_time(SystemTime::now() - UPLOAD_ALIVE);
        let uploading = store
            .jobs
            .coll
            .count_documents(
                doc! { "owner_id": user, "state": "uploading", "updated_at": { "$gt": alive } },
            )
            .await
            .map_err(|e| store_error("counting uploads", &e))?;
        if uploading > self.max_uploads {
            return Err(exceeded(format!(
                "at most {} uploads at once per user",
                self.max_uploads
            )));
        }
        Ok(())
    }

    /// An upload that grew past the user's storage quota.
    pub(crate) fn stored_exceeded(&self) -> Status {
        exceeded(format!(
            "at most {} may be stored per user; delete some jobs",
            human_bytes(self.max_stored)
        ))
    }

    /// Bytes the user's jobs hold: videos not yet deleted, and MP3s.
    async fn stored(&self, store: &Store, user: &str) -> Result<u64, Status> {
        let jobs: Vec<Document> = store
            .jobs
            .coll
            .clone_with_type::<Document>()
            .find(doc! { "owner_id": user, "state": { "$ne": "deleted" } })
            .projection(doc! { "size_bytes": 1, "mp3_size_bytes": 1, "source_deleted": 1 })
            .await
            .map_err(|e| store_error("summing stored bytes", &e))?
            .try_collect()
            .await
            .map_err(|e| store_error("summing stored bytes", &e))?;
        let n = |d: &Document, k: &str| match d.get(k) {
            Some(media_store::mongodb::bson::Bson::Int64(v)) => u64::try_from(*v).unwrap_or(0),
            Some(media_store::mongodb::bson::Bson::Int32(v)) => u64::try_from(*v).unwrap_or(0),
            _ => 0,
        };
        Ok(jobs
            .iter()
            .map(|d| {
                let video = if d.get_bool("source_deleted").unwrap_or(false) {
                    0
                } else {
                    n(d, "size_bytes")
                };
                video + n(d, "mp3_size_bytes")
            })
            .sum())
    }
}
