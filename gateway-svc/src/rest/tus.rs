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

use super::{Edge, forward, upload::set_option};
use crate::{error::ApiError, media::MAX_CHUNK};
use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use futures::StreamExt;
use media_store::options::RawOptions;
use mp3converter_proto::media::v1::{
    AppendStart, AppendUploadRequest, CancelUploadRequest, CreateUploadRequest, GetUploadRequest,
    ResumableUpload, UploadMetadata, append_upload_request,
};
use svc_kit::error::ErrorBody;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::Instrument;

const VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,termination,expiration,checksum";
const OFFSET_STREAM: &str = "application/offset+octet-stream";

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const TUS_VERSION: HeaderName = HeaderName::from_static("tus-version");
const TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
const TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
const TUS_CHECKSUM_ALGORITHM: HeaderName = HeaderName::from_static("tus-checksum-algorithm");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");

/// The tus version every request but `OPTIONS` names (`Tus-Resumable`).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Describes the header; the handlers read it raw.
pub(crate) enum TusVersion {
    #[schema(rename = "1.0.0")]
    V1_0_0,
}

/// Longest `Upload-Metadata` read (names and options are short).
const MAX_METADATA: usize = 4 << 10;

/// A tus answer: an error as JSON (as everywhere on the edge) with the
/// status tus gives it.
fn tus_error(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message).with_status(status)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// Headers every tus answer carries, added by a layer over the routes (so
/// the auth layer's 401 has them too).
pub(crate) async fn headers(req_headers: HeaderMap, mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(TUS_RESUMABLE, HeaderValue::from_static(VERSION));
    if req_headers.contains_key(header::ORIGIN) {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, \
                 Tus-Checksum-Algorithm, Upload-Offset, Upload-Length, Upload-Expires, \
                 Upload-Metadata",
            ),
        );
    }
    res
}

/// The refusal of a client that does not speak our tus version (every
/// request but `OPTIONS` says which it speaks).
fn version_refused(headers: &HeaderMap) -> Option<Response> {
    let mut res = match headers.get(&TUS_RESUMABLE) {
        Some(v) if v == VERSION => return None,
        None => bad("the Tus-Resumable header is required (1.0.0)").into_response(),
        // tus's own answer to a version it does not serve.
        Some(_) => tus_error(
            StatusCode::PRECONDITION_FAILED,
            Code::FailedPrecondition,
            "Tus-Resumable: only 1.0.0 is served",
        )
        .into_response(),
    };
    res.headers_mut()
        .insert(TUS_VERSION, HeaderValue::from_static(VERSION));
    Some(res)
}

fn number(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                // Stored as PostgreSQL bigint.
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| {
                    bad(format!(
                        "{name} must be a whole number from 0 to {}",
                        i64::MAX
                    ))
                })
        })
        .transpose()
}

fn http_date(t: &prost_types::Timestamp) -> Option<HeaderValue> {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(t.seconds).ok()?);
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok()
}

/// Where an upload is, as headers.
fn progress(res: &mut Response, upload: &ResumableUpload) {
    let h = res.headers_mut();
    h.insert(UPLOAD_OFFSET, HeaderValue::from(upload.offset));
    h.insert(UPLOAD_LENGTH, HeaderValue::from(upload.total_bytes));
    if let Some(v) = upload.expire_time.as_ref().and_then(http_date) {
        h.insert(UPLOAD_EXPIRES, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The id in the path: 24 hex digits.
fn upload_id(raw: &str) -> Result<String, ApiError> {
    if raw.len() == 24 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(tus_error(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "no such upload",
        ))
    }
}

/// `Upload-Metadata`: `key base64(value)` pairs, comma-separated.
fn metadata(headers: &HeaderMap) -> Result<UploadMetadata, ApiError> {
    let Some(raw) = headers.get(&UPLOAD_METADATA) else {
        return Ok(UploadMetadata::default());
    };
    if raw.len() > MAX_METADATA {
        return Err(bad(format!("Upload-Metadata is over {MAX_METADATA} bytes")));
    }
    let raw = raw
        .to_str()
        .map_err(|_| bad("Upload-Metadata must be ASCII"))?;
    let mut meta = UploadMetadata::default();
    let mut options = RawOptions::default();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once(' ') {
            Some((k, v)) => (k, v.trim()),
            None => (pair, ""),
        };
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| {
                let shown: String = key.chars().take(64).collect();
                bad(format!(
                    "Upload-Metadata `{shown}`: the value must be base64 of UTF-8 text"
                ))
            })?;
        match key {
            "filename" | "name" => meta.filename = value,
            "filetype" | "type" | "content_type" => meta.content_type = value,
            // What tus clients send of their own accord.
            "relativePath" | "fingerprint" | "lastModified" => {}
            _ => set_option(&mut options, key, &value)?,
        }
    }
    let options = options.validate().map_err(|e| bad(e.to_string()))?;
    meta.options = Some(media_store::proto::options(&options));
    Ok(meta)
}

/// Maps a MediaService status onto tus's answers.
fn status_error(s: tonic::Status) -> ApiError {
    let status = match s.code() {
        // Another offset than the stored one: ask again (HEAD).
        Code::FailedPrecondition => StatusCode::CONFLICT,
        // Another PATCH at work on it.
        Code::Aborted if s.message().starts_with("another append") => StatusCode::LOCKED,
        // The checksum extension's own status.
        Code::DataLoss => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
        Code::ResourceExhausted if s.message().contains("larger than") => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => return s.into(),
    };
    let message = s.message().to_owned();
    let mut e = ApiError::from(s).with_status(status);
    e.body.message = message;
    e
}

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
pub(crate) async fn create(State(edge): State<Edge>, headers: HeaderMap) -> Response {
    if let Some(refused) = version_refused(&headers) {
        return refused;
    }
    let result = async {
        if headers.contains_key(&UPLOAD_DEFER_LENGTH) {
            return Err(bad(
                "Upload-Defer-Length is not supported: give Upload-Length",
            ));
        }
        let total_bytes =
            number(&headers, &UPLOAD_LENGTH)?.ok_or_else(|| bad("Upload-Length is required"))?;
        let metadata = metadata(&headers)?;
        let upload = edge
            .media
            .clone()
            .create_upload(forward(
                &headers,
                CreateUploadRequest {
                    metadata: Some(metadata),
                    total_bytes,
                },
            ))
            .await
            .map_err(status_error)?
            .into_inner()
            .upload
            .ok_or_else(|| ApiError::new(Code::Internal, "internal error"))?;
        Ok(upload)
    }
    .await;
    match result {
        Ok(upload) => {
            let mut res = StatusCode::CREATED.into_response();
            progress(&mut res, &upload);
            if let Ok(v) = HeaderValue::from_str(&format!("/uploads/{}", upload.job_id)) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            res
        }
        Err(e) => e.into_response(),
    }
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
) -> Response {
    if let Some(refused) = version_refused(&headers) {
        return refused;
    }
    let result = async {
        let job_id = upload_id(&id)?;
        edge.media
            .clone()
            .get_upload(forward(&headers, GetUploadRequest { job_id }))
            .await
            .map_err(status_error)?
            .into_inner()
            .upload
            .ok_or_else(|| ApiError::new(Code::Internal, "internal error"))
    }
    .await;
    match result {
        Ok(upload) => {
            let mut res = StatusCode::OK.into_response();
            progress(&mut res, &upload);
            res
        }
        Err(e) => e.into_response(),
    }
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
) -> Response {
    if let Some(refused) = version_refused(&headers) {
        return refused;
    }
    match append_body(edge, &id, &headers, body).await {
        Ok(upload) => {
            let mut res = StatusCode::NO_CONTENT.into_response();
            progress(&mut res, &upload);
            res
        }
        Err(e) => e.into_response(),
    }
}

async fn append_body(
    edge: Edge,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<ResumableUpload, ApiError> {
    let job_id = upload_id(id)?;
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
        number(headers, &UPLOAD_OFFSET)?.ok_or_else(|| bad("Upload-Offset is required"))?;
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
    let req = forward(headers, ReceiverStream::new(rx));
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
    call.await
        .map_err(|_| ApiError::new(Code::Internal, "internal error"))?
        .map_err(status_error)?
        .into_inner()
        .upload
        .ok_or_else(|| ApiError::new(Code::Internal, "internal error"))
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
) -> Response {
    if let Some(refused) = version_refused(&headers) {
        return refused;
    }
    let result = async {
        let job_id = upload_id(&id)?;
        edge.media
            .clone()
            .cancel_upload(forward(&headers, CancelUploadRequest { job_id }))
            .await
            .map_err(status_error)
    }
    .await;
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_metadata(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(UPLOAD_METADATA, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn metadata_carries_the_name_type_and_options() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let h = with_metadata(&format!(
            "filename {},filetype {}, bitrate {},channels {},relativePath",
            b64("clip <1>.mp4"),
            b64("video/mp4"),
            b64("128"),
            b64("mono")
        ));
        let m = metadata(&h).unwrap();
        assert_eq!(m.filename, "clip <1>.mp4");
        assert_eq!(m.content_type, "video/mp4");
        let o = m.options.unwrap();
        assert!(o.encoding.is_some());
        assert_eq!(o.channels, 1);
        // A typo must not silently change the MP3.
        let e = metadata(&with_metadata(&format!("bitrat {}", b64("128")))).unwrap_err();
        assert!(e.body.message.contains("bitrat"), "{e:?}");
        let e = metadata(&with_metadata("filename !!!")).unwrap_err();
        assert!(e.body.message.contains("base64"), "{e:?}");
        let e = metadata(&with_metadata(&format!("bitrate {}", b64("5000")))).unwrap_err();
        assert!(e.body.message.contains("bitrate"), "{e:?}");
    }

    #[test]
    fn numbers_are_plain_digits() {
        let mut h = HeaderMap::new();
        for (v, ok) in [
            ("0", Some(0)),
            ("123", Some(123)),
            ("-1", None),
            ("1e3", None),
            ("9223372036854775808", None),
            ("", None),
            (" 1", None),
        ] {
            h.insert(UPLOAD_OFFSET, HeaderValue::from_str(v).unwrap());
            assert_eq!(number(&h, &UPLOAD_OFFSET).ok().flatten(), ok, "{v:?}");
        }
    }

    #[test]
    fn ids_are_24_hex_digits() {
        assert!(upload_id("0123456789abcdef01234567").is_ok());
        assert_eq!(
            upload_id("0123456789ABCDEF01234567").unwrap(),
            "0123456789abcdef01234567"
        );
        for bad in ["", "x", "0123456789abcdef0123456g", "../../etc/passwd"] {
            assert_eq!(upload_id(bad).unwrap_err().status, StatusCode::NOT_FOUND);
        }
    }
}
