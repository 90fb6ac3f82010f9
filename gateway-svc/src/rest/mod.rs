//! The REST edge: the tutorial's routes and the web app, translated into
//! MediaService and WebhookService calls (in-process, through the gRPC
//! server's own layers, as any gRPC client) and AuthService calls.
//!
//! - `GET /`, `GET /assets/{file}`: the web app ([`web`]).
//! - `GET /limits`: what the page needs to know (size limit, options).
//! - `POST /login` (HTTP Basic) → AuthService.Login; answers the JWT as text
//!   (the tutorial), or `{token, expire_time}` with `Accept: application/json`.
//! - `POST /upload` (multipart: option fields, then exactly one file) →
//!   MediaService.Upload, streamed through a bounded channel ([`upload`]).
//! - `GET /download?fid=<mp3 id>` → MediaService.Download, streamed out.
//! - `GET /jobs`, `GET /jobs/{id}`, `DELETE /jobs/{id}` → ListJobs, GetJob,
//!   DeleteJob; `GET /jobs/events` → WatchJobs as Server-Sent Events
//!   ([`jobs`]).
//! - `/uploads…`: resumable uploads over tus 1.0.0 → CreateUpload,
//!   GetUpload, AppendUpload, CancelUpload ([`tus`]).
//! - `/webhooks…` → WebhookService: endpoints, tests, the delivery log
//!   ([`webhooks`]).
//! - `GET /healthz`, `GET /readyz`.
//! - `GET /openapi.json`: all of the above in OpenAPI 3.1 ([`openapi`]);
//!   `GET /docs` renders it.
//!
//! Every error, including the framework's own rejections (a body that is not
//! multipart, a bad query, a method not allowed), is JSON `{code, message}`.

mod account;
mod form;
mod jobs;
pub(crate) mod openapi;
mod tus;
mod upload;
pub(crate) mod web;
mod webhooks;

use crate::{
    auth::{AuthFailure, AuthLayer, Reject, Validator, failure_status},
    config::Config,
    error::ApiError,
};
use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, FromRequestParts, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use mp3converter_proto::{
    auth::v1::{LoginRequest, auth_service_client::AuthServiceClient},
    media::v1::media_service_client::MediaServiceClient,
    webhooks::v1::webhook_service_client::WebhookServiceClient,
};
use serde::{Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use svc_kit::health::Health;
use svc_kit::observe::TracedChannel;
use tonic::Code;

/// A client of our own gRPC API, in this process.
pub(crate) type Own = svc_kit::observe::GrpcClient<svc_kit::grpc::InProcess>;

#[derive(Clone, Debug)]
pub(crate) struct Edge {
    /// Our own gRPC API, in this process.
    pub(crate) media: MediaServiceClient<Own>,
    pub(crate) webhooks: WebhookServiceClient<Own>,
    pub(crate) auth: AuthServiceClient<TracedChannel>,
    pub(crate) health: Health,
    pub(crate) limits: Limits,
    pub(crate) validator: Validator,
    /// Where the client's address is, behind a proxy.
    pub(crate) client_ip_header: Option<http::HeaderName>,
}

/// What the edge enforces and tells the page.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Limits {
    /// The largest video accepted.
    pub(crate) max_upload_bytes: u64,
    /// Uploads in flight per user.
    pub(crate) max_uploads_at_once: u64,
    /// Jobs queued or converting per user.
    pub(crate) max_waiting_jobs: u64,
    /// Videos and MP3s kept per user.
    pub(crate) max_stored_bytes: u64,
    /// Live event streams per user.
    pub(crate) max_watchers: usize,
    /// The longest part converted (after trimming), not of the whole file.
    pub(crate) max_duration_seconds: u64,
}

impl Limits {
    /// The bounds of an upload's multipart body: the file, plus a little for
    /// the framing and option fields.
    pub(crate) fn form_bounds(&self) -> form::Bounds {
        form::Bounds {
            preamble: 4 << 10,
            part_headers: 8 << 10,
            body: self.max_upload_bytes.saturating_add(1 << 20),
        }
    }
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            max_upload_bytes: c.max_upload_size,
            max_uploads_at_once: c.max_uploads_per_user,
            max_waiting_jobs: c.max_waiting_jobs_per_user,
            max_stored_bytes: c.max_stored_per_user,
            max_watchers: c.max_watchers_per_user,
            max_duration_seconds: c.max_input_duration.as_secs(),
        }
    }
}

/// REST rejections of the auth layer: JSON, with `WWW-Authenticate`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JsonReject;

impl Reject<Body> for JsonReject {
    fn reject(&self, failure: &AuthFailure) -> Response<Body> {
        let mut res = ApiError::from(failure_status(failure)).into_response();
        if !matches!(failure, AuthFailure::Unavailable) {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mp3converter\""),
            );
        }
        res
    }
}

pub(crate) fn router(edge: Edge) -> Router {
    let validator = edge.validator.clone();
    let protected = Router::new()
        .route("/upload", post(upload::upload))
        .route("/download", get(jobs::download))
        .route("/jobs", get(jobs::list))
        .route("/jobs/events", get(jobs::events))
        .route("/jobs/{id}", get(jobs::get).delete(jobs::delete))
        .route(
            "/webhooks",
            get(webhooks::list)
                .post(webhooks::create)
                // A small JSON body.
                .layer(axum::extract::DefaultBodyLimit::max(16 << 10)),
        )
        .route("/webhooks/deliveries", get(webhooks::deliveries))
        .route(
            "/webhooks/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route("/webhooks/{id}/test", post(webhooks::test))
        .route_layer(AuthLayer::new(validator.clone(), JsonReject));
    let uploads = Router::new()
        .route("/uploads", post(tus::create))
        .route(
            "/uploads/{id}",
            axum::routing::head(tus::offset)
                .patch(tus::append)
                .delete(tus::terminate),
        )
        .route_layer(axum::middleware::from_fn(tus::require_version))
        .route_layer(AuthLayer::new(validator, JsonReject))
        // tus discovery and browsers' preflights carry no token.
        .route("/uploads", axum::routing::options(tus::discover))
        .route("/uploads/{id}", axum::routing::options(tus::discover_one))
        .layer(axum::middleware::map_response(tus::common_headers));
    Router::new()
        .route("/", get(web::index))
        .route("/docs", get(web::reference))
        .route("/assets/{file}", get(web::asset))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/limits", get(limits))
        .route("/login", post(login))
        // auth-svc checks the token of these itself.
        .merge(
            Router::new()
                .route("/logout", post(account::logout))
                .route("/password", post(account::change_password))
                .route("/admin/users/disable", post(account::disable_user))
                .route("/admin/users/enable", post(account::enable_user))
                // Their bodies are a few small JSON fields.
                .layer(axum::extract::DefaultBodyLimit::max(16 << 10)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .merge(uploads)
        .fallback(|| async { ApiError::new(Code::NotFound, "no such route") })
        // The request is well formed; the route does not offer the method:
        // UNIMPLEMENTED, as gRPC-Gateway maps it, with HTTP's own 405.
        .method_not_allowed_fallback(|| async {
            ApiError::new(Code::Unimplemented, "method not allowed on this route")
                .with_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .with_state(edge)
        // Last, so it wraps every route and sees the matched route template.
        .layer(svc_kit::observe::ServerLayer::http())
}

/// Liveness: the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    security(()),
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: its dependencies answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    security(()),
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String),
        (status = 503, description = "Not ready", content_type = "text/plain", body = String),
    )
)]
async fn readyz(State(edge): State<Edge>) -> impl IntoResponse {
    if edge.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// What the edge enforces: the upload size, the per-user quotas, and the
/// output options' ranges.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct LimitsJson {
    #[serde(flatten)]
    limits: Limits,
    options: OptionLimits,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct OptionLimits {
    /// The shortest a trimmed part may be (seconds).
    min_trimmed_seconds: f64,
    bitrate_kbps: Range,
    quality: Range,
    channels: Vec<&'static str>,
    sample_rate: Vec<&'static str>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Range {
    min: u32,
    max: u32,
}

/// The limits and the options' ranges, for a page or a client to check
/// before uploading.
#[utoipa::path(
    get,
    path = "/limits",
    tag = "service",
    security(()),
    responses((status = 200, description = "The limits", body = LimitsJson))
)]
async fn limits(State(edge): State<Edge>) -> Json<LimitsJson> {
    use media_store::options::MIN_TRIMMED;
    use media_store::options::{BITRATE_KBPS, QUALITY};
    Json(LimitsJson {
        limits: edge.limits.clone(),
        options: OptionLimits {
            min_trimmed_seconds: MIN_TRIMMED,
            bitrate_kbps: Range {
                min: *BITRATE_KBPS.start(),
                max: *BITRATE_KBPS.end(),
            },
            quality: Range {
                min: *QUALITY.start(),
                max: *QUALITY.end(),
            },
            channels: vec!["source", "mono", "stereo"],
            sample_rate: vec!["source", "44100", "48000"],
        },
    })
}

/// A gRPC request carrying the caller's `Authorization` header on.
pub(crate) fn forward<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(v) = headers.get(header::AUTHORIZATION)
        && let Ok(v) = tonic::metadata::MetadataValue::try_from(v.as_bytes())
    {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

/// `Query<T>` whose rejection is our JSON error.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct LoginJson {
    /// The JWT, for `Authorization: Bearer`.
    token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    expire_time: Option<String>,
}

/// The client's address: the proxy's header if configured, else the peer.
fn client_addr(edge: &Edge, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<String> {
    if let Some(name) = &edge.client_ip_header {
        // The last address a proxy appended is the one it saw.
        let v = headers.get(name)?.to_str().ok()?;
        return v.rsplit(',').next().map(|s| s.trim().to_owned());
    }
    peer.map(|p| p.ip().to_string())
}

/// Names the client to auth-svc (`x-client-addr`), which counts password
/// attempts per client address.
pub(crate) fn name_client<T>(
    req: &mut tonic::Request<T>,
    edge: &Edge,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) {
    if let Some(addr) = client_addr(edge, headers, peer)
        && let Ok(v) = addr.parse()
    {
        req.metadata_mut().insert("x-client-addr", v);
    }
}

/// Logs in with HTTP Basic (`curl -u EMAIL:PASSWORD`): answers the JWT as
/// plain text (the tutorial's `TOKEN=$(curl …)`), or `{token, expire_time}`
/// with `Accept: application/json`.
#[utoipa::path(
    post,
    path = "/login",
    tag = "account",
    security(("basic" = [])),
    responses(
        (status = 200, description = "The token", content(
            (String = "text/plain"),
            (LoginJson = "application/json"),
        )),
        (status = 400, description = "A malformed email or password", body = svc_kit::error::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = svc_kit::error::ErrorBody,
         headers(("www-authenticate" = String))),
        (status = 429, description = "Too many failed attempts; `Retry-After`", body = svc_kit::error::ErrorBody),
        (status = 503, description = "The authentication service is busy or unavailable", body = svc_kit::error::ErrorBody),
    )
)]
async fn login(
    State(edge): State<Edge>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let unauthorized = |msg: &str| {
        let mut res = ApiError::new(Code::Unauthenticated, msg).into_response();
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"mp3converter\""),
        );
        res
    };
    let Some((email, password)) = basic_credentials(&headers) else {
        return Ok(unauthorized(
            "missing credentials: use HTTP Basic (curl -u EMAIL:PASSWORD)",
        ));
    };
    let mut req = tonic::Request::new(LoginRequest { email, password });
    name_client(&mut req, &edge, &headers, peer.map(|p| p.0.0));
    match edge.auth.clone().login(req).await {
        Ok(res) => {
            let res = res.into_inner();
            let wants_json = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/json"));
            Ok(if wants_json {
                Json(LoginJson {
                    token: res.token,
                    expire_time: res.expire_time.map(|t| t.to_string()),
                })
                .into_response()
            } else {
                // The tutorial's `TOKEN=$(curl … /login …)`: the bare token.
                (
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    res.token,
                )
                    .into_response()
            })
        }
        Err(s) if s.code() == Code::Unauthenticated => Ok(unauthorized(s.message())),
        // Bad input; too many attempts (429 with Retry-After); hashing
        // slots all busy (503 with Retry-After).
        Err(s) if s.code() == Code::InvalidArgument || s.code() == Code::ResourceExhausted => {
            Err(s.into())
        }
        Err(s) if s.code() == Code::Unavailable && svc_kit::error::retry_after(&s).is_some() => {
            Err(s.into())
        }
        Err(s) => {
            tracing::warn!(code = ?s.code(), "login: auth-svc failed");
            Err(ApiError::new(
                Code::Unavailable,
                "the authentication service is unavailable; retry later",
            ))
        }
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (email, password) = decoded.split_once(':')?;
    Some((email.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::STANDARD.encode("a@b.c:pa:ss");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {enc}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(("a@b.c".to_owned(), "pa:ss".to_owned()))
        );
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
    }
}
