//! The REST edge: the tutorial's routes, translated into MediaService and
//! AuthService calls.
//!
//! - `POST /login` (HTTP Basic) → AuthService.Login; answers the JWT as text.
//! - `POST /upload` (multipart, exactly one file, `Authorization: Bearer`) →
//!   MediaService.Upload, the file streamed through a bounded channel.
//! - `GET /download?fid=<mp3 id>` → MediaService.Download, streamed out.
//! - `GET /jobs`, `GET /jobs/{id}` → ListJobs, GetJob.
//! - `GET /healthz`, `GET /readyz`.

use crate::{
    auth::{AuthFailure, AuthLayer, Reject, Validator, failure_status},
    error::ApiError,
    media::MAX_CHUNK,
};
use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, Multipart, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use futures::StreamExt;
use mp3converter_proto::{
    auth::v1::{LoginRequest, auth_service_client::AuthServiceClient},
    media::v1::{
        self as pb, DownloadRequest, GetJobRequest, ListJobsRequest, UploadCommit, UploadMetadata,
        UploadRequest, download_response, media_service_client::MediaServiceClient, upload_request,
    },
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use svc_kit::health::Health;
use svc_kit::observe::TracedChannel;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub(crate) struct Edge {
    pub(crate) media: MediaServiceClient<TracedChannel>,
    pub(crate) auth: AuthServiceClient<TracedChannel>,
    pub(crate) health: Health,
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

pub(crate) fn router(edge: Edge, validator: Validator, max_upload: u64) -> Router {
    // Multipart framing adds a little to the file; anything beyond this is
    // refused by the body limit before the gRPC side sees it.
    let body_limit = usize::try_from(max_upload.saturating_add(1 << 20)).unwrap_or(usize::MAX);
    let protected = Router::new()
        .route(
            "/upload",
            post(upload).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/download", get(download))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route_layer(AuthLayer::new(validator, JsonReject));
    Router::new()
        .route("/login", post(login))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(|| async { ApiError::new(Code::NotFound, "no such route") })
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

/// A gRPC request carrying the caller's `Authorization` header on.
fn forward<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(v) = headers.get(header::AUTHORIZATION)
        && let Ok(v) = tonic::metadata::MetadataValue::try_from(v.as_bytes())
    {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

async fn login(State(edge): State<Edge>, headers: HeaderMap) -> Result<Response, ApiError> {
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
    match edge
        .auth
        .clone()
        .login(LoginRequest { email, password })
        .await
    {
        Ok(res) => Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            res.into_inner().token,
        )
            .into_response()),
        Err(s) if s.code() == Code::Unauthenticated => Ok(unauthorized(s.message())),
        Err(s) if s.code() == Code::InvalidArgument => Err(s.into()),
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

#[derive(Debug, Serialize)]
pub(crate) struct JobJson {
    job_id: String,
    video_id: String,
    filename: String,
    size_bytes: u64,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mp3_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    created_at: String,
    updated_at: String,
}

fn rfc3339(t: Option<prost_types::Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

impl From<pb::Job> for JobJson {
    fn from(j: pb::Job) -> Self {
        let state = match pb::JobState::try_from(j.state) {
            Ok(pb::JobState::Queued) => "queued",
            Ok(pb::JobState::Converting) => "converting",
            Ok(pb::JobState::Done) => "done",
            Ok(pb::JobState::Failed) => "failed",
            _ => "unknown",
        };
        Self {
            job_id: j.job_id,
            video_id: j.video_id,
            filename: j.filename,
            size_bytes: j.size_bytes,
            state,
            mp3_id: (!j.mp3_id.is_empty()).then_some(j.mp3_id),
            failure_reason: (!j.failure_reason.is_empty()).then_some(j.failure_reason),
            created_at: rfc3339(j.create_time),
            updated_at: rfc3339(j.update_time),
        }
    }
}

const ONE_FILE: &str = "exactly 1 file required";

/// Streams the one file of a multipart body into MediaService.Upload. The
/// commit is sent only once the whole body has been read and holds exactly
/// one file; any failure before that (a second file, a broken connection, a
/// body over the limit) drops the stream without a commit, and the gRPC side
/// discards the partial upload.
async fn upload(
    State(edge): State<Edge>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Json<JobJson>, ApiError> {
    let (tx, rx) = mpsc::channel::<UploadRequest>(8);
    let req = forward(&headers, ReceiverStream::new(rx));
    let mut client = edge.media.clone();
    let call = tokio::spawn(async move { client.upload(req).await }.in_current_span());

    let pumped: Result<(), ApiError> = async {
        let send = |p| {
            let tx = tx.clone();
            async move {
                tx.send(UploadRequest { payload: Some(p) })
                    .await
                    .map_err(|_| ()) // the call ended early; its status says why
            }
        };
        let mut files = 0;
        let mut total: u64 = 0;
        while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
            if field.file_name().is_none() {
                continue; // a plain form field: not ours to interpret
            }
            files += 1;
            if files > 1 {
                return Err(ApiError::bad_request(ONE_FILE));
            }
            let meta = UploadMetadata {
                filename: field.file_name().unwrap_or_default().to_owned(),
                content_type: field.content_type().unwrap_or_default().to_owned(),
                declared_size_bytes: None,
            };
            if send(upload_request::Payload::Metadata(meta)).await.is_err() {
                return Ok(());
            }
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                for piece in chunk.chunks(MAX_CHUNK) {
                    total += piece.len() as u64;
                    let piece = chunk.slice_ref(piece);
                    if send(upload_request::Payload::Chunk(piece)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if files == 0 {
            return Err(ApiError::bad_request(ONE_FILE));
        }
        let _ = send(upload_request::Payload::Commit(UploadCommit {
            total_bytes: total,
        }))
        .await;
        Ok(())
    }
    .await;
    drop(tx);

    let result = call
        .await
        .map_err(|_| ApiError::new(Code::Internal, "internal error"))?;
    // The edge's own verdict (bad multipart) wins; the call then only
    // reports the discarded upload.
    pumped?;
    match result {
        Ok(res) => {
            Ok(Json(res.into_inner().job.map(JobJson::from).ok_or_else(
                || ApiError::new(Code::Internal, "internal error"),
            )?))
        }
        Err(s) if s.code() == Code::ResourceExhausted => {
            Err(ApiError::from(s).with_status(StatusCode::PAYLOAD_TOO_LARGE))
        }
        Err(s) => Err(s.into()),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        Code::ResourceExhausted
    } else {
        Code::InvalidArgument
    };
    ApiError::new(code, format!("bad upload body: {}", e.body_text())).with_status(status)
}

async fn download(
    State(edge): State<Edge>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(fid) = q.get("fid").filter(|f| !f.is_empty()) else {
        return Err(ApiError::bad_request(
            "query parameter `fid` (the MP3's id) is required",
        ));
    };
    let mut stream = edge
        .media
        .clone()
        .download(forward(
            &headers,
            DownloadRequest {
                mp3_id: fid.clone(),
            },
        ))
        .await?
        .into_inner();
    let meta = match stream.message().await? {
        Some(pb::DownloadResponse {
            payload: Some(download_response::Payload::Metadata(m)),
        }) => m,
        _ => return Err(ApiError::new(Code::Internal, "internal error")),
    };
    let body = Body::from_stream(stream.map(|msg| match msg {
        Ok(pb::DownloadResponse {
            payload: Some(download_response::Payload::Chunk(b)),
        }) => Ok(b),
        Ok(_) => Err(std::io::Error::other(
            "unexpected message in the download stream",
        )),
        Err(s) => Err(std::io::Error::other(s.message().to_owned())),
    }));
    let disposition = format!(
        "attachment; filename=\"{}\"",
        meta.filename.replace('"', "")
    );
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size_bytes));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

async fn get_job(
    State(edge): State<Edge>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobJson>, ApiError> {
    let job = edge
        .media
        .clone()
        .get_job(forward(&headers, GetJobRequest { job_id: id }))
        .await?
        .into_inner()
        .job
        .ok_or_else(|| ApiError::new(Code::Internal, "internal error"))?;
    Ok(Json(job.into()))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    page_size: Option<u32>,
    page_token: Option<String>,
}

#[derive(Debug, Serialize)]
struct JobList {
    jobs: Vec<JobJson>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

async fn list_jobs(
    State(edge): State<Edge>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let req = ListJobsRequest {
        page_size: q.page_size.unwrap_or(0),
        page_token: q.page_token.unwrap_or_default(),
    };
    let res = edge
        .media
        .clone()
        .list_jobs(forward(&headers, req))
        .await?
        .into_inner();
    Ok(Json(JobList {
        jobs: res.jobs.into_iter().map(JobJson::from).collect(),
        next_page_token: res.next_page_token,
    }))
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
