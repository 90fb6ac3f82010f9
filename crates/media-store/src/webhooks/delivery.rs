//! Deliveries: one message to one endpoint, scheduled with a job's outcome
//! or as a test, attempted by notify-svc, and read back as the log.

use super::{Refusal, new_id};
use crate::{
    db::{Error, Jobs},
    job::{Job, JobState},
    outbox,
};
use deadpool_postgres::Transaction;
use mp3converter_proto::{EventType, events::v1::WebhookDue};
use std::time::SystemTime;
use tokio_postgres::Row;

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Retrying,
    Delivered,
    Failed,
}

impl DeliveryState {
    fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "pending" => Self::Pending,
            "retrying" => Self::Retrying,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            other => return Err(Error::Other(format!("unknown delivery state {other:?}"))),
        })
    }

    /// No attempt will be made any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed)
    }
}

/// One message to one endpoint, and how its attempts went.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: String,
    pub owner_id: String,
    /// The `webhook-id` header: the event's id.
    pub message_id: String,
    /// `job.done`, `job.failed` or `webhook.test`.
    pub event_type: String,
    pub job_id: Option<String>,
    /// The message's `data`.
    pub data: serde_json::Value,
    pub occurred_at: SystemTime,
    pub state: DeliveryState,
    pub attempts: i32,
    pub response_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

const DELIVERY_COLUMNS: &str = "d.id, d.endpoint_id, d.owner_id, d.message_id, d.event_type, \
    d.job_id, d.data, d.occurred_at, d.state, d.attempts, d.response_status, d.last_error, \
    d.created_at, d.updated_at";

impl Delivery {
    fn from_row(r: &Row) -> Result<Self, Error> {
        Ok(Self {
            id: r.try_get("id")?,
            endpoint_id: r.try_get("endpoint_id")?,
            owner_id: r.try_get("owner_id")?,
            message_id: r.try_get("message_id")?,
            event_type: r.try_get("event_type")?,
            job_id: r.try_get("job_id")?,
            data: r.try_get("data")?,
            occurred_at: r.try_get("occurred_at")?,
            state: DeliveryState::parse(r.try_get("state")?)?,
            attempts: r.try_get("attempts")?,
            response_status: r.try_get("response_status")?,
            last_error: r.try_get("last_error")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

/// What an attempt needs: the delivery, where it goes, and the signing key.
pub struct Due {
    pub delivery: Delivery,
    pub url: String,
    /// `whsec_…`: never logged (redacted in `Debug`).
    pub secret: String,
}

impl std::fmt::Debug for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Due")
            .field("delivery", &self.delivery)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The endpoint answered 2xx.
    Delivered { status: u16 },
    /// Anything else: `status` if an answer came.
    Failed { status: Option<u16>, error: String },
}
/// Test messages an endpoint may be sent per minute.
pub const TESTS_PER_MINUTE: i64 = 5;

/// The event types of an outcome's message.
pub const JOB_DONE: &str = "job.done";
pub const JOB_FAILED: &str = "job.failed";
pub const WEBHOOK_TEST: &str = "webhook.test";
/// The message `data` of a finished job.
fn outcome_data(job: &Job) -> serde_json::Value {
    let mut data = serde_json::json!({
        "job_id": job.id.to_hex(),
        "filename": job.filename,
    });
    if job.state == JobState::Done {
        data["mp3_id"] = job.mp3_id.map(|m| m.to_hex()).into();
        data["mp3_size_bytes"] = job.mp3_size_bytes.into();
        data["duration_seconds"] = job.duration_seconds.into();
        data["notes"] = job.notes.clone().into();
    } else {
        data["reason"] = job.failure_reason.clone().into();
    }
    data
}

/// Writes, in the transaction of `job`'s finishing move, one delivery of its
/// outcome (message id `event_id`) per endpoint of its owner, each with its
/// `WebhookDue` for `queue`. Deliveries made before (an outcome announced
/// again) are left alone.
pub(crate) async fn schedule_outcome(
    tx: &Transaction<'_>,
    job: &Job,
    event_id: &str,
    queue: &str,
) -> Result<(), Error> {
    let event_type = if job.state == JobState::Done {
        JOB_DONE
    } else {
        JOB_FAILED
    };
    let stmt = tx
        .prepare_cached(
            "INSERT INTO webhook_deliveries \
                 (id, endpoint_id, owner_id, message_id, event_type, job_id, data, occurred_at) \
             SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), e.id, e.owner_id, \
                    $2, $3, $4, $5, $6 \
             FROM webhook_endpoints e WHERE e.owner_id = $1 \
             ON CONFLICT (endpoint_id, message_id) DO NOTHING \
             RETURNING id",
        )
        .await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &job.owner_id,
                &event_id,
                &event_type,
                &job.id.to_hex(),
                &outcome_data(job),
                &job.updated_at,
            ],
        )
        .await?;
    for r in rows {
        let id: String = r.try_get(0)?;
        outbox::write(tx, &due_event(&id, Some(job.id.to_hex()), queue)).await?;
    }
    Ok(())
}

fn due_event(delivery_id: &str, job_id: Option<String>, queue: &str) -> outbox::Event {
    let e = WebhookDue {
        event_id: format!("due-{delivery_id}"),
        delivery_id: delivery_id.to_owned(),
    };
    outbox::Event {
        queue: queue.to_owned(),
        kind: WebhookDue::TYPE,
        event_id: e.event_id.clone(),
        job_id,
        payload: prost::Message::encode_to_vec(&e),
    }
}
impl Jobs {
    /// A `webhook.test` delivery to one of `owner`'s endpoints, due at once;
    /// `None` if it is not theirs. At most [`TESTS_PER_MINUTE`] per endpoint,
    /// so the button cannot be turned into a flood.
    pub async fn send_test_webhook(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<Result<Delivery, Refusal>>, Error> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let Some(endpoint) = tx
            .query_opt(
                "SELECT id FROM webhook_endpoints WHERE owner_id = $1 AND id = $2 FOR UPDATE",
                &[&owner, &id],
            )
            .await?
        else {
            return Ok(None);
        };
        let endpoint: String = endpoint.try_get(0)?;
        let recent: i64 = tx
            .query_one(
                "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 \
                 AND event_type = $2 AND created_at > now() - interval '1 minute'",
                &[&endpoint, &WEBHOOK_TEST],
            )
            .await?
            .try_get(0)?;
        if recent >= TESTS_PER_MINUTE {
            return Ok(Some(Err(Refusal::TestsTooOften(TESTS_PER_MINUTE))));
        }
        let data = serde_json::json!({ "webhook_id": id });
        let row = tx
            .query_one(
                "INSERT INTO webhook_deliveries \
                     (id, endpoint_id, owner_id, message_id, event_type, data) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                &[
                    &new_id("dlv"),
                    &endpoint,
                    &owner,
                    &new_id("msg"),
                    &WEBHOOK_TEST,
                    &data,
                ],
            )
            .await?;
        let delivery = Delivery::from_row(&row)?;
        outbox::write(
            &tx,
            &due_event(&delivery.id, None, &self.routes().webhook_queue),
        )
        .await?;
        tx.commit().await?;
        self.outbox_signal().wake();
        Ok(Some(Ok(delivery)))
    }

    /// `owner`'s latest deliveries (of one endpoint, if given), newest first.
    pub async fn webhook_deliveries(
        &self,
        owner: &str,
        endpoint: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Delivery>, Error> {
        let client = self.pool().get().await?;
        client
            .query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
                     WHERE d.owner_id = $1 AND ($2::text IS NULL OR d.endpoint_id = $2) \
                     ORDER BY d.created_at DESC, d.id LIMIT $3"
                ),
                &[&owner, &endpoint, &limit],
            )
            .await?
            .iter()
            .map(Delivery::from_row)
            .collect()
    }

    /// A delivery with where it goes; `None` once its endpoint is deleted.
    pub async fn webhook_due(&self, delivery_id: &str) -> Result<Option<Due>, Error> {
        let client = self.pool().get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {DELIVERY_COLUMNS}, e.url, e.secret FROM webhook_deliveries d \
                     JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE d.id = $1"
                ),
                &[&delivery_id],
            )
            .await?;
        row.map(|r| {
            Ok(Due {
                delivery: Delivery::from_row(&r)?,
                url: r.try_get("url")?,
                secret: r.try_get("secret")?,
            })
        })
        .transpose()
    }

    /// Records an attempt: delivered, or to be retried (once the retries run
    /// out, [`Self::webhook_given_up`]). A delivered one stays delivered; a
    /// failed one attempted again (its dead letter replayed) moves on.
    pub async fn webhook_attempted(
        &self,
        delivery_id: &str,
        attempt: &Attempt,
    ) -> Result<(), Error> {
        let (state, status, error) = match attempt {
            Attempt::Delivered { status } => ("delivered", Some(i32::from(*status)), None),
            Attempt::Failed { status, error } => {
                ("retrying", status.map(i32::from), Some(error.as_str()))
            }
        };
        let client = self.pool().get().await?;
        client
            .execute(
                "UPDATE webhook_deliveries SET state = $2, attempts = attempts + 1, \
                     response_status = $3, last_error = $4, updated_at = now() \
                 WHERE id = $1 AND state <> 'delivered'",
                &[&delivery_id, &state, &status, &error],
            )
            .await?;
        Ok(())
    }

    /// No attempt will be made any more (the retries, or the broker's
    /// delivery limit, ran out).
    pub async fn webhook_given_up(&self, delivery_id: &str, reason: &str) -> Result<(), Error> {
        let client = self.pool().get().await?;
        client
            .execute(
                "UPDATE webhook_deliveries SET state = 'failed', \
                     last_error = coalesce(last_error, $2), updated_at = now() \
                 WHERE id = $1 AND state IN ('pending', 'retrying')",
                &[&delivery_id, &reason],
            )
            .await?;
        Ok(())
    }

    /// Forgets deliveries made before `before` (the log's retention).
    pub async fn purge_webhook_deliveries(&self, before: SystemTime) -> Result<u64, Error> {
        let client = self.pool().get().await?;
        Ok(client
            .execute(
                "DELETE FROM webhook_deliveries WHERE created_at < $1 \
                 AND state IN ('delivered', 'failed')",
                &[&before],
            )
            .await?)
    }
}
