//! The REST edge: the tutorial's routes and the web app, translated into
//! MediaService and AuthService calls (over loopback, as any gRPC client).
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
//! - `GET /healthz`, `GET /readyz`.
//!
//! Every error, including the framework's own rejections (a body that is not
//! multipart, a bad query, a method not allowed), is JSON `{code, message}`.

mod account;
mod form;
mod jobs;
mod upload;
pub(crate) mod web;

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
};
use serde::{Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use svc_kit::health::Health;
use svc_kit::observe::TracedChannel;
use tonic::Code;

#[derive(Clone, Debug)]
pub(crate) struct Edge {
    pub(crate) media: MediaServiceClient<TracedChannel>,
    pub(crate) auth: AuthServiceClient<TracedChannel>,
    pub(crate) health: Health,
    pub(crate) limits: Limits,
    pub(crate) validator: Validator,
    /// Where the client's address is, behind a proxy.
    pub(crate) client_ip_header: Option<http::HeaderName>,
}

/// What the edge enforces and tells the page.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Limits {
    pub(crate) max_upload_bytes: u64,
    pub(crate) max_uploads_at_once: u64,
    pub(crate) max_waiting_jobs: u64,
    pub(crate) max_stored_bytes: u64,
    pub(crate) max_watchers: usize,
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
        .route_layer(AuthLayer::new(validator, JsonReject));
    Router::new()
        .route("/", get(web::index))
        .route("/assets/{file}", get(web::asset))
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
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(protected)
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

async fn readyz(State(edge): State<Edge>) -> impl IntoResponse {
    if edge.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn limits(State(edge): State<Edge>) -> Json<serde_json::Value> {
    use media_store::options::MIN_TRIMMED;
    use media_store::options::{BITRATE_KBPS, QUALITY};
    let l = &edge.limits;
    Json(serde_json::json!({
        "max_upload_bytes": l.max_upload_bytes,
        "max_uploads_at_once": l.max_uploads_at_once,
        "max_waiting_jobs": l.max_waiting_jobs,
        "max_stored_bytes": l.max_stored_bytes,
        "max_watchers": l.max_watchers,
        // Of the part converted (after trimming), not of the whole file.
        "max_duration_seconds": l.max_duration_seconds,
        "options": {
            "min_trimmed_seconds": MIN_TRIMMED,
            "bitrate_kbps": { "min": BITRATE_KBPS.start(), "max": BITRATE_KBPS.end() },
            "quality": { "min": QUALITY.start(), "max": QUALITY.end() },
            "channels": ["source", "mono", "stereo"],
            "sample_rate": ["source", "44100", "48000"],
        },
    }))
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

#[derive(Debug, Serialize)]
struct LoginJson {
    token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
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
