//! Operator tools for a work queue's dead letters (`<queue>.dlq`): list them
//! without taking them, and replay them to the work queue. The services
//! expose these as a `dlq` subcommand that decodes their own events.
//!
//! The consuming services' command line is here too ([`Command`]: `serve`,
//! the default, or `dlq`), so each says only what is its own: how it
//! serves, which queue a dead letter lives in, and which events it carries
//! ([`describe`]).

use crate::{ATTEMPT_HEADER, DecodeError, Publisher, event::decode_body, header_str};
use lapin::{
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions},
    types::FieldTable,
};
use mp3converter_proto::EventType;
use std::{future::Future, time::Duration};
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

/// The command line of a service that consumes a work queue: `serve` (the
/// default) or `dlq`. `Of` is what `dlq` asks besides its action: nothing
/// ([`OneQueue`]) for a service with one work queue, else which queue. Each
/// service words the two commands' help for itself (`mut_subcommand` on its
/// parser).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command<Of: clap::Args = OneQueue> {
    /// Run the service (the default).
    Serve,
    /// Look at and replay dead letters.
    Dlq {
        #[command(flatten)]
        of: Of,
        #[command(subcommand)]
        action: DlqCommand,
    },
}

/// `dlq` of a service with one work queue: nothing to choose.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OneQueue {}

/// Where `dlq` looks, and how the events there read.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetters<'a> {
    pub url: &'a Secret,
    /// The work queue: its dead letters are in `<queue>.dlq`, and a replay
    /// goes back to it.
    pub queue: &'a str,
    /// A dead letter's payload in words ([`describe`] of the events the
    /// queue carries).
    pub describe: fn(Option<&str>, &[u8]) -> String,
}

/// Why a `dlq` command failed (its message is the whole story).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DlqError(pub String);

impl<Of: clap::Args> Command<Of> {
    /// Runs what the command line asked for (nothing: `serve`) with the
    /// service's `config`: `serve` hands it to `serve` (the service built
    /// and run by [`svc_kit::service::serve`]); `dlq` runs its action on the
    /// queue `dead_letters` names for the `Of` given.
    pub async fn run<C, E, F>(
        command: Option<Self>,
        config: C,
        serve: impl FnOnce(C) -> F,
        dead_letters: impl for<'c> FnOnce(&'c C, Of) -> DeadLetters<'c>,
    ) -> Result<(), E>
    where
        F: Future<Output = Result<(), E>>,
        E: From<DlqError>,
    {
        match command.unwrap_or(Self::Serve) {
            Self::Serve => serve(config).await,
            Self::Dlq { of, action } => {
                let at = dead_letters(&config, of);
                run(action, at.url, at.queue, at.describe)
                    .await
                    .map_err(|e| DlqError(e).into())
            }
        }
    }
}

/// The events a queue carries, as a tuple of [`EventType`]s
/// (`(VideoUploaded,)`, `(Mp3Ready, ConversionFailed)`), for [`describe`];
/// they are shown as `Debug` prints them.
pub trait Events {
    /// The event of type `kind`, decoded and in words; `None` if `kind` is
    /// none of these. A message without a type is the queue's event if it
    /// carries one kind only (as [`crate::decode`] reads it).
    fn describe(kind: Option<&str>, payload: &[u8]) -> Option<String>;
}

/// A dead letter's payload in words, as one of the events `L` lists (see
/// [`Events`]): `describe::<(Mp3Ready, ConversionFailed)>` is a
/// [`DeadLetters::describe`].
pub fn describe<L: Events>(kind: Option<&str>, payload: &[u8]) -> String {
    L::describe(kind, payload).unwrap_or_else(|| {
        format!(
            "unexpected type {}: {} bytes",
            kind.unwrap_or("(none)"),
            payload.len()
        )
    })
}

/// A decoded event, or why not, in words.
fn in_words<E: EventType + std::fmt::Debug>(
    decoded: Result<E, DecodeError>,
    payload: &[u8],
) -> String {
    match decoded {
        Ok(e) => format!("{e:?}"),
        Err(DecodeError::Undecodable { source, .. }) => {
            format!("undecodable ({source}): {} bytes", payload.len())
        }
        Err(e) => format!("{e}: {} bytes", payload.len()),
    }
}

macro_rules! events {
    ($($e:ident),+) => {
        impl<$($e: EventType + std::fmt::Debug),+> Events for ($($e,)+) {
            fn describe(kind: Option<&str>, payload: &[u8]) -> Option<String> {
                let only_one = [$($e::TYPE),+].len() == 1;
                $(
                    if kind == Some($e::TYPE) || (only_one && kind.is_none()) {
                        return Some(in_words(decode_body::<$e>(kind, payload), payload));
                    }
                )+
                None
            }
        }
    };
}

events!(A);
events!(A, B);
events!(A, B, C);
events!(A, B, C, D);

#[cfg(test)]
mod tests {
    use super::*;
    use mp3converter_proto::events::v1::{ConversionFailed, Mp3Ready, VideoUploaded};
    use prost::Message;

    #[test]
    fn dead_letters_read_as_the_events_their_queue_carries() {
        let video = VideoUploaded {
            event_id: "e1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let one = describe::<(VideoUploaded,)>;
        assert!(one(Some(VideoUploaded::TYPE), &video).starts_with("VideoUploaded {"));
        // No type: the queue's one event.
        assert!(one(None, &video).contains("\"e1\""));
        assert_eq!(
            one(Some("x.Other"), &video),
            format!("unexpected type x.Other: {} bytes", video.len())
        );
        assert!(one(None, b"\xff\xff\xff").starts_with("undecodable ("));

        let two = describe::<(Mp3Ready, ConversionFailed)>;
        let failed = ConversionFailed::default().encode_to_vec();
        assert!(two(Some(ConversionFailed::TYPE), &failed).starts_with("ConversionFailed {"));
        // Two kinds: a message without a type is neither.
        assert_eq!(two(None, &failed), "unexpected type (none): 0 bytes");
    }
}
