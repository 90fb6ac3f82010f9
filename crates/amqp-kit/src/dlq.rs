//! Operator tools for a work queue's dead letters (`<queue>.dlq`): list them
//! without taking them, and replay them to the work queue. The services
//! expose these as a `dlq` subcommand that decodes their own events.

use crate::{ATTEMPT_HEADER, Publisher, header_str};
use lapin::{
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions},
    types::FieldTable,
};
use std::time::Duration;
use svc_kit::config::Secret;

/// One dead letter, as found.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Position in the dead-letter queue (0 = oldest).
    pub position: usize,
    pub message_id: Option<String>,
    /// The AMQP `type`: the event's protobuf message name.
    pub kind: Option<String>,
    /// Why RabbitMQ dead-lettered it (`rejected`: a consumer gave up on it;
    /// `delivery_limit`: it kept crashing consumers).
    pub reason: Option<String>,
    /// The queue it died in.
    pub queue: Option<String>,
    /// Seconds since the epoch when it was first published.
    pub timestamp: Option<u64>,
    pub payload: Vec<u8>,
}

impl DeadLetter {
    fn from_message(position: usize, m: &BasicGetMessage) -> Self {
        let p = &m.delivery.properties;
        Self {
            position,
            message_id: p.message_id().as_ref().map(|s| s.to_string()),
            kind: p.kind().as_ref().map(|s| s.to_string()),
            reason: header_str(p, "x-first-death-reason").map(str::to_owned),
            queue: header_str(p, "x-first-death-queue").map(str::to_owned),
            timestamp: *p.timestamp(),
            payload: m.delivery.data.clone(),
        }
    }
}

/// Takes up to `limit` messages from `dlq` and puts them all back; nothing is
/// consumed.
pub async fn list(url: &Secret, dlq: &str, limit: usize) -> Result<Vec<DeadLetter>, lapin::Error> {
    let conn = crate::connect(url, "dlq-list").await?;
    let ch = conn.create_channel().await?;
    let mut held = Vec::new();
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(m) = ch
            .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        out.push(DeadLetter::from_message(out.len(), &m));
        held.push(m);
    }
    // Back where they were: the channel closing would requeue them too, but
    // say so explicitly.
    for m in held {
        m.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// Moves dead letters back to `target` (the work queue) to be processed
/// again: every one if `message_id` is `None`, else those with that id. Each
/// is published with a confirm before it is removed from the dead-letter
/// queue, so a failure half-way loses nothing. Returns how many moved.
pub async fn replay(
    url: &Secret,
    dlq: &str,
    target: &str,
    message_id: Option<&str>,
) -> Result<usize, String> {
    let conn = crate::connect(url, "dlq-replay")
        .await
        .map_err(|e| e.to_string())?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let publisher = Publisher::new(url.clone(), "dlq-replay", Duration::from_secs(10));
    let mut kept = Vec::new();
    let mut moved = 0;
    loop {
        let Some(m) = ch
            .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| e.to_string())?
        else {
            break;
        };
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str());
        if message_id.is_some_and(|want| Some(want) != id) {
            kept.push(m);
            continue;
        }
        // A fresh start: no death history, no retry count.
        let mut headers = FieldTable::default();
        if let Some(old) = m.delivery.properties.headers() {
            for (k, v) in old.inner() {
                let k_str = k.as_str();
                if !(k_str.starts_with("x-death")
                    || k_str.starts_with("x-first-death")
                    || k_str.starts_with("x-last-death")
                    || k_str == "x-delivery-count"
                    || k_str == ATTEMPT_HEADER)
                {
                    headers.insert(k.clone(), v.clone());
                }
            }
        }
        let props = m.delivery.properties.clone().with_headers(headers);
        publisher
            .publish(target, &m.delivery.data, props)
            .await
            .map_err(|e| format!("republishing {id:?}: {e}"))?;
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        moved += 1;
    }
    for m in kept {
        let _ = m
            .delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(moved)
}

/// The `dlq` subcommand of a consuming service.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// List the dead letters (oldest first) without taking them.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show dead letters in full, their events decoded.
    Show {
        /// Only the one(s) with this message id (as `list` prints it).
        message_id: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move dead letters back to the work queue, to be processed again.
    Replay {
        /// Only the one(s) with this message id.
        message_id: Option<String>,
        /// Every dead letter (required without a message id, so nothing is
        /// replayed by accident).
        #[arg(long, conflicts_with = "message_id")]
        all: bool,
    },
}

/// Runs a `dlq` subcommand against `queue`'s dead letters, printing to
/// stdout; `describe` renders a dead letter's payload (the service knows its
/// events).
#[allow(clippy::print_stdout)] // a command-line tool: stdout is its output
pub async fn run(
    cmd: DlqCommand,
    url: &Secret,
    queue: &str,
    describe: impl Fn(Option<&str>, &[u8]) -> String,
) -> Result<(), String> {
    let dlq = format!("{queue}.dlq");
    match cmd {
        DlqCommand::List { limit } => {
            let letters = list(url, &dlq, limit).await.map_err(|e| e.to_string())?;
            println!("{} dead letter(s) in {dlq}", letters.len());
            for d in &letters {
                println!(
                    "{:>4}  {}  {}  reason={} from={}",
                    d.position,
                    d.message_id.as_deref().unwrap_or("-"),
                    d.kind.as_deref().unwrap_or("-"),
                    d.reason.as_deref().unwrap_or("-"),
                    d.queue.as_deref().unwrap_or("-"),
                );
            }
        }
        DlqCommand::Show { message_id, limit } => {
            let letters = list(url, &dlq, limit).await.map_err(|e| e.to_string())?;
            let mut shown = 0;
            for d in letters
                .iter()
                .filter(|d| message_id.is_none() || d.message_id == message_id)
            {
                shown += 1;
                println!(
                    "--- #{} {}",
                    d.position,
                    d.message_id.as_deref().unwrap_or("-")
                );
                println!("type:      {}", d.kind.as_deref().unwrap_or("-"));
                println!("reason:    {}", d.reason.as_deref().unwrap_or("-"));
                println!("from:      {}", d.queue.as_deref().unwrap_or("-"));
                println!(
                    "published: {}",
                    d.timestamp.map_or("-".into(), |t| t.to_string())
                );
                println!("event:     {}", describe(d.kind.as_deref(), &d.payload));
            }
            if shown == 0 {
                return Err("no such dead letter".into());
            }
        }
        DlqCommand::Replay { message_id, all } => {
            if message_id.is_none() && !all {
                return Err("give a message id, or --all to replay every dead letter".into());
            }
            let n = replay(url, &dlq, queue, message_id.as_deref()).await?;
            println!("replayed {n} dead letter(s) from {dlq} to {queue}");
        }
    }
    Ok(())
}
