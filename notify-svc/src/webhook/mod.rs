//! Webhook deliveries: one `WebhookDue` from the `webhooks` queue is one
//! attempt to POST a delivery's signed message to its endpoint. A 2xx answer
//! settles it; anything else is retried through the queue's delayed retry
//! queues (backoff), and when they run out the delivery is failed and the
//! message dead-lettered. The message id is the event's, the same on every
//! attempt, so the receiver deduplicates what at-least-once repeats.

mod egress;
mod sign;

pub(crate) use egress::Egress;

use amqp_kit::{
    consumer::{Handler, Outcome},
    lapin::message::Delivery as AmqpDelivery,
};
use media_store::{
    Jobs,
    webhooks::{Attempt, Delivery, DeliveryState, Due},
};
use mp3converter_proto::events::v1::WebhookDue;
use std::time::SystemTime;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct Deliverer {
    pub(crate) jobs: Jobs,
    pub(crate) egress: Egress,
    /// The REST edge's public URL, for the MP3's download link.
    pub(crate) download_base_url: String,
}

fn decode(d: &AmqpDelivery) -> Result<WebhookDue, String> {
    amqp_kit::decode(d).map_err(|e| e.to_string())
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).unwrap_or_default()
}

/// The message body: `{type, timestamp, data}`, as Standard Webhooks
/// suggests; a finished job's data gains its MP3's download URL.
pub(crate) fn body(d: &Delivery, download_base_url: &str) -> Vec<u8> {
    let mut data = d.data.clone();
    if let Some(mp3) = data.get("mp3_id").and_then(|m| m.as_str()) {
        let url = format!(
            "{}/download?fid={mp3}",
            download_base_url.trim_end_matches('/')
        );
        data["download_url"] = url.into();
    }
    serde_json::to_vec(&serde_json::json!({
        "type": d.event_type,
        "timestamp": rfc3339(d.occurred_at),
        "data": data,
    }))
    .unwrap_or_default()
}

impl Deliverer {
    #[tracing::instrument(skip_all, fields(delivery = %due.delivery.id, message = %due.delivery.message_id))]
    async fn attempt(&self, due: &Due) -> Attempt {
        let body = body(&due.delivery, &self.download_base_url);
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let signature = match sign::sign(&due.secret, &due.delivery.message_id, timestamp, &body) {
            Ok(s) => s,
            Err(why) => {
                return Attempt::Failed {
                    status: None,
                    error: why,
                };
            }
        };
        self.egress
            .send(egress::Message {
                url: &due.url,
                id: &due.delivery.message_id,
                timestamp,
                signature: &signature,
                body,
            })
            .await
    }
}

impl Handler for Deliverer {
    async fn handle(&self, delivery: &AmqpDelivery, abandon: CancellationToken) -> Outcome {
        let due = match decode(delivery) {
            Ok(d) => d,
            Err(why) => {
                tracing::error!(reason = %why, "malformed webhook message; dead-lettering it");
                return Outcome::DeadLetter(why);
            }
        };
        let found = match self.jobs.webhook_due(&due.delivery_id).await {
            Ok(f) => f,
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        let Some(found) = found else {
            // Its endpoint was deleted: nothing to do.
            return Outcome::Ack;
        };
        if found.delivery.state == DeliveryState::Delivered {
            // A duplicate of a settled delivery (the outbox sends at least
            // once). A failed one is attempted again: an operator replayed
            // its dead letter (`notify-svc dlq --of webhooks replay`).
            return Outcome::Ack;
        }
        let attempt = tokio::select! {
            a = self.attempt(&found) => a,
            () = abandon.cancelled() => return Outcome::Requeue,
        };
        let kind = match &attempt {
            Attempt::Delivered { .. } => "delivered",
            Attempt::Failed { .. } => "failed",
        };
        metrics::counter!("mp3converter_webhook_attempts_total", "outcome" => kind).increment(1);
        if let Err(e) = self
            .jobs
            .webhook_attempted(&found.delivery.id, &attempt)
            .await
        {
            // The endpoint may have it: the retry sends it again, with the
            // same id (at least once).
            return Outcome::Retry(format!("recording the attempt: {e}"));
        }
        match attempt {
            Attempt::Delivered { status } => {
                tracing::info!(delivery = %found.delivery.id, status, "webhook delivered");
                Outcome::Ack
            }
            Attempt::Failed { error, .. } => Outcome::Retry(error),
        }
    }

    async fn exhausted(&self, delivery: &AmqpDelivery, reason: &str) -> Result<(), String> {
        let Ok(due) = decode(delivery) else {
            return Ok(());
        };
        tracing::warn!(delivery = %due.delivery_id, %reason, "webhook delivery failed for good");
        metrics::counter!("mp3converter_webhook_deliveries_failed_total").increment(1);
        self.jobs
            .webhook_given_up(&due.delivery_id, reason)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(data: serde_json::Value) -> Delivery {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        Delivery {
            id: "dlv_1".into(),
            endpoint_id: "wh_1".into(),
            owner_id: "u".into(),
            message_id: "m".into(),
            event_type: "job.done".into(),
            job_id: None,
            data,
            occurred_at: t,
            state: DeliveryState::Pending,
            attempts: 0,
            response_status: None,
            last_error: None,
            created_at: t,
            updated_at: t,
        }
    }

    #[test]
    fn a_done_job_carries_its_download_url() {
        let d = delivery(serde_json::json!({"job_id": "j", "mp3_id": "abc"}));
        let b: serde_json::Value =
            serde_json::from_slice(&body(&d, "https://mp3.example.com/")).unwrap();
        assert_eq!(b["type"], "job.done");
        assert_eq!(b["timestamp"], "2027-01-15T08:00:00Z");
        assert_eq!(
            b["data"]["download_url"],
            "https://mp3.example.com/download?fid=abc"
        );
        let failed = delivery(serde_json::json!({"job_id": "j", "reason": "no audio"}));
        let b: serde_json::Value = serde_json::from_slice(&body(&failed, "x")).unwrap();
        assert!(b["data"].get("download_url").is_none());
    }
}
