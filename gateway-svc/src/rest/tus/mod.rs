//! Resumable uploads over tus 1.0.0 (<https://tus.io/protocols/resumable-upload>)
//! with the creation, termination, expiration and checksum (sha256)
//! extensions, each request one MediaService call:
//!
//! - `OPTIONS /uploads`: what the server supports (no token needed).
//! - `POST /uploads` (`Upload-Length`, `Upload-Metadata`) → CreateUpload;
//!   `201` with `Location: /uploads/{id}` (the job's id).
//! - `HEAD /uploads/{id}` → GetUpload: `Upload-Offset`, where to continue.
//! - `PATCH /uploads/{id}` (`Upload-Offset`, body
//!   `application/offset+octet-stream`, optional `Upload-Checksum: sha256
//!   <base64>`) → AppendUpload; `204` with the new `Upload-Offset`. The job is
//!   queued when the last byte is stored. A wrong offset is `409`, another
//!   PATCH in progress `423`, a checksum mismatch `460`.
//! - `DELETE /uploads/{id}` → CancelUpload.
//!
//! `Upload-Metadata` carries the file's name (`filename` or `name`), its
//! type (`filetype` or `type`) and the MP3 options as `POST /upload` names
//! them (`bitrate`, `quality`, `channels`, `sample_rate`, `trim_start`,
//! `trim_end`). Every answer carries `Tus-Resumable` and, for browsers on
//! other origins, the CORS headers tus clients need (tokens are explicit
//! `Authorization` headers, never cookies, so any origin may call).

use super::{Edge, forward};
use crate::{error::ApiError, media::MAX_CHUNK};
use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use futures::StreamExt;
use headers::*;
use mp3converter_proto::media::v1::{
    AppendStart, AppendUploadRequest, CancelUploadRequest, CreateUploadRequest, GetUploadRequest,
    ResumableUpload, append_upload_request,
};
use svc_kit::error::ErrorBody;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::Instrument;

mod headers;

pub(crate) use headers::{TusVersion, common_headers};

/// What the server supports.
#[utoipa::path(
    options,
    path = "/uploads",
    tag = "uploads",
    security(()),
    responses(
        (status = 204, description = "tus discovery: `Tus-Version`, `Tus-Extension`, `Tus-Max-Size`, `Tus-Checksum-Algorithm`"),
    )
)]
pub(crate) async fn discover(State(edge): State<Edge>, headers: HeaderMap) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(TUS_VERSION, HeaderValue::from_static(VERSION));
    h.insert(TUS_EXTENSION, HeaderValue::from_static(EXTENSIONS));
    h.insert(
        TUS_MAX_SIZE,
        HeaderValue::from(edge.limits.max_upload_bytes),
    );
    h.insert(TUS_CHECKSUM_ALGORITHM, HeaderValue::from_static("sha256"));
    // A browser's preflight.
    if headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, HEAD, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Metadata, \
                 Upload-Offset, Upload-Checksum, Upload-Defer-Length, Upload-Concat, \
                 X-Requested-With, X-HTTP-Method-Override",
            ),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(86_400));
    }
    res
}

/// The same for one upload (a browser's preflight before `PATCH`).
#[utoipa::path(
    options,
    path = "/uploads/{id}",
    operation_id = "discover_upload",
    tag = "uploads",
    security(()),
    params(("id" = String, Path, description = "The upload's id")),
    responses((status = 204, description = "tus discovery, as `OPTIONS /uploads`"))
)]
pub(crate) async fn discover_one(state: State<Edge>, headers: HeaderMap) -> Response {
    discover(state, headers).await
}

/// Starts a resumable upload (tus creation): the job is kept, under the
/// quotas, until its last byte arrives by `PATCH` (then it is queued) or it
/// expires (`Upload-Expires`).
#[utoipa::path(
    post,
    path = "/uploads",
    tag = "uploads",
    security(("bearer" = [])),
    params(
        ("Tus-Resumable" = TusVersion, Header, description = "The protocol version"),
        ("Upload-Length" = u64, Header, description = "The file's size in bytes"),
        ("Upload-Metadata" = Option<String>, Header, description = "`key base64(value)` pairs, comma-separated: `filename`, `filetype`, and the MP3 options of `POST /upload`"),
    ),
    responses(
        (status = 201, description = "Created: `Location: /uploads/{id}`, `Upload-Expires`"),
        (status = 400, description = "No `Tus-Resumable`, no or a bad `Upload-Length`, bad metadata or options", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 412, description = "Another `Tus-Resumable` version than 1.0.0", body = ErrorBody),
        (status = 413, description = "Over the size limit (`Tus-Max-Size`)", body = ErrorBody),
        (status = 429, description = "Over a per-user quota (unfinished uploads count until they finish, are deleted or expire)", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(edge): State<Edge>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if headers.contains_key(&UPLOAD_DEFER_LENGTH) {
        return Err(bad(
            "Upload-Defer-Length is not supported: give Upload-Length",
        ));
    }
    let total_bytes =
        number(&headers, &UPLOAD_LENGTH)?.ok_or_else(|| bad("Upload-Length is required"))?;
    let metadata = metadata(&headers)?;
    let req = CreateUploadRequest {
        metadata: Some(metadata),
        total_bytes,
    };
    let res = edge
        .media
        .clone()
        .create_upload(forward(&headers, req))
        .await;
    let upload = present(res.map_err(status_error)?.into_inner().upload)?;
    let mut res = answer(StatusCode::CREATED, &upload);
    if let Ok(v) = HeaderValue::from_str(&format!("/uploads/{}", upload.job_id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// Where an upload is: `Upload-Offset` of `Upload-Length` bytes stored.
#[utoipa::path(
    head,
    path = "/uploads/{id}",
    tag = "uploads",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The upload's id"),
        ("Tus-Resumable" = TusVersion, Header, description = "The protocol version"),
    ),
    responses(
        (status = 200, description = "`Upload-Offset`, `Upload-Length`, `Upload-Expires` (until complete)"),
        (status = 400, description = "No `Tus-Resumable`"),
        (status = 401, description = "No valid token"),
        (status = 404, description = "No such upload (expired, deleted, someone else's)"),
        (status = 412, description = "Another `Tus-Resumable` version than 1.0.0"),
    )
)]
pub(crate) async fn offset(
    State(edge): State<Edge>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = GetUploadRequest {
        job_id: upload_id(&id)?,
    };
    let res = edge.media.clone().get_upload(forward(&headers, req)).await;
    let upload = present(res.map_err(status_error)?.into_inner().upload)?;
    Ok(answer(StatusCode::OK, &upload))
}

/// Appends the body at `Upload-Offset`; what arrives is kept even if the
/// connection drops (unless `Upload-Checksum` is given: then all or nothing).
#[utoipa::path(
    patch,
    path = "/uploads/{id}",
    tag = "uploads",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The upload's id"),
        ("Tus-Resumable" = TusVersion, Header, description = "The protocol version"),
        ("Upload-Offset" = u64, Header, description = "Where the body goes: the offset `HEAD` gave"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha256 <base64 digest>` of the body"),
    ),
    request_body(content = String, content_type = "application/offset+octet-stream", description = "The next bytes of the file"),
    responses(
        (status = 204, description = "Stored: the new `Upload-Offset`; at `Upload-Length` the job is queued (`GET /jobs/{id}`)"),
        (status = 400, description = "No `Tus-Resumable`, no or a bad `Upload-Offset`, a bad checksum header, more bytes than `Upload-Length`", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such upload (expired, deleted, someone else's)", body = ErrorBody),
        (status = 409, description = "`Upload-Offset` is not the stored offset (ask with `HEAD`), or the upload is complete", body = ErrorBody),
        (status = 412, description = "Another `Tus-Resumable` version than 1.0.0", body = ErrorBody),
        (status = 415, description = "Not `application/offset+octet-stream`", body = ErrorBody),
        (status = 423, description = "Another `PATCH` to this upload is in progress", body = ErrorBody),
        (status = 460, description = "The body does not match `Upload-Checksum`: nothing kept", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn append(
    State(edge): State<Edge>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let job_id = upload_id(&id)?;
    let is_offset_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(OFFSET_STREAM))
        });
    if !is_offset_stream {
        return Err(tus_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            format!("Content-Type must be {OFFSET_STREAM}"),
        ));
    }
    let offset =
        number(&headers, &UPLOAD_OFFSET)?.ok_or_else(|| bad("Upload-Offset is required"))?;
    let sha256 = match headers.get(&UPLOAD_CHECKSUM) {
        None => Vec::new(),
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| bad("Upload-Checksum must be ASCII"))?;
            let (algorithm, digest) = v
                .split_once(' ')
                .ok_or_else(|| bad("Upload-Checksum must be `<algorithm> <base64 digest>`"))?;
            if algorithm != "sha256" {
                return Err(bad("Upload-Checksum: only sha256 is supported"));
            }
            base64::engine::general_purpose::STANDARD
                .decode(digest.trim())
                .ok()
                .filter(|d| d.len() == 32)
                .ok_or_else(|| bad("Upload-Checksum: not a base64 SHA-256 digest"))?
        }
    };
    let (tx, rx) = mpsc::channel::<AppendUploadRequest>(8);
    let req = forward(&headers, ReceiverStream::new(rx));
    let mut client = edge.media.clone();
    let call = tokio::spawn(async move { client.append_upload(req).await }.in_current_span());
    let send = |p| {
        let tx = tx.clone();
        async move {
            tx.send(AppendUploadRequest { payload: Some(p) })
                .await
                .is_ok()
        }
    };
    let start = AppendStart {
        job_id,
        offset,
        sha256: sha256.into(),
    };
    if send(append_upload_request::Payload::Start(start)).await {
        let mut stream = body.into_data_stream();
        // A body that breaks (a dropped connection, a stalled client) ends
        // the append where it broke: what arrived is kept.
        'body: while let Some(Ok(data)) = stream.next().await {
            for piece in data.chunks(MAX_CHUNK) {
                let piece = data.slice_ref(piece);
                if !send(append_upload_request::Payload::Chunk(piece)).await {
                    break 'body; // the call ended; its status says why
                }
            }
        }
    }
    drop(tx);
    let res = call
        .await
        .map_err(|_| ApiError::new(Code::Internal, "internal error"))?;
    let upload = present(res.map_err(status_error)?.into_inner().upload)?;
    Ok(answer(StatusCode::NO_CONTENT, &upload))
}

/// Abandons an unfinished upload and its bytes (tus termination).
#[utoipa::path(
    delete,
    path = "/uploads/{id}",
    tag = "uploads",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The upload's id"),
        ("Tus-Resumable" = TusVersion, Header, description = "The protocol version"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "No `Tus-Resumable`", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such upload", body = ErrorBody),
        (status = 409, description = "Complete: it is a job now (`DELETE /jobs/{id}`)", body = ErrorBody),
        (status = 412, description = "Another `Tus-Resumable` version than 1.0.0", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn terminate(
    State(edge): State<Edge>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let req = CancelUploadRequest {
        job_id: upload_id(&id)?,
    };
    edge.media
        .clone()
        .cancel_upload(forward(&headers, req))
        .await
        .map_err(status_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses every request but `OPTIONS` that does not speak tus 1.0.0 (a
/// layer over those routes).
pub(crate) async fn require_version(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match version_refused(req.headers()) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

/// An answer that says where the upload stands.
fn answer(status: StatusCode, upload: &ResumableUpload) -> Response {
    let mut res = status.into_response();
    progress(&mut res, upload);
    res
}

/// The upload a MediaService answer always carries.
fn present(upload: Option<ResumableUpload>) -> Result<ResumableUpload, ApiError> {
    upload.ok_or_else(|| ApiError::new(Code::Internal, "internal error"))
}
