//! The topology of one work queue, declared idempotently at start by every
//! consumer (re-declaring with the same arguments is a no-op):
//!
//! ```text
//!  publish ──► <name> (quorum) ──consume──► handler
//!                 │   ▲                        │ transient failure, attempt n
//!                 │   └── TTL expires ◄── <name>.retry.<delay_n> ◄──┘ (republish, then ack)
//!                 │
//!                 └─ x-delivery-limit exceeded (a message that keeps crashing
//!                    consumers) or nack(requeue=false) ──► <name>.dlq (quorum)
//! ```
//!
//! Quorum queues because they are replicated, always durable, and count
//! deliveries (`x-delivery-count`), which bounds a poison message with
//! `x-delivery-limit` instead of letting it loop forever. Dead-lettering uses
//! the default (at-most-once) strategy: RabbitMQ 3.10's `at-least-once`
//! workers crash after a broker restart and take every quorum queue declared
//! afterwards down with them (seen in CI); a dead letter can therefore be lost
//! when the broker stops while moving it (seen: retries expiring across a
//! restart). The gateway's janitor recovers those end to end: a job whose
//! `video` message is lost is re-published, an outcome whose `mp3` message is
//! lost gets no receipt from notify-svc and is announced again. Revisit on
//! RabbitMQ 4. One retry queue per delay, each with a queue-wide TTL,
//! because per-message TTLs only expire at the head of a queue: a long delay
//! would hold up every shorter one behind it. The delay is in the queue's name,
//! so changing the backoff declares new queues instead of clashing with the
//! arguments of old ones.

use lapin::{
    Channel,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use std::time::Duration;

/// How long a hint waits unread before it expires.
pub const HINT_TTL: Duration = Duration::from_secs(10);

/// The retry and dead-letter policy of the mesh's work queues. Every service
/// that declares a queue reads the same variables, so the arguments they
/// declare it with agree (RabbitMQ refuses a re-declaration that differs).
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Deliveries of one message before the broker dead-letters it (bounds a
    /// message that crashes its consumer).
    #[arg(
        long = "amqp-delivery-limit",
        env = "AMQP_DELIVERY_LIMIT",
        default_value_t = 5
    )]
    pub delivery_limit: u32,

    /// Delays before each retry of a transient failure, comma-separated; their
    /// number is the number of retries.
    #[arg(
        long = "amqp-retry-delays",
        env = "AMQP_RETRY_DELAYS",
        value_delimiter = ',',
        value_parser = svc_kit::config::parse_duration,
        default_value = "2s,10s,30s,1m,5m"
    )]
    pub retry_delays: Vec<Duration>,
}

impl TopologyArgs {
    pub fn work_queue(&self, name: &str) -> WorkQueue {
        WorkQueue {
            name: name.to_owned(),
            retry_delays: self.retry_delays.clone(),
            delivery_limit: self.delivery_limit,
            expires_after: None,
        }
    }

    /// A queue this service only publishes to, whose consumer has retries of
    /// its own: the queue and its dead-letter queue (the arguments every
    /// declarer must agree on), not the retry queues, which are the
    /// consumer's to declare.
    pub fn outlet(&self, name: &str) -> WorkQueue {
        WorkQueue {
            retry_delays: Vec::new(),
            ..self.work_queue(name)
        }
    }

    /// A queue of hints: worth acting on only soon after they are sent, so
    /// they expire unread after [`HINT_TTL`], and are never retried or
    /// dead-lettered. (Every declarer must agree on the TTL: one constant.)
    pub fn hint_queue(&self, name: &str) -> WorkQueue {
        WorkQueue {
            name: name.to_owned(),
            retry_delays: Vec::new(),
            delivery_limit: self.delivery_limit,
            expires_after: Some(HINT_TTL),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkQueue {
    pub name: String,
    /// Delay before retry n (1-based), for the transient failures the consumer
    /// retries itself; its length is the number of retries.
    pub retry_delays: Vec<Duration>,
    /// How many times the broker delivers a message before dead-lettering it.
    /// Bounds messages that crash consumers before they can ack or retry.
    pub delivery_limit: u32,
    /// For a queue of hints ([`TopologyArgs::hint_queue`]): messages expire
    /// unread after this long, and there is no dead-letter queue.
    pub expires_after: Option<Duration>,
}

impl WorkQueue {
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.name)
    }

    /// The retry queue for retry `attempt` (1-based), if there is one.
    pub fn retry_queue(&self, attempt: u32) -> Option<String> {
        let idx = usize::try_from(attempt.checked_sub(1)?).ok()?;
        self.retry_delays
            .get(idx)
            .map(|d| format!("{}.retry.{}ms", self.name, d.as_millis()))
    }

    /// The retry queue to wait about `wait` in, without it counting as a
    /// retry: the longest delay not over `wait` (the shortest if all are),
    /// so a deferred message comes back soon after it can succeed and defers
    /// again if it is early.
    pub fn wait_queue(&self, wait: Duration) -> String {
        let idx = self
            .retry_delays
            .iter()
            .enumerate()
            .filter(|(_, d)| **d <= wait)
            .max_by_key(|(_, d)| **d)
            .map(|(i, _)| i)
            .or_else(|| {
                self.retry_delays
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, d)| **d)
                    .map(|(i, _)| i)
            })
            .unwrap_or(0);
        self.retry_queue(u32::try_from(idx).unwrap_or(0) + 1)
            .unwrap_or_else(|| self.name.clone())
    }

    /// Exponential backoff: `base`, `2·base`, `4·base`… capped at `max`.
    pub fn exponential(base: Duration, max: Duration, retries: u32) -> Vec<Duration> {
        (0..retries)
            .map(|i| base.saturating_mul(1u32 << i.min(20)).min(max))
            .collect()
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

fn dead_letter_to(args: &mut FieldTable, routing_key: &str) {
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(routing_key.into()),
    );
}

/// Declares the queue, its dead-letter queue and its retry queues (a hint
/// queue alone).
pub async fn declare_work_queue(ch: &Channel, q: &WorkQueue) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions::durable();

    if let Some(ttl) = q.expires_after {
        let mut args = quorum_args();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(q.delivery_limit).unwrap_or(i32::MAX)),
        );
        ch.queue_declare(q.name.as_str().into(), durable, args)
            .await?;
        return Ok(());
    }

    ch.queue_declare(
        q.dead_letter_queue().as_str().into(),
        durable,
        quorum_args(),
    )
    .await?;

    let mut main = quorum_args();
    dead_letter_to(&mut main, &q.dead_letter_queue());
    main.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(i32::try_from(q.delivery_limit).unwrap_or(i32::MAX)),
    );
    ch.queue_declare(q.name.as_str().into(), durable, main)
        .await?;

    for attempt in 1..=u32::try_from(q.retry_delays.len()).unwrap_or(u32::MAX) {
        let (Some(name), Some(delay)) = (
            q.retry_queue(attempt),
            q.retry_delays.get(attempt as usize - 1),
        ) else {
            continue;
        };
        let mut args = quorum_args();
        dead_letter_to(&mut args, &q.name);
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        ch.queue_declare(name.as_str().into(), durable, args)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let d = WorkQueue::exponential(Duration::from_secs(1), Duration::from_secs(5), 4);
        assert_eq!(d, [1, 2, 4, 5].map(Duration::from_secs).to_vec());
    }

    #[test]
    fn retry_queue_names_carry_the_delay() {
        let q = WorkQueue {
            name: "video".into(),
            retry_delays: vec![Duration::from_millis(500), Duration::from_secs(2)],
            delivery_limit: 5,
            expires_after: None,
        };
        assert_eq!(q.retry_queue(1).as_deref(), Some("video.retry.500ms"));
        assert_eq!(q.retry_queue(2).as_deref(), Some("video.retry.2000ms"));
        assert_eq!(q.retry_queue(3), None);
        assert_eq!(q.retry_queue(0), None);
        assert_eq!(q.dead_letter_queue(), "video.dlq");
    }

    #[test]
    fn a_wait_takes_the_longest_delay_that_fits() {
        let q = WorkQueue {
            name: "video".into(),
            retry_delays: [2, 10, 30].map(Duration::from_secs).to_vec(),
            delivery_limit: 5,
            expires_after: None,
        };
        assert_eq!(q.wait_queue(Duration::from_secs(25)), "video.retry.10000ms");
        assert_eq!(q.wait_queue(Duration::from_secs(40)), "video.retry.30000ms");
        assert_eq!(
            q.wait_queue(Duration::from_millis(100)),
            "video.retry.2000ms"
        );
        let none = WorkQueue {
            retry_delays: vec![],
            ..q
        };
        assert_eq!(none.wait_queue(Duration::from_secs(1)), "video");
    }
}
