//! Webhooks: the endpoints users register and the deliveries made to them,
//! in the `media` database beside the jobs (migration V3).
//!
//! A job's outcome makes one delivery per endpoint of its owner, written in
//! the transaction of the transition itself ([`schedule_outcome`]), with a
//! `WebhookDue` in the outbox for each: an outcome and its deliveries commit
//! together or not at all, and an outcome announced again (the janitor)
//! makes none twice. notify-svc attempts them ([`Jobs::webhook_due`],
//! [`Jobs::webhook_attempted`]); users read the log
//! ([`Jobs::webhook_deliveries`]).
//!
//! Where a delivery may go is the operator's [`EgressArgs`]: https only, and
//! no loopback, private, link-local or otherwise special address unless a
//! network is allowed explicitly. The gateway checks at registration and
//! notify-svc again on every attempt, on the addresses a name resolves to.
//!
//! Endpoints are here; deliveries (scheduling, tests, attempts, the log)
//! are in `delivery`, the egress policy in `egress`.

mod delivery;
mod egress;

pub(crate) use delivery::schedule_outcome;
pub use delivery::{
    Attempt, Delivery, DeliveryState, Due, JOB_DONE, JOB_FAILED, TESTS_PER_MINUTE, WEBHOOK_TEST,
};
pub use egress::{EgressArgs, RESOLVE_TIMEOUT};

use crate::db::{Error, Jobs};
use base64::Engine;
use std::time::SystemTime;
use tokio_postgres::Row;

/// The longest endpoint URL.
pub const MAX_URL_BYTES: usize = 2048;
/// The longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;

/// A registered endpoint (its secret is only ever returned at creation).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub owner_id: String,
    pub url: String,
    pub description: String,
    pub created_at: SystemTime,
}

impl Endpoint {
    fn from_row(r: &Row) -> Result<Self, Error> {
        Ok(Self {
            id: r.try_get("id")?,
            owner_id: r.try_get("owner_id")?,
            url: r.try_get("url")?,
            description: r.try_get("description")?,
            created_at: r.try_get("created_at")?,
        })
    }
}
/// Why an endpoint was not registered, or a test not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("at most {0} webhook endpoints per user; delete one first")]
    TooMany(u32),
    #[error("at most {0} test messages a minute per endpoint; wait a little")]
    TestsTooOften(i64),
}
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A fresh signing secret: 32 random bytes, as Standard Webhooks spells it.
fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}
impl Jobs {
    /// Registers `url` (already checked against the egress policy) for
    /// `owner`, unless they have `max` already; the endpoint and its secret.
    pub async fn create_webhook(
        &self,
        owner: &str,
        url: &str,
        description: &str,
        max: u32,
    ) -> Result<Result<(Endpoint, String), Refusal>, Error> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        // One registration per owner at a time, so the count holds.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('webhooks:' || $1, 0))",
            &[&owner],
        )
        .await?;
        let n: i64 = tx
            .query_one(
                "SELECT count(*) FROM webhook_endpoints WHERE owner_id = $1",
                &[&owner],
            )
            .await?
            .try_get(0)?;
        if n >= i64::from(max) {
            return Ok(Err(Refusal::TooMany(max)));
        }
        let secret = new_secret();
        let row = tx
            .query_one(
                "INSERT INTO webhook_endpoints (id, owner_id, url, description, secret) \
                 VALUES ($1, $2, $3, $4, $5) \
                 RETURNING id, owner_id, url, description, created_at",
                &[&new_id("wh"), &owner, &url, &description, &secret],
            )
            .await?;
        tx.commit().await?;
        Ok(Ok((Endpoint::from_row(&row)?, secret)))
    }

    /// `owner`'s endpoints, newest first.
    pub async fn webhooks_of(&self, owner: &str) -> Result<Vec<Endpoint>, Error> {
        let client = self.pool().get().await?;
        client
            .query(
                "SELECT id, owner_id, url, description, created_at FROM webhook_endpoints \
                 WHERE owner_id = $1 ORDER BY created_at DESC, id",
                &[&owner],
            )
            .await?
            .iter()
            .map(Endpoint::from_row)
            .collect()
    }

    /// One of `owner`'s endpoints.
    pub async fn webhook_of(&self, owner: &str, id: &str) -> Result<Option<Endpoint>, Error> {
        let client = self.pool().get().await?;
        client
            .query_opt(
                "SELECT id, owner_id, url, description, created_at FROM webhook_endpoints \
                 WHERE owner_id = $1 AND id = $2",
                &[&owner, &id],
            )
            .await?
            .as_ref()
            .map(Endpoint::from_row)
            .transpose()
    }

    /// Removes one of `owner`'s endpoints and its deliveries; whether it was
    /// there.
    pub async fn delete_webhook(&self, owner: &str, id: &str) -> Result<bool, Error> {
        let client = self.pool().get().await?;
        Ok(client
            .execute(
                "DELETE FROM webhook_endpoints WHERE owner_id = $1 AND id = $2",
                &[&owner, &id],
            )
            .await?
            == 1)
    }
}
