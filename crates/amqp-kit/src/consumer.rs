//! A work-queue consumer loop: connect, declare, consume with a prefetch,
//! hand each delivery to a [`Handler`], and settle it from the handler's
//! [`Outcome`] — ack only after the handler's effects are durable, retry
//! transient failures through the delayed retry queues, dead-letter the rest.
//! Reconnects by itself, reports readiness, and stops taking work on
//! shutdown.

use crate::{ATTEMPT_HEADER, Publisher, WorkQueue, header_u32};
use futures::StreamExt;
use lapin::{
    BasicProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::{AMQPValue, FieldTable},
};
use std::{future::Future, sync::Arc, time::Duration};
use svc_kit::{config::Secret, health::Health};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

/// What to do with a delivery once the handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or already done): remove it.
    Ack,
    /// A transient failure: try again later, with backoff, until the retries
    /// run out (then [`Handler::exhausted`] runs and it is dead-lettered).
    Retry(String),
    /// It can never succeed (e.g. it does not decode): to the dead-letter
    /// queue, for a human to look at.
    DeadLetter(String),
    /// Abandoned at shutdown: back to the queue for another consumer.
    Requeue,
    /// Not now, and not a failure (another instance holds the work): look
    /// again after about this long. Does not count against the retries.
    Defer(Duration),
}

/// How a delivery is processed.
pub trait Handler: Send + Sync + 'static {
    /// Processes one delivery. `abandon` is cancelled when the grace period
    /// after shutdown runs out: stop, clean up, and return `Requeue`.
    fn handle(
        &self,
        delivery: &Delivery,
        abandon: CancellationToken,
    ) -> impl Future<Output = Outcome> + Send;

    /// Called once before a message goes to the dead-letter queue because its
    /// retries (or the broker's delivery limit) ran out, so the user can be
    /// told. An error leaves the message to be redelivered.
    fn exhausted(
        &self,
        delivery: &Delivery,
        reason: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub url: Secret,
    /// Connection name and consumer tag prefix.
    pub name: String,
    pub queue: WorkQueue,
    /// Other queues this service publishes to, declared too so its publishes
    /// are routable before their consumers start.
    pub also_declare: Vec<WorkQueue>,
    /// Deliveries handled at once (and so unacknowledged deliveries in
    /// flight): each is its own task.
    pub concurrency: u16,
    /// How long a delivery in progress may run on after shutdown begins.
    pub grace: Duration,
}

/// What every delivery task of a consumer shares.
struct Shared<H> {
    cfg: ConsumerConfig,
    handler: H,
    retry: Publisher,
    shutdown: CancellationToken,
}

/// Runs until `shutdown` is cancelled, then waits for the deliveries in
/// progress (each has the grace period, then is abandoned). `health` gets a
/// "rabbitmq" component.
///
/// Deliveries run as tasks of their own, at most `concurrency` at once, so
/// the loop keeps watching the connection while they work: a lost connection
/// is noticed and re-opened at once, and the tasks still running finish their
/// work (their acks then fail, and the broker has already redelivered).
pub async fn run<H: Handler>(
    cfg: ConsumerConfig,
    handler: H,
    health: Health,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        retry: Publisher::new(
            cfg.url.clone(),
            format!("{}-retry", cfg.name),
            Duration::from_secs(10),
        ),
        cfg,
        handler,
        shutdown: shutdown.clone(),
    });
    // Shared across reconnects: tasks of a lost channel still count.
    let slots = Arc::new(Semaphore::new(usize::from(shared.cfg.concurrency.max(1))));
    let tasks = TaskTracker::new();
    let mut watched = vec![shared.cfg.queue.name.clone()];
    if shared.cfg.queue.expires_after.is_none() {
        // A hint queue has none.
        watched.push(shared.cfg.queue.dead_letter_queue());
    }
    let depth = tokio::spawn(crate::report_queue_depths(
        shared.cfg.url.clone(),
        watched,
        shutdown.clone(),
    ));
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match consume(&shared, &slots, &tasks, &health).await {
            Ok(()) => break, // shut down cleanly
            Err(e) => {
                health.set("rabbitmq", false).await;
                tracing::warn!(error = %e, retry_in = ?backoff, queue = %shared.cfg.queue.name, "AMQP consumer lost; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }
    health.set("rabbitmq", false).await;
    tasks.close();
    tasks.wait().await;
    depth.abort();
}

async fn consume<H: Handler>(
    shared: &Arc<Shared<H>>,
    slots: &Arc<Semaphore>,
    tasks: &TaskTracker,
    health: &Health,
) -> Result<(), lapin::Error> {
    let cfg = &shared.cfg;
    let shutdown = &shared.shutdown;
    let conn = crate::connect(&cfg.url, &cfg.name).await?;
    let ch = conn.create_channel().await?;
    // Per-consumer prefetch (global=false): quorum queues do not support
    // global QoS.
    ch.basic_qos(cfg.concurrency.max(1), BasicQosOptions::default())
        .await?;
    crate::declare_work_queue(&ch, &cfg.queue).await?;
    for q in &cfg.also_declare {
        crate::declare_work_queue(&ch, q).await?;
    }
    let tag = format!("{}-{}-{}", cfg.name, std::process::id(), next_tag());
    let mut consumer = ch
        .basic_consume(
            cfg.queue.name.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    health.set("rabbitmq", true).await;
    tracing::info!(queue = %cfg.queue.name, concurrency = cfg.concurrency, "consuming");

    loop {
        // A free slot first: never take a delivery we cannot start.
        let permit = tokio::select! {
            () = shutdown.cancelled() => None,
            p = slots.clone().acquire_owned() => p.ok(),
        };
        let next = match permit {
            None => None,
            Some(permit) => tokio::select! {
                () = shutdown.cancelled() => None,
                d = consumer.next() => Some((d, permit)),
            },
        };
        let delivery = match next {
            // Shutdown: stop taking work; unacked prefetched messages go back
            // when the channel closes.
            None => {
                let _ = ch
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                let _ = conn.close(200, "shutting down".into()).await;
                return Ok(());
            }
            Some((None, _)) => {
                return Err(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                ));
            }
            Some((Some(Err(e)), _)) => return Err(e),
            Some((Some(Ok(d)), permit)) => (d, permit),
        };
        let (delivery, permit) = delivery;
        let shared = shared.clone();
        tasks.spawn(async move {
            process(&shared, delivery).await;
            drop(permit);
        });
    }
}

/// Distinguishes the consumer tags of one process's reconnects.
fn next_tag() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The delivery count the broker reports (quorum queues), 0 on first
/// delivery.
fn delivery_count(props: &BasicProperties) -> u32 {
    header_u32(props, "x-delivery-count").unwrap_or(0)
}

/// Handles and settles one delivery inside a consumer span that continues
/// the publisher's trace.
async fn process<H: Handler>(shared: &Shared<H>, delivery: Delivery) {
    let queue = shared.cfg.queue.name.as_str();
    let span = tracing::info_span!(
        "amqp.process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.message.id = delivery.properties.message_id().as_ref().map(|m| m.as_str()),
        messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag,
        messaging.message.redelivered = delivery.redelivered,
        outcome = tracing::field::Empty,
    );
    crate::trace::continue_from(&span, &delivery.properties);
    let started = std::time::Instant::now();
    let outcome = settle(shared, delivery).instrument(span.clone()).await;
    span.record("outcome", outcome);
    if outcome == "dead_lettered" {
        span.record("otel.status_code", "ERROR");
    }
    metrics::histogram!("mp3converter_amqp_process_duration_seconds", "queue" => queue.to_owned(), "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// Runs the handler and settles the delivery; returns what happened to it,
/// as a label.
async fn settle<H: Handler>(shared: &Shared<H>, delivery: Delivery) -> &'static str {
    let Shared {
        cfg,
        handler,
        retry,
        shutdown,
    } = shared;
    let queue = cfg.queue.name.as_str();
    metrics::counter!("mp3converter_amqp_consumed_total", "queue" => queue.to_owned()).increment(1);
    if delivery.redelivered {
        metrics::counter!("mp3converter_amqp_redeliveries_total", "queue" => queue.to_owned())
            .increment(1);
    }

    // The broker dead-letters after `delivery_limit` deliveries without a
    // trace the user would see; on the last one, give up ourselves so the
    // failure is reported.
    let outcome = if delivery_count(&delivery.properties) + 1 >= cfg.queue.delivery_limit {
        Outcome::Retry("delivered too many times (the consumer kept failing)".into())
    } else {
        let abandon = CancellationToken::new();
        let watchdog = {
            let abandon = abandon.clone();
            let shutdown = shutdown.clone();
            let grace = cfg.grace;
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                abandon.cancel();
            })
        };
        let o = handler.handle(&delivery, abandon).await;
        watchdog.abort();
        o
    };

    let (settled, label) = match outcome {
        Outcome::Ack => (ack(&delivery, queue).await, "acked"),
        Outcome::Requeue => (nack(&delivery, queue, true).await, "requeued"),
        Outcome::DeadLetter(reason) => {
            tracing::warn!(%reason, queue, "dead-lettering a message");
            (nack(&delivery, queue, false).await, "dead_lettered")
        }
        Outcome::Defer(wait) => {
            let attempt = header_u32(&delivery.properties, ATTEMPT_HEADER).unwrap_or(0);
            let retry_queue = cfg.queue.wait_queue(wait);
            tracing::info!(?wait, queue, via = %retry_queue, "deferred; looking again later");
            match republish(retry, &delivery, queue, &retry_queue, attempt).await {
                Ok(settled) => (settled, "deferred"),
                Err(settled) => (settled, "requeued"),
            }
        }
        Outcome::Retry(reason) => {
            let attempt = header_u32(&delivery.properties, ATTEMPT_HEADER).unwrap_or(0) + 1;
            let over_limit = delivery_count(&delivery.properties) + 1 >= cfg.queue.delivery_limit;
            match cfg.queue.retry_queue(attempt).filter(|_| !over_limit) {
                Some(retry_queue) => {
                    tracing::warn!(%reason, attempt, queue, "transient failure; retrying later");
                    match republish(retry, &delivery, queue, &retry_queue, attempt).await {
                        Ok(settled) => (settled, "retry_scheduled"),
                        Err(settled) => (settled, "requeued"),
                    }
                }
                None => {
                    tracing::error!(%reason, attempt, queue, "retries exhausted; dead-lettering");
                    match handler.exhausted(&delivery, &reason).await {
                        Ok(()) => (nack(&delivery, queue, false).await, "dead_lettered"),
                        Err(e) => {
                            tracing::warn!(error = %e, "reporting the failure failed; requeueing");
                            (nack(&delivery, queue, true).await, "requeued")
                        }
                    }
                }
            }
        }
    };
    if settled {
        label
    } else {
        tracing::warn!(
            queue,
            "could not settle a delivery (channel gone); the broker will redeliver it"
        );
        "unsettled"
    }
}

/// Puts a copy of the delivery on a retry queue (from which it comes back
/// when the queue's TTL runs out), then acks the original; requeues it if the
/// copy cannot be published (`Err`). Either way, whether the original was
/// settled. The broker's own headers are not copied: the
/// copy is a new message with a delivery count of its own.
async fn republish(
    retry: &Publisher,
    delivery: &Delivery,
    queue: &str,
    retry_queue: &str,
    attempt: u32,
) -> Result<bool, bool> {
    let mut headers = FieldTable::default();
    if let Some(old) = delivery.properties.headers() {
        for (k, v) in old.inner() {
            if !matches!(
                k.as_str(),
                "x-delivery-count"
                    | "x-death"
                    | "x-first-death-exchange"
                    | "x-first-death-queue"
                    | "x-first-death-reason"
                    | "x-last-death-exchange"
                    | "x-last-death-queue"
                    | "x-last-death-reason"
            ) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongInt(i32::try_from(attempt).unwrap_or(i32::MAX)),
    );
    let props = delivery.properties.clone().with_headers(headers);
    match retry.publish(retry_queue, &delivery.data, props).await {
        // The copy is safely queued; only now drop the original.
        Ok(()) => Ok(ack(delivery, queue).await),
        Err(e) => {
            tracing::warn!(error = %e, "cannot schedule the retry; requeueing");
            Err(nack(delivery, queue, true).await)
        }
    }
}

async fn ack(d: &Delivery, queue: &str) -> bool {
    let ok = matches!(d.acker.ack(BasicAckOptions::default()).await, Ok(true));
    if ok {
        metrics::counter!("mp3converter_amqp_acked_total", "queue" => queue.to_owned())
            .increment(1);
    }
    ok
}

async fn nack(d: &Delivery, queue: &str, requeue: bool) -> bool {
    let ok = matches!(
        d.acker
            .nack(BasicNackOptions {
                requeue,
                ..BasicNackOptions::default()
            })
            .await,
        Ok(true)
    );
    if ok {
        let name = if requeue {
            "mp3converter_amqp_nacked_total"
        } else {
            "mp3converter_amqp_dead_lettered_total"
        };
        metrics::counter!(name, "queue" => queue.to_owned()).increment(1);
    }
    ok
}
