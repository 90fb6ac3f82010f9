//! Deletes the sources of converted videos off the job's path, many at once.
//!
//! Once the job is done (its `Mp3Ready` in the outbox), the source is only
//! retention's business: deleting it is not part of the conversion, so the
//! delivery is acked and the slot freed without waiting for it. Whatever is not deleted here (a crash, a full queue, an error),
//! the gateway's janitor deletes later: it looks for finished jobs whose
//! source is still stored.

use media_store::{Jobs, Store, mongodb::bson::oid::ObjectId};
use tokio::sync::mpsc;

/// Sources waiting to be deleted; beyond that they are left to the janitor.
const QUEUED: usize = 1024;

/// Sources per delete query.
const BATCH: usize = 256;

/// Hands sources to the sweeper task ([`run`]).
#[derive(Debug, Clone)]
pub(crate) struct Sweeper {
    tx: mpsc::Sender<ObjectId>,
}

impl Sweeper {
    pub(crate) fn new() -> (Self, mpsc::Receiver<ObjectId>) {
        let (tx, rx) = mpsc::channel(QUEUED);
        (Self { tx }, rx)
    }

    /// Queues the source of job `id` for deletion; never waits.
    pub(crate) fn delete(&self, id: ObjectId) {
        if self.tx.try_send(id).is_err() {
            tracing::debug!(job_id = %id, "source delete queue full or closed; left to the janitor");
        }
    }
}

/// Deletes queued sources until every [`Sweeper`] is dropped and the queue
/// is empty (so a graceful stop deletes what was queued).
pub(crate) async fn run(store: Store, jobs: Jobs, mut rx: mpsc::Receiver<ObjectId>) {
    let mut ids = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut ids, BATCH).await > 0 {
        sweep(&store, &jobs, &ids).await;
        ids.clear();
    }
}

#[tracing::instrument(skip_all, fields(sources = ids.len()))]
async fn sweep(store: &Store, jobs: &Jobs, ids: &[ObjectId]) {
    let deleted = async {
        store.delete_videos(ids).await.map_err(|e| e.to_string())?;
        jobs.mark_sources_deleted(ids)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match deleted {
        Ok(()) => {
            metrics::counter!("mp3converter_sources_deleted_total").increment(ids.len() as u64)
        }
        Err(e) => tracing::warn!(
            sources = ids.len(),
            error = %e,
            "deleting converted sources failed; the janitor deletes them later"
        ),
    }
}
