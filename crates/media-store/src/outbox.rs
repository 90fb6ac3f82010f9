//! The transactional outbox: an event that follows a transition is written
//! in the transition's own transaction ([`write`]), so the two commit
//! together or not at all; the [`Relay`] publishes what is written, with
//! publisher confirms, and marks it sent. A crash between the publish and
//! the mark sends the event twice: consumers deduplicate by event id (the
//! converter looks at the job, notify-svc keeps a sent-log).
//!
//! Every service that writes events runs a relay; relays share the work
//! through `FOR UPDATE SKIP LOCKED`, so an event is published by one of them
//! at a time. A relay wakes when its own process writes an event and every
//! [`POLL`] otherwise (events written elsewhere, a broker that was down).

pub use crate::db::Signal;
use crate::{
    db::{Error, Jobs, Routes},
    job::{Job, JobState},
};
use amqp_kit::{Publisher, event_properties};
use deadpool_postgres::{Pool, Transaction};
use mp3converter_proto::{
    EventType,
    events::v1::{ConversionFailed, Mp3Ready, VideoUploaded},
};
use std::{collections::HashMap, time::Duration};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often a relay looks for events nobody woke it for.
pub const POLL: Duration = Duration::from_secs(1);

/// Events published per transaction.
const BATCH: i64 = 64;

/// An event to publish.
#[derive(Debug, Clone)]
pub struct Event {
    pub queue: String,
    pub kind: &'static str,
    pub event_id: String,
    pub job_id: Option<String>,
    pub payload: Vec<u8>,
}

impl Event {
    /// An `Mp3Ready` or `ConversionFailed`: the users' webhooks hear of it.
    pub fn is_outcome(&self) -> bool {
        self.kind == Mp3Ready::TYPE || self.kind == ConversionFailed::TYPE
    }

    /// The job's `VideoUploaded`, for the converters.
    pub fn video_uploaded(job: &Job, routes: &Routes) -> Self {
        let e = crate::proto::video_uploaded(job);
        Self {
            queue: routes.video_queue.clone(),
            kind: VideoUploaded::TYPE,
            event_id: e.event_id.clone(),
            job_id: Some(job.id.to_hex()),
            payload: prost::Message::encode_to_vec(&e),
        }
    }

    /// A finished job's outcome (`Mp3Ready` or `ConversionFailed`), for
    /// notify-svc.
    pub fn outcome(job: &Job, routes: &Routes) -> Self {
        let (kind, event_id, payload) = if job.state == JobState::Done {
            let e = crate::proto::mp3_ready(job);
            (
                Mp3Ready::TYPE,
                e.event_id.clone(),
                prost::Message::encode_to_vec(&e),
            )
        } else {
            let mut e = crate::proto::conversion_failed(job);
            // Written before the source is deleted, which the policy makes
            // certain (now, or by the janitor later).
            e.source_deleted |= routes.delete_sources;
            (
                ConversionFailed::TYPE,
                e.event_id.clone(),
                prost::Message::encode_to_vec(&e),
            )
        };
        Self {
            queue: routes.mp3_queue.clone(),
            kind,
            event_id,
            job_id: Some(job.id.to_hex()),
            payload,
        }
    }
}

/// Writes `event` in `tx`, with the current trace context (the consumer's
/// span continues the transition's trace).
pub(crate) async fn write(tx: &Transaction<'_>, event: &Event) -> Result<(), Error> {
    let mut trace: HashMap<String, String> = HashMap::new();
    svc_kit::observe::inject(&tracing::Span::current(), &mut trace);
    let trace = serde_json::to_value(trace).unwrap_or_default();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO outbox (queue, kind, event_id, job_id, payload, trace) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &event.queue,
            &event.kind,
            &event.event_id,
            &event.job_id,
            &event.payload,
            &trace,
        ],
    )
    .await?;
    Ok(())
}

/// Publishes what the outbox holds.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: Pool,
    publisher: Publisher,
    signal: Signal,
}

/// One unsent event as read back.
struct Unsent {
    id: i64,
    queue: String,
    kind: String,
    event_id: String,
    payload: Vec<u8>,
    trace: HashMap<String, String>,
}

impl Relay {
    pub fn new(jobs: &Jobs, publisher: Publisher) -> Self {
        Self {
            pool: jobs.pool().clone(),
            publisher,
            signal: jobs.outbox_signal(),
        }
    }

    /// Publishes until `token`: at once when woken, every [`POLL`] anyway,
    /// backing off while the broker or the database fails.
    pub async fn run(self, token: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.drain().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, failures, "outbox: publishing failed; will retry");
                }
            }
            let pause = POLL * 2u32.saturating_pow(failures.min(4));
            tokio::select! {
                () = token.cancelled() => return,
                () = self.signal.woken(), if failures == 0 => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes batches until none is left (or one fails).
    pub async fn drain(&self) -> Result<(), String> {
        while self.batch().await? == BATCH as usize {}
        Ok(())
    }

    /// Publishes one batch of unsent events (those another relay holds are
    /// skipped); how many were read.
    async fn batch(&self) -> Result<usize, String> {
        let db = |e: &dyn std::fmt::Display| format!("the outbox: {e}");
        let mut client = self.pool.get().await.map_err(|e| db(&e))?;
        let tx = client.transaction().await.map_err(|e| db(&e))?;
        let rows = tx
            .query(
                "SELECT id, queue, kind, event_id, payload, trace FROM outbox \
                 WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&BATCH],
            )
            .await
            .map_err(|e| db(&e))?;
        if rows.is_empty() {
            return Ok(0);
        }
        let unsent = rows
            .iter()
            .map(|r| {
                let trace: serde_json::Value = r.try_get("trace")?;
                Ok(Unsent {
                    id: r.try_get("id")?,
                    queue: r.try_get("queue")?,
                    kind: r.try_get("kind")?,
                    event_id: r.try_get("event_id")?,
                    payload: r.try_get("payload")?,
                    trace: serde_json::from_value(trace).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|e| db(&e))?;
        // All at once: each waits for its own confirm on the shared channel.
        let results = futures::future::join_all(unsent.iter().map(|e| self.publish(e))).await;
        let (mut sent, mut failed, mut error) = (Vec::new(), Vec::new(), None);
        for (e, r) in unsent.iter().zip(results) {
            match r {
                Ok(()) => sent.push(e.id),
                Err(why) => {
                    failed.push(e.id);
                    error = Some(why);
                }
            }
        }
        tx.execute(
            "UPDATE outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY($1)",
            &[&sent],
        )
        .await
        .map_err(|e| db(&e))?;
        if let Some(why) = &error {
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)",
                &[&failed, why],
            )
            .await
            .map_err(|e| db(&e))?;
        }
        tx.commit().await.map_err(|e| db(&e))?;
        metrics::counter!("mp3converter_outbox_published_total").increment(sent.len() as u64);
        match error {
            Some(why) => Err(why),
            None => Ok(rows.len()),
        }
    }

    /// One event, in a span that continues the transition's trace.
    async fn publish(&self, e: &Unsent) -> Result<(), String> {
        let span = tracing::info_span!(
            "outbox.relay",
            event.kind = %e.kind,
            event.id = %e.event_id,
        );
        svc_kit::observe::continue_remote(&span, &e.trace);
        self.publisher
            .publish(
                &e.queue,
                &e.payload,
                event_properties(&e.kind, &e.event_id, Default::default()),
            )
            .instrument(span)
            .await
            .map_err(|err| format!("publishing {} {}: {err}", e.kind, e.event_id))
    }
}
