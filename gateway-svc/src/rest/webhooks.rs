//! Webhooks over REST: each route is one WebhookService call, with the
//! caller's token passed on.
//!
//! - `POST /webhooks` `{url, description?}` → 201, the endpoint and its
//!   signing secret (shown only here).
//! - `GET /webhooks`, `GET /webhooks/{id}`, `DELETE /webhooks/{id}`.
//! - `POST /webhooks/{id}/test` → 202, a `webhook.test` delivery on its way.
//! - `GET /webhooks/deliveries` → the latest deliveries and how they went.

use super::{ApiQuery, Edge, account::json_rejection, forward};
use crate::error::ApiError;
use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
};
use mp3converter_proto::webhooks::v1::{
    self as pb, CreateWebhookRequest, DeleteWebhookRequest, GetWebhookRequest,
    ListWebhookDeliveriesRequest, ListWebhooksRequest, SendTestWebhookRequest,
};
use serde::{Deserialize, Serialize};
use svc_kit::error::ErrorBody;
use tonic::Code;
use utoipa::{IntoParams, ToSchema};

/// An endpoint that receives the caller's job outcomes.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Webhook)]
pub(crate) struct WebhookJson {
    /// `wh_` and 32 hex digits.
    #[schema(pattern = r"^wh_[0-9a-f]{32}$")]
    id: String,
    url: String,
    description: String,
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<pb::Webhook> for WebhookJson {
    fn from(w: pb::Webhook) -> Self {
        Self {
            id: w.webhook_id,
            url: w.url,
            description: w.description,
            created_at: w.create_time.map(|t| t.to_string()).unwrap_or_default(),
        }
    }
}

/// A new endpoint, with the secret its messages are signed with.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedWebhook)]
pub(crate) struct CreatedJson {
    #[serde(flatten)]
    webhook: WebhookJson,
    /// `whsec_` and the base64 of 32 random bytes: the HMAC-SHA256 key of
    /// the `webhook-signature` header (Standard Webhooks). Shown only now.
    #[schema(pattern = r"^whsec_[A-Za-z0-9+/]+=*$")]
    secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewWebhook {
    /// Where to POST the messages: `https://` (`http://` only where the
    /// operator allows it), a public host, no credentials or fragment.
    #[schema(min_length = 1, max_length = 2048)]
    url: String,
    /// For your own reference.
    #[serde(default)]
    #[schema(max_length = 256)]
    description: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookList {
    webhooks: Vec<WebhookJson>,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeliveryState {
    /// Waiting for its first attempt.
    Pending,
    /// An attempt failed; another is due.
    Retrying,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
}

/// One message to one endpoint, and how it went.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub(crate) struct DeliveryJson {
    id: String,
    webhook_id: String,
    /// The `webhook-id` header: the same on every attempt; deduplicate by it.
    message_id: String,
    /// `job.done`, `job.failed` or `webhook.test`.
    event_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    #[schema(required = false)]
    job_id: String,
    state: DeliveryState,
    attempts: u32,
    /// The HTTP status of the last answer, if one came.
    #[serde(skip_serializing_if = "Option::is_none")]
    response_status: Option<u32>,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    #[schema(required = false)]
    last_error: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<pb::WebhookDelivery> for DeliveryJson {
    fn from(d: pb::WebhookDelivery) -> Self {
        let state = match d.state() {
            pb::DeliveryState::Retrying => DeliveryState::Retrying,
            pb::DeliveryState::Delivered => DeliveryState::Delivered,
            pb::DeliveryState::Failed => DeliveryState::Failed,
            pb::DeliveryState::Pending | pb::DeliveryState::Unspecified => DeliveryState::Pending,
        };
        Self {
            id: d.delivery_id,
            webhook_id: d.webhook_id,
            message_id: d.message_id,
            event_type: d.event_type,
            job_id: d.job_id,
            state,
            attempts: d.attempts,
            response_status: (d.response_status != 0).then_some(d.response_status),
            last_error: d.last_error,
            created_at: d.create_time.map(|t| t.to_string()).unwrap_or_default(),
            updated_at: d.update_time.map(|t| t.to_string()).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryList {
    deliveries: Vec<DeliveryJson>,
}

fn internal() -> ApiError {
    ApiError::new(Code::Internal, "internal error")
}

/// Registers an endpoint. Every outcome of the caller's jobs is then POSTed
/// to it as a signed Standard Webhooks message (`webhook-id`,
/// `webhook-timestamp`, `webhook-signature`), retried with backoff until it
/// answers 2xx.
#[utoipa::path(
    post,
    path = "/webhooks",
    operation_id = "create_webhook",
    tag = "webhooks",
    request_body = NewWebhook,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered; the secret is shown only now", body = CreatedJson),
        (status = 400, description = "A bad body, or a URL that is not https:// to a public host", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 413, description = "A body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "The caller has the most endpoints allowed", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: Result<Json<NewWebhook>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedJson>), ApiError> {
    let Json(body) = body.map_err(|e| json_rejection("{\"url\", \"description\"?}", &e))?;
    let res = edge
        .webhooks
        .clone()
        .create_webhook(forward(
            &headers,
            CreateWebhookRequest {
                url: body.url,
                description: body.description,
            },
        ))
        .await?
        .into_inner();
    let webhook = res.webhook.ok_or_else(internal)?.into();
    Ok((
        StatusCode::CREATED,
        Json(CreatedJson {
            webhook,
            secret: res.secret,
        }),
    ))
}

/// The caller's endpoints, newest first (without their secrets).
#[utoipa::path(
    get,
    path = "/webhooks",
    operation_id = "list_webhooks",
    tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The endpoints", body = WebhookList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(edge): State<Edge>,
    headers: HeaderMap,
) -> Result<Json<WebhookList>, ApiError> {
    let res = edge
        .webhooks
        .clone()
        .list_webhooks(forward(&headers, ListWebhooksRequest {}))
        .await?
        .into_inner();
    Ok(Json(WebhookList {
        webhooks: res.webhooks.into_iter().map(WebhookJson::from).collect(),
    }))
}

/// One of the caller's endpoints.
#[utoipa::path(
    get,
    path = "/webhooks/{id}",
    operation_id = "get_webhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = r"^wh_[0-9a-f]{32}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The endpoint", body = WebhookJson),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such endpoint (or someone else's)", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(edge): State<Edge>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<WebhookJson>, ApiError> {
    let res = edge
        .webhooks
        .clone()
        .get_webhook(forward(&headers, GetWebhookRequest { webhook_id: id }))
        .await?
        .into_inner();
    Ok(Json(res.webhook.ok_or_else(internal)?.into()))
}

/// Removes one of the caller's endpoints; deliveries still due to it are
/// dropped.
#[utoipa::path(
    delete,
    path = "/webhooks/{id}",
    operation_id = "delete_webhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = r"^wh_[0-9a-f]{32}$")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such endpoint (or someone else's)", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(edge): State<Edge>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edge.webhooks
        .clone()
        .delete_webhook(forward(&headers, DeleteWebhookRequest { webhook_id: id }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a `webhook.test` message to the endpoint, signed, retried and
/// logged like a real one.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/test",
    operation_id = "send_test_webhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = r"^wh_[0-9a-f]{32}$")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "On its way; follow it in `GET /webhooks/deliveries`", body = DeliveryJson),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such endpoint (or someone else's)", body = ErrorBody),
        (status = 429, description = "Over 5 test messages a minute to this endpoint", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn test(
    State(edge): State<Edge>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeliveryJson>), ApiError> {
    let res = edge
        .webhooks
        .clone()
        .send_test_webhook(forward(&headers, SendTestWebhookRequest { webhook_id: id }))
        .await?
        .into_inner();
    Ok((
        StatusCode::ACCEPTED,
        Json(res.delivery.ok_or_else(internal)?.into()),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveriesQuery {
    /// Deliveries to show (0 or absent: 20; over 100: 100).
    #[param(value_type = u64, required = false, minimum = 0, maximum = 4294967295_u64, nullable = false)]
    page_size: Option<u32>,
    /// Only this endpoint's (absent or empty: all of the caller's).
    #[param(pattern = r"^(wh_[0-9a-f]{32})?$", nullable = false)]
    webhook_id: Option<String>,
}

/// The caller's latest deliveries, newest first: state, attempts, and the
/// endpoint's last answer.
#[utoipa::path(
    get,
    path = "/webhooks/deliveries",
    operation_id = "list_webhook_deliveries",
    tag = "webhooks",
    params(DeliveriesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The deliveries", body = DeliveryList),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn deliveries(
    State(edge): State<Edge>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let res = edge
        .webhooks
        .clone()
        .list_webhook_deliveries(forward(
            &headers,
            ListWebhookDeliveriesRequest {
                page_size: q.page_size.unwrap_or(0),
                webhook_id: q.webhook_id.unwrap_or_default(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(DeliveryList {
        deliveries: res.deliveries.into_iter().map(DeliveryJson::from).collect(),
    }))
}
