//! Typed events: a message's AMQP `type` is the full name of its protobuf
//! message ([`EventType::TYPE`]), its body the encoded message and its
//! `message_id` the event's id. [`decode`] reads one back by its type;
//! [`Publisher::publish_event`] sends one.

use crate::{PublishError, Publisher, event_properties};
use lapin::message::Delivery;
use mp3converter_proto::EventType;

/// A message's AMQP `type`, if it has one.
pub fn kind(d: &Delivery) -> Option<&str> {
    d.properties.kind().as_ref().map(|k| k.as_str())
}

/// Why a message is not the event expected: it can never become one, so
/// consumers dead-letter it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("expected a {expected}, got a message of type {got:?}")]
    WrongType { expected: &'static str, got: String },
    #[error("undecodable {kind}: {source}")]
    Undecodable {
        kind: &'static str,
        source: prost::DecodeError,
    },
}

/// The `E` a message carries: its type says `E` (or it has none: the queue
/// says what it carries), and its body decodes.
pub fn decode<E: EventType>(d: &Delivery) -> Result<E, DecodeError> {
    decode_body(kind(d), d.data.as_slice())
}

/// As [`decode`], for a message's type and body held apart from it (a dead
/// letter, say).
pub fn decode_body<E: EventType>(kind: Option<&str>, body: &[u8]) -> Result<E, DecodeError> {
    match kind {
        Some(k) if k != E::TYPE => Err(DecodeError::WrongType {
            expected: E::TYPE,
            got: k.to_owned(),
        }),
        _ => E::decode(body).map_err(|source| DecodeError::Undecodable {
            kind: E::TYPE,
            source,
        }),
    }
}

impl Publisher {
    /// Publishes `event` (with a confirm) to `queue` under `event_id`.
    pub async fn publish_event<E: EventType>(
        &self,
        queue: &str,
        event_id: &str,
        event: &E,
    ) -> Result<(), PublishError> {
        self.publish(
            queue,
            &event.encode_to_vec(),
            event_properties(E::TYPE, event_id, Default::default()),
        )
        .await
    }
}
