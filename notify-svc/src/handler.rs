//! One event from the `mp3` queue: one email, once.

use crate::{
    mail::Mailer,
    sent_log::{self, Delivered, SendError},
};
use amqp_kit::{
    consumer::{Handler, Outcome},
    lapin::message::Delivery,
};
use deadpool_postgres::Pool;
use lettre::message::Mailbox;
use mp3converter_proto::{
    EventType,
    events::v1::{ConversionFailed, Mp3Ready},
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    pub(crate) pool: Pool,
    pub(crate) mailer: Mailer,
}

enum Event {
    Ready(Mp3Ready),
    Failed(ConversionFailed),
}

fn decode(d: &Delivery) -> Result<Event, String> {
    let kind = d.properties.kind().as_ref().map(|k| k.as_str().to_owned());
    match kind.as_deref() {
        Some(Mp3Ready::TYPE) => <Mp3Ready as prost::Message>::decode(d.data.as_slice())
            .map(Event::Ready)
            .map_err(|e| format!("undecodable Mp3Ready: {e}")),
        Some(ConversionFailed::TYPE) => {
            <ConversionFailed as prost::Message>::decode(d.data.as_slice())
                .map(Event::Failed)
                .map_err(|e| format!("undecodable ConversionFailed: {e}"))
        }
        other => Err(format!("unexpected message type {other:?}")),
    }
}

impl Handler for Notifier {
    async fn handle(&self, delivery: &Delivery, _abandon: CancellationToken) -> Outcome {
        let event = match decode(delivery) {
            Ok(e) => e,
            Err(why) => {
                tracing::error!(reason = %why, "malformed event; dead-lettering it");
                return Outcome::DeadLetter(why);
            }
        };
        let (event_id, kind, to) = match &event {
            Event::Ready(e) => (e.event_id.clone(), "mp3_ready", e.owner_email.clone()),
            Event::Failed(e) => (
                e.event_id.clone(),
                "conversion_failed",
                e.owner_email.clone(),
            ),
        };
        if event_id.is_empty() {
            return Outcome::DeadLetter("event without an id".into());
        }
        let Ok(mailbox) = to.parse::<Mailbox>() else {
            tracing::warn!(%event_id, "the owner's email address is invalid; nothing to send");
            metrics::counter!("mp3converter_emails_total", "kind" => kind, "outcome" => "invalid_address").increment(1);
            return Outcome::Ack;
        };
        let message = match &event {
            Event::Ready(e) => self.mailer.ready_message(mailbox, e),
            Event::Failed(e) => self.mailer.failed_message(mailbox, e),
        };
        let message = match message {
            Ok(m) => m,
            Err(why) => return Outcome::DeadLetter(format!("cannot build the email: {why}")),
        };
        let mailer = self.mailer.clone();
        let res = sent_log::send_once(&self.pool, &event_id, kind, &to, || async move {
            mailer.send(message).await
        })
        .await;
        let (outcome, label) = match res {
            Ok(Delivered::Sent) => {
                tracing::info!(%event_id, kind, "email sent");
                (Outcome::Ack, "sent")
            }
            Ok(Delivered::AlreadyDone) => {
                tracing::info!(%event_id, kind, "already emailed; skipping the duplicate");
                (Outcome::Ack, "duplicate")
            }
            Ok(Delivered::Rejected) => {
                tracing::warn!(%event_id, kind, "the SMTP server refused the recipient for good");
                (Outcome::Ack, "rejected")
            }
            Err(e @ (SendError::Transient(_) | SendError::Database(_))) => {
                (Outcome::Retry(e.to_string()), "retry")
            }
        };
        metrics::counter!("mp3converter_emails_total", "kind" => kind, "outcome" => label)
            .increment(1);
        outcome
    }

    async fn exhausted(&self, delivery: &Delivery, reason: &str) -> Result<(), String> {
        // Nobody left to tell: the message goes to the dead-letter queue for
        // an operator, with the reason in the log.
        tracing::error!(%reason, message_id = ?delivery.properties.message_id(), "giving up on an email");
        metrics::counter!("mp3converter_emails_total", "kind" => "any", "outcome" => "dead_lettered").increment(1);
        Ok(())
    }
}
