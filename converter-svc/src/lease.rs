//! What runs beside a conversion so the handler need not: the job's lease
//! kept alive ([`LeaseGuard`]) and its progress written ([`Progress`]).

use media_store::{Jobs, mongodb::bson::oid::ObjectId};
use std::{future::Future, time::Duration};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Renews a job's lease every third of its TTL until dropped (a live
/// conversion renews its live claim until the commit, the job's lease
/// after it). [`LeaseGuard::lost`] completes once a renewal finds the lease
/// gone: the job was deleted, or taken over after we failed to renew in time.
#[derive(Debug)]
pub(crate) struct LeaseGuard {
    lost: CancellationToken,
    renewer: JoinHandle<()>,
}

impl LeaseGuard {
    pub(crate) fn start(
        jobs: Jobs,
        id: ObjectId,
        holder: String,
        ttl: Duration,
        live: bool,
    ) -> Self {
        let lost = CancellationToken::new();
        let renewer = tokio::spawn({
            let lost = lost.clone();
            async move {
                let mut tick = tokio::time::interval(ttl / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let renewed = async {
                        if live && jobs.renew_live(id, &holder, ttl).await? {
                            return Ok(true);
                        }
                        jobs.renew(id, &holder, ttl).await
                    };
                    match renewed.await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(job_id = %id, "lost the job's lease");
                            lost.cancel();
                            return;
                        }
                        // Tried again at the next tick; the lease outlives a
                        // few failures.
                        Err(e) => {
                            tracing::warn!(job_id = %id, error = %e, "renewing the lease failed");
                        }
                    }
                }
            }
        });
        Self { lost, renewer }
    }

    /// Completes when the lease is lost.
    pub(crate) async fn lost(&self) {
        self.lost.cancelled().await;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Writes a conversion's progress from a task of its own, in order, the
/// latest value winning when the writes are slower than ffmpeg reports.
#[derive(Debug)]
pub(crate) struct Progress {
    latest: watch::Sender<Option<f64>>,
    writer: JoinHandle<()>,
}

impl Progress {
    /// `write` records one percentage (and tells whoever watches).
    pub(crate) fn start<F, Fut>(mut write: F) -> Self
    where
        F: FnMut(f64) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (latest, mut rx) = watch::channel(None::<f64>);
        let writer = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let percent = *rx.borrow_and_update();
                if let Some(percent) = percent {
                    write(percent).await;
                }
            }
        });
        Self { latest, writer }
    }

    pub(crate) fn report(&self, percent: f64) {
        let _ = self.latest.send(Some(percent));
    }

    /// Waits for the last report to be written, so no watcher sees
    /// "converting" after the job is done.
    pub(crate) async fn finish(self) {
        drop(self.latest);
        let _ = self.writer.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn the_last_report_is_written_before_finish_returns() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let progress = Progress::start({
            let written = written.clone();
            move |p| {
                let written = written.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    written.lock().unwrap().push(p);
                }
            }
        });
        for p in [10.0, 20.0, 30.0, 99.5] {
            progress.report(p);
        }
        progress.finish().await;
        let written = written.lock().unwrap().clone();
        assert_eq!(written.last(), Some(&99.5), "{written:?}");
        assert!(
            written.windows(2).all(|w| w[0] < w[1]),
            "in order: {written:?}"
        );
    }
}
