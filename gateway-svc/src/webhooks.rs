//! WebhookService: a user's webhook endpoints and the log of what was
//! delivered to them. The deliveries themselves are made by notify-svc; this
//! is where endpoints are registered (after the egress policy's check),
//! listed, removed and tested.

use crate::{error::jobs_error, media::caller};
use media_store::{
    Jobs,
    webhooks::{self, Delivery, DeliveryState as State, EgressArgs, Endpoint},
};
use mp3converter_proto::webhooks::v1::{
    CreateWebhookRequest, CreateWebhookResponse, DeleteWebhookRequest, DeleteWebhookResponse,
    DeliveryState, GetWebhookRequest, GetWebhookResponse, ListWebhookDeliveriesRequest,
    ListWebhookDeliveriesResponse, ListWebhooksRequest, ListWebhooksResponse,
    SendTestWebhookRequest, SendTestWebhookResponse, Webhook, WebhookDelivery,
    webhook_service_server::WebhookService,
};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub(crate) struct Webhooks {
    pub(crate) jobs: Jobs,
    pub(crate) egress: EgressArgs,
    pub(crate) max_per_user: u32,
}

/// An endpoint id as the API gives it: `^wh_[0-9a-f]{32}$` (the OpenAPI
/// description's pattern).
fn parse_id(raw: &str) -> Result<&str, Status> {
    let ok = raw.len() == 35
        && raw.starts_with("wh_")
        && raw[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(raw)
    } else {
        Err(Status::invalid_argument(
            "webhook_id: expected \"wh_\" and 32 lowercase hex digits",
        ))
    }
}

fn webhook(e: Endpoint) -> Webhook {
    Webhook {
        webhook_id: e.id,
        url: e.url,
        description: e.description,
        create_time: Some(e.created_at.into()),
    }
}

fn delivery(d: Delivery) -> WebhookDelivery {
    let state = match d.state {
        State::Pending => DeliveryState::Pending,
        State::Retrying => DeliveryState::Retrying,
        State::Delivered => DeliveryState::Delivered,
        State::Failed => DeliveryState::Failed,
    };
    WebhookDelivery {
        delivery_id: d.id,
        webhook_id: d.endpoint_id,
        message_id: d.message_id,
        event_type: d.event_type,
        job_id: d.job_id.unwrap_or_default(),
        state: state.into(),
        attempts: u32::try_from(d.attempts).unwrap_or(0),
        response_status: d
            .response_status
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0),
        last_error: d.last_error.unwrap_or_default(),
        create_time: Some(d.created_at.into()),
        update_time: Some(d.updated_at.into()),
    }
}

impl Webhooks {
    /// The URL as it will be called, or why it cannot be: the policy, and
    /// the addresses its host resolves to now (they are checked again at
    /// every attempt: names move).
    async fn check_url(&self, raw: &str) -> Result<String, Status> {
        let url = self
            .egress
            .check_url(raw)
            .map_err(|why| Status::invalid_argument(format!("url: {why}")))?;
        self.egress
            .resolve(&url)
            .await
            .map_err(|why| Status::invalid_argument(format!("url: {why}")))?;
        Ok(url.to_string())
    }
}

#[tonic::async_trait]
impl WebhookService for Webhooks {
    #[tracing::instrument(skip_all)]
    async fn create_webhook(
        &self,
        req: Request<CreateWebhookRequest>,
    ) -> Result<Response<CreateWebhookResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        if r.description.chars().count() > webhooks::MAX_DESCRIPTION_CHARS
            || r.description.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(format!(
                "description: at most {} characters, none of them control characters",
                webhooks::MAX_DESCRIPTION_CHARS
            )));
        }
        let url = self.check_url(&r.url).await?;
        let created = self
            .jobs
            .create_webhook(&caller.user_id, &url, &r.description, self.max_per_user)
            .await
            .map_err(|e| jobs_error("registering a webhook", &e))?;
        match created {
            Ok((endpoint, secret)) => Ok(Response::new(CreateWebhookResponse {
                webhook: Some(webhook(endpoint)),
                secret,
            })),
            Err(e) => Err(Status::resource_exhausted(e.to_string())),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn list_webhooks(
        &self,
        req: Request<ListWebhooksRequest>,
    ) -> Result<Response<ListWebhooksResponse>, Status> {
        let caller = caller(&req)?;
        let endpoints = self
            .jobs
            .webhooks_of(&caller.user_id)
            .await
            .map_err(|e| jobs_error("listing webhooks", &e))?;
        Ok(Response::new(ListWebhooksResponse {
            webhooks: endpoints.into_iter().map(webhook).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_webhook(
        &self,
        req: Request<GetWebhookRequest>,
    ) -> Result<Response<GetWebhookResponse>, Status> {
        let caller = caller(&req)?;
        let id = parse_id(&req.get_ref().webhook_id)?;
        let endpoint = self
            .jobs
            .webhook_of(&caller.user_id, id)
            .await
            .map_err(|e| jobs_error("finding a webhook", &e))?
            .ok_or_else(|| Status::not_found("no such webhook"))?;
        Ok(Response::new(GetWebhookResponse {
            webhook: Some(webhook(endpoint)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_webhook(
        &self,
        req: Request<DeleteWebhookRequest>,
    ) -> Result<Response<DeleteWebhookResponse>, Status> {
        let caller = caller(&req)?;
        let id = parse_id(&req.get_ref().webhook_id)?;
        let deleted = self
            .jobs
            .delete_webhook(&caller.user_id, id)
            .await
            .map_err(|e| jobs_error("deleting a webhook", &e))?;
        if deleted {
            Ok(Response::new(DeleteWebhookResponse {}))
        } else {
            Err(Status::not_found("no such webhook"))
        }
    }

    #[tracing::instrument(skip_all)]
    async fn send_test_webhook(
        &self,
        req: Request<SendTestWebhookRequest>,
    ) -> Result<Response<SendTestWebhookResponse>, Status> {
        let caller = caller(&req)?;
        let id = parse_id(&req.get_ref().webhook_id)?;
        let sent = self
            .jobs
            .send_test_webhook(&caller.user_id, id)
            .await
            .map_err(|e| jobs_error("testing a webhook", &e))?
            .ok_or_else(|| Status::not_found("no such webhook"))?
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(Response::new(SendTestWebhookResponse {
            delivery: Some(delivery(sent)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_webhook_deliveries(
        &self,
        req: Request<ListWebhookDeliveriesRequest>,
    ) -> Result<Response<ListWebhookDeliveriesResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.get_ref();
        let endpoint = match r.webhook_id.as_str() {
            "" => None,
            id => Some(parse_id(id)?),
        };
        let limit = match r.page_size {
            0 => 20,
            n => n.min(100),
        };
        let found = self
            .jobs
            .webhook_deliveries(&caller.user_id, endpoint, i64::from(limit))
            .await
            .map_err(|e| jobs_error("listing webhook deliveries", &e))?;
        Ok(Response::new(ListWebhookDeliveriesResponse {
            deliveries: found.into_iter().map(delivery).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_any_lookup() {
        assert!(parse_id("wh_0123456789abcdef0123456789abcdef").is_ok());
        for bad in [
            "",
            "wh_",
            "wh_0123456789ABCDEF0123456789abcdef",
            "wh_0123456789abcdef0123456789abcde",
            "xx_0123456789abcdef0123456789abcdef",
            "wh_0123456789abcdef0123456789abcdeg",
            "wh_0123456789abcdef0123456789abcdé",
        ] {
            assert!(parse_id(bad).is_err(), "{bad:?}");
        }
    }
}
