//! Live job changes for watchers (MediaService.WatchJobs, and through it the
//! REST edge's Server-Sent Events and the web app).
//!
//! Every replica listens to the `job-events` fanout exchange through a queue
//! of its own ([`amqp_kit::broadcast`]), so whichever replica a watcher is
//! connected to sees every change, from converters and from other gateways.
//! The [`Hub`] hands each change to the watchers of the job's owner: one
//! bounded broadcast channel per user with watchers, none polling MongoDB. A
//! watcher that falls behind loses the changes it missed and is told to
//! resync (list again); so is everyone after the listener reconnects.

use mp3converter_proto::{EventType, events::v1::JobChanged};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::sync::broadcast;

/// What a watcher receives.
#[derive(Debug, Clone)]
pub(crate) enum Update {
    Changed(Arc<JobChanged>),
    /// Changes may have been missed: list again.
    Resync,
}

/// Changes kept per user for a slow watcher before it must resync.
const PER_USER_BUFFER: usize = 64;

#[derive(Debug, Clone, Default)]
pub(crate) struct Hub {
    users: Arc<Mutex<HashMap<String, broadcast::Sender<Update>>>>,
}

/// A watcher's subscription; leaving drops the user's channel once unused.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) rx: broadcast::Receiver<Update>,
    hub: Hub,
    owner: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!("mp3converter_gateway_watchers").decrement(1.0);
        let mut users = self.hub.lock();
        if users
            .get(&self.owner)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            users.remove(&self.owner);
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Update>>> {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts following `owner`'s changes; `None` if they already have
    /// `max` watchers here.
    pub(crate) fn subscribe(&self, owner: &str, max: usize) -> Option<Subscription> {
        let mut users = self.lock();
        let tx = users
            .entry(owner.to_owned())
            .or_insert_with(|| broadcast::channel(PER_USER_BUFFER).0);
        if tx.receiver_count() >= max {
            return None;
        }
        let rx = tx.subscribe();
        drop(users);
        metrics::gauge!("mp3converter_gateway_watchers").increment(1.0);
        Some(Subscription {
            rx,
            hub: self.clone(),
            owner: owner.to_owned(),
        })
    }

    /// Hands a change to its owner's watchers, if any are here.
    pub(crate) fn publish(&self, change: JobChanged) {
        if let Some(tx) = self.lock().get(&change.owner_id) {
            let _ = tx.send(Update::Changed(Arc::new(change)));
        }
    }

    /// Tells every watcher to list again.
    pub(crate) fn resync_all(&self) {
        for tx in self.lock().values() {
            let _ = tx.send(Update::Resync);
        }
    }

    /// What the exchange listener heard.
    pub(crate) fn heard(&self, heard: amqp_kit::broadcast::Heard) {
        use amqp_kit::broadcast::Heard;
        match heard {
            Heard::Connected => self.resync_all(),
            Heard::Message { kind, payload } if kind == JobChanged::TYPE => {
                match <JobChanged as prost::Message>::decode(payload.as_slice()) {
                    Ok(change) => self.publish(change),
                    Err(e) => tracing::warn!(error = %e, "undecodable JobChanged"),
                }
            }
            Heard::Message { kind, .. } => tracing::debug!(%kind, "ignoring a notification"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp3converter_proto::media::v1::Job;

    fn change(owner: &str, id: &str) -> JobChanged {
        JobChanged {
            owner_id: owner.into(),
            job: Some(Job {
                job_id: id.into(),
                ..Default::default()
            }),
            deleted: false,
        }
    }

    #[tokio::test]
    async fn watchers_get_their_own_changes_only() {
        let hub = Hub::default();
        let mut a = hub.subscribe("alice", 4).unwrap();
        let mut b = hub.subscribe("bob", 4).unwrap();
        hub.publish(change("alice", "1"));
        match a.rx.recv().await.unwrap() {
            Update::Changed(c) => assert_eq!(c.job.as_ref().unwrap().job_id, "1"),
            u => panic!("{u:?}"),
        }
        assert!(b.rx.try_recv().is_err(), "bob sees nothing of alice's");
        hub.resync_all();
        assert!(matches!(b.rx.recv().await.unwrap(), Update::Resync));
    }

    #[tokio::test]
    async fn a_slow_watcher_lags_instead_of_growing_memory() {
        let hub = Hub::default();
        let mut slow = hub.subscribe("carol", 4).unwrap();
        for i in 0..(PER_USER_BUFFER * 3) {
            hub.publish(change("carol", &i.to_string()));
        }
        assert!(matches!(
            slow.rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }

    #[test]
    fn watchers_per_user_are_limited_and_channels_go_with_them() {
        let hub = Hub::default();
        let one = hub.subscribe("dave", 2).unwrap();
        let two = hub.subscribe("dave", 2).unwrap();
        assert!(hub.subscribe("dave", 2).is_none());
        drop(one);
        drop(two);
        assert!(hub.lock().is_empty(), "no channel kept for nobody");
    }
}
