//! notify-svc's receipts (`UserNotified`, from the `notified` queue): each
//! records on its job that the user was told. A finished job that never gets
//! one is announced again by the janitor, so an outcome lost between the
//! queue and the inbox (a retry dropped in a broker restart, say) still
//! reaches the user.

use amqp_kit::{
    consumer::{Handler, Outcome},
    lapin::message::Delivery,
};
use media_store::{Jobs, mongodb::bson::oid::ObjectId};

use mp3converter_proto::events::v1::UserNotified;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct Receipts {
    pub(crate) jobs: Jobs,
}

impl Handler for Receipts {
    async fn handle(&self, delivery: &Delivery, _abandon: CancellationToken) -> Outcome {
        let receipt = match amqp_kit::decode::<UserNotified>(delivery) {
            Ok(r) => r,
            Err(e) => return Outcome::DeadLetter(e.to_string()),
        };
        let Ok(id) = receipt.job_id.parse::<ObjectId>() else {
            return Outcome::DeadLetter(format!("receipt for a bad job id {:?}", receipt.job_id));
        };
        match self.jobs.mark_notified(id).await {
            Ok(()) => {
                tracing::info!(job_id = %id, result = %receipt.result, "the user was told");
                Outcome::Ack
            }
            Err(e) => Outcome::Retry(format!("recording the receipt: {e}")),
        }
    }

    async fn exhausted(&self, delivery: &Delivery, reason: &str) -> Result<(), String> {
        // Only costs a second announcement (and no second email): the
        // janitor sees no receipt.
        tracing::warn!(%reason, message_id = ?delivery.properties.message_id(), "dropping a receipt");
        Ok(())
    }
}
