//! One event from the `mp3` queue: one email, once.

use crate::{
    mail::Mailer,
    sent_log::{self, Delivered, SendError},
};
use amqp_kit::{
    Publisher,
    consumer::{Handler, Outcome},
    lapin::message::Delivery,
};
use deadpool_postgres::Pool;
use lettre::message::Mailbox;
use mp3converter_proto::{
    EventType,
    events::v1::{ConversionFailed, Mp3Ready, UserNotified},
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    pub(crate) pool: Pool,
    pub(crate) mailer: Mailer,
    /// Where receipts go, with confirms.
    pub(crate) receipts: Publisher,
    pub(crate) notified_queue: String,
}

enum Event {
    Ready(Mp3Ready),
    Failed(ConversionFailed),
}

impl Event {
    fn job_id(&self) -> &str {
        match self {
            Self::Ready(e) => &e.job_id,
            Self::Failed(e) => &e.job_id,
        }
    }
}

fn decode(d: &Delivery) -> Result<Event, String> {
    let event = match amqp_kit::event::kind(d) {
        Some(Mp3Ready::TYPE) => amqp_kit::decode(d).map(Event::Ready),
        Some(ConversionFailed::TYPE) => amqp_kit::decode(d).map(Event::Failed),
        other => return Err(format!("unexpected message type {other:?}")),
    };
    event.map_err(|e| e.to_string())
}

impl Notifier {
    /// The user has been told (or never can be): the receipt goes out, with a
    /// confirm, before the event is acked. Should it fail, the event is tried
    /// again; the sent-log keeps the email from going twice.
    async fn settled(&self, event: &Event, event_id: &str, result: &str) -> Outcome {
        let receipt = UserNotified {
            event_id: format!("notified-{event_id}"),
            job_id: event.job_id().to_owned(),
            outcome_event_id: event_id.to_owned(),
            result: result.to_owned(),
            occur_time: Some(std::time::SystemTime::now().into()),
        };
        let published = self
            .receipts
            .publish_event(&self.notified_queue, &receipt.event_id, &receipt)
            .await;
        match published {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Retry(format!("publishing the receipt: {e}")),
        }
    }
}

/// Where to send: an address of the grammar auth-svc enforces at CreateUser
/// (accounts made before it may not be).
fn mailbox(to: &str) -> Option<Mailbox> {
    svc_kit::email::check(to).ok()?;
    to.parse().ok()
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
        let Some(mailbox) = mailbox(&to) else {
            tracing::warn!(%event_id, "the owner's email address is invalid; nothing to send");
            metrics::counter!("mp3converter_emails_total", "kind" => kind, "outcome" => "invalid_address").increment(1);
            return self.settled(&event, &event_id, "invalid_address").await;
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
        let (result, label) = match res {
            Ok(Delivered::Sent) => {
                tracing::info!(%event_id, kind, "email sent");
                ("sent", "sent")
            }
            Ok(Delivered::AlreadyDone) => {
                tracing::info!(%event_id, kind, "already emailed; skipping the duplicate");
                ("already", "duplicate")
            }
            Ok(Delivered::Rejected) => {
                tracing::warn!(%event_id, kind, "the SMTP server refused the recipient for good");
                ("rejected", "rejected")
            }
            Err(e @ (SendError::Transient(_) | SendError::Database(_))) => {
                metrics::counter!("mp3converter_emails_total", "kind" => kind, "outcome" => "retry")
                    .increment(1);
                return Outcome::Retry(e.to_string());
            }
        };
        metrics::counter!("mp3converter_emails_total", "kind" => kind, "outcome" => label)
            .increment(1);
        self.settled(&event, &event_id, result).await
    }

    async fn exhausted(&self, delivery: &Delivery, reason: &str) -> Result<(), String> {
        // Nobody left to tell: the message goes to the dead-letter queue for
        // an operator, with the reason in the log.
        tracing::error!(%reason, message_id = ?delivery.properties.message_id(), "giving up on an email");
        metrics::counter!("mp3converter_emails_total", "kind" => "any", "outcome" => "dead_lettered").increment(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every address the shared grammar takes, lettre can send to.
    #[test]
    fn the_grammar_is_one_lettre_can_mail() {
        for a in [
            "alice@example.com",
            "o'brien@example.com",
            "first.last+tag@sub.example.co.uk",
            "a!#$%&'*+-/=?^_`{|}~@example.com",
            "1234@xn--bcher-kva.de",
        ] {
            assert!(mailbox(a).is_some(), "{a:?}");
        }
        for a in [
            "x'$(id)'@example.com",
            "probe-\"q\"@example.com",
            "a@localhost",
        ] {
            assert!(mailbox(a).is_none(), "{a:?}");
        }
    }
}
