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
use std::{future::Future, time::Duration};
use svc_kit::{config::Secret, health::Health};
use tokio_util::sync::CancellationToken;
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
    /// Unacknowledged deliveries in flight per consumer.
    pub prefetch: u16,
    /// How long a delivery in progress may run on after shutdown begins.
    pub grace: Duration,
}

/// Runs until `shutdown` is cancelled. `health` gets a "rabbitmq" component.
pub async fn run<H: Handler>(
    cfg: ConsumerConfig,
    handler: H,
    health: Health,
    shutdown: CancellationToken,
) {
    let retry_publisher = Publisher::new(
        cfg.url.clone(),
        format!("{}-retry", cfg.name),
        Duration::from_secs(10),
    );
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match consume(&cfg, &handler, &health, &retry_publisher, &shutdown).await {
            Ok(()) => break, // shut down cleanly
            Err(e) => {
                health.set("rabbitmq", false).await;
                tracing::warn!(error = %e, retry_in = ?backoff, queue = %cfg.queue.name, "AMQP consumer lost; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }
    health.set("rabbitmq", false).await;
}

async fn consume<H: Handler>(
    cfg: &ConsumerConfig,
    handler: &H,
    health: &Health,
    retry: &Publisher,
    shutdown: &CancellationToken,
) -> Result<(), lapin::Error> {
    let conn = crate::connect(&cfg.url, &cfg.name).await?;
    let ch = conn.create_channel().await?;
    // Per-consumer prefetch (global=false): quorum queues do not support
    // global QoS.
    ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await?;
    crate::declare_work_queue(&ch, &cfg.queue).await?;
    for q in &cfg.also_declare {
        crate::declare_work_queue(&ch, q).await?;
    }
    let tag = format!("{}-{}", cfg.name, std::process::id());
    let mut consumer = ch
        .basic_consume(
            cfg.queue.name.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    health.set("rabbitmq", true).await;
    tracing::info!(queue = %cfg.queue.name, prefetch = cfg.prefetch, "consuming");

    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => None,
            d = consumer.next() => Some(d),
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
            Some(None) => {
                return Err(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                ));
            }
            Some(Some(Err(e))) => return Err(e),
            Some(Some(Ok(d))) => d,
        };
        process(cfg, handler, retry, shutdown, delivery).await;
    }
}

/// The delivery count the broker reports (quorum queues), 0 on first
/// delivery.
fn delivery_count(props: &BasicProperties) -> u32 {
    header_u32(props, "x-delivery-count").unwrap_or(0)
}

/// Handles and settles one delivery inside a consumer span that continues
/// the publisher's trace.
async fn process<H: Handler>(
    cfg: &ConsumerConfig,
    handler: &H,
    retry: &Publisher,
    shutdown: &CancellationToken,
    delivery: Delivery,
) {
    let queue = cfg.queue.name.as_str();
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
    let outcome = settle(cfg, handler, retry, shutdown, delivery)
        .instrument(span.clone())
        .await;
    span.record("outcome", outcome);
    if outcome == "dead_lettered" {
        span.record("otel.status_code", "ERROR");
    }
    metrics::histogram!("mp3converter_amqp_process_duration_seconds", "queue" => queue.to_owned(), "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// Runs the handler and settles the delivery; returns what happened to it,
/// as a label.
async fn settle<H: Handler>(
    cfg: &ConsumerConfig,
    handler: &H,
    retry: &Publisher,
    shutdown: &CancellationToken,
    delivery: Delivery,
) -> &'static str {
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
        Outcome::Retry(reason) => {
            let attempt = header_u32(&delivery.properties, ATTEMPT_HEADER).unwrap_or(0) + 1;
            let over_limit = delivery_count(&delivery.properties) + 1 >= cfg.queue.delivery_limit;
            match cfg.queue.retry_queue(attempt).filter(|_| !over_limit) {
                Some(retry_queue) => {
                    tracing::warn!(%reason, attempt, queue, "transient failure; retrying later");
                    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
                    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongInt(attempt as i32));
                    let props = delivery.properties.clone().with_headers(headers);
                    match retry.publish(&retry_queue, &delivery.data, props).await {
                        // The copy is safely queued; only now drop the original.
                        Ok(()) => (ack(&delivery, queue).await, "retry_scheduled"),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot schedule the retry; requeueing");
                            (nack(&delivery, queue, true).await, "requeued")
                        }
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
