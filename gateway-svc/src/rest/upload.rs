//! `POST /upload`: a multipart body of option fields, then exactly one file,
//! streamed into MediaService.Upload.
//!
//! The options (`bitrate` or `quality`, `channels`, `sample_rate`,
//! `trim_start`, `trim_end`) must come before the file, so they are checked
//! before a byte of it is stored; curl sends parts in the order of its `-F`
//! flags. The commit is sent only once the whole body has been read and
//! holds exactly one file; any failure before that (a second file, a field
//! after the file, a broken connection, a body over the limit) drops the
//! stream without a commit, and the gRPC side discards the partial upload.

use super::{Edge, form, forward, jobs::JobJson};
use crate::{error::ApiError, media::MAX_CHUNK};
use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use media_store::options::{Channels, InvalidOption, RawOptions, SampleRate};
use mp3converter_proto::media::v1::{UploadCommit, UploadMetadata, UploadRequest, upload_request};
use svc_kit::error::ErrorBody;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::Instrument;

const ONE_FILE: &str = "exactly 1 file required";

/// The part that carries the file when it has no file name (`curl -F file=@x`
/// always sends one).
const FILE_FIELD: &str = "file";

/// Longest value of an option field; anything longer is not an option.
const MAX_FIELD: usize = 64;

fn invalid(e: InvalidOption) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// Reads one option field into `raw`. An unknown field is refused: a typo
/// (`-F bitrat=128`) must not silently give another MP3 than asked for.
pub(super) fn set_option(raw: &mut RawOptions, name: &str, value: &str) -> Result<(), ApiError> {
    let number = |field: &'static str| {
        value.parse::<f64>().map_err(|_| {
            invalid(InvalidOption {
                field,
                why: format!("must be a number, got {value:?}"),
            })
        })
    };
    let whole = |field: &'static str| {
        value.parse::<u32>().map_err(|_| {
            invalid(InvalidOption {
                field,
                why: format!("must be a whole number, got {value:?}"),
            })
        })
    };
    match name {
        "bitrate" | "bitrate_kbps" => raw.bitrate_kbps = Some(whole("bitrate")?),
        "quality" => raw.quality = Some(whole("quality")?),
        "channels" => raw.channels = Channels::parse("channels", value).map_err(invalid)?,
        "sample_rate" => {
            raw.sample_rate = SampleRate::parse("sample_rate", value).map_err(invalid)?
        }
        "trim_start" => raw.trim_start = Some(number("trim_start")?),
        "trim_end" => raw.trim_end = Some(number("trim_end")?),
        _ => {
            let shown: String = name.chars().take(64).collect();
            return Err(ApiError::bad_request(format!(
                "unknown form field `{shown}`: the options are bitrate, quality, channels, sample_rate, trim_start and trim_end, then the file"
            )));
        }
    }
    Ok(())
}

/// The upload form: option fields first (they are checked before a byte of
/// the file is stored), then exactly one file. Unknown fields are refused.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // The handler streams the multipart body; this describes it.
pub(crate) struct UploadForm {
    /// Constant bitrate in kb/s (64–320); or give `quality`, not both.
    #[schema(minimum = 64, maximum = 320, required = false)]
    bitrate: u32,
    /// LAME VBR quality, 0 (best) – 9; or give `bitrate`, not both.
    #[schema(minimum = 0, maximum = 9, required = false)]
    quality: u32,
    #[schema(required = false)]
    channels: super::jobs::ChannelsJson,
    #[schema(required = false)]
    sample_rate: super::jobs::SampleRateJson,
    /// Seconds into the video where the MP3 starts.
    #[schema(minimum = 0, maximum = 86400, required = false)]
    trim_start: f64,
    /// Seconds into the video where the MP3 ends (at least 1 s after the
    /// start).
    #[schema(minimum = 1, maximum = 86400, required = false)]
    trim_end: f64,
    /// The video (any container ffmpeg reads), up to `max_upload_bytes`
    /// (`GET /limits`); the part with a file name, or the part named `file`.
    #[schema(value_type = String, content_media_type = "application/octet-stream", min_length = 1)]
    file: Vec<u8>,
}

/// Uploads a video to convert: the job is answered once the whole file is
/// stored; the MP3 follows (`GET /jobs/{id}`, `GET /jobs/events`, an email).
#[utoipa::path(
    post,
    path = "/upload",
    tag = "jobs",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stored; the job", body = super::jobs::JobJson),
        (status = 400, description = "Not one file, a bad option, not multipart, an empty file, a field after the file, a preamble over 4 KiB, a file name over 1 KiB", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 408, description = "The body sent nothing for too long; discarded", body = ErrorBody),
        (status = 409, description = "The upload was abandoned; retry", body = ErrorBody),
        (status = 413, description = "Over the size limit (`max_upload_bytes`)", body = ErrorBody),
        (status = 429, description = "Over a per-user quota", body = ErrorBody),
        (status = 431, description = "A part's headers over 8 KiB", body = ErrorBody),
        (status = 503, description = "Queue or storage down, or shutting down", body = ErrorBody),
    )
)]
pub(crate) async fn upload(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<JobJson>, ApiError> {
    let mut multipart = form::open(&headers, body, edge.limits.form_bounds())?;
    let (tx, rx) = mpsc::channel::<UploadRequest>(8);
    let req = forward(&headers, ReceiverStream::new(rx));
    let client = edge.media.clone();
    // Started at the first file part, after the options are known.
    let mut call = None;

    let pumped: Result<(), ApiError> = async {
        let send = |p| {
            let tx = tx.clone();
            async move {
                tx.send(UploadRequest { payload: Some(p) })
                    .await
                    .map_err(|_| ()) // the call ended early; its status says why
            }
        };
        let mut options = RawOptions::default();
        let mut files = 0;
        let mut total: u64 = 0;
        let mut req = Some(req);
        while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or_default().to_owned();
            // The file is the part with a file name, or the one named `file`.
            let file_name = match field.file_name() {
                Some(f) => f.to_owned(),
                None if name == FILE_FIELD => String::new(),
                None => {
                    // An option field: before the file, and short.
                    if files > 0 {
                        return Err(ApiError::bad_request(format!(
                            "form field `{name}` must come before the file"
                        )));
                    }
                    let mut value = Vec::new();
                    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                        value.extend_from_slice(&chunk);
                        if value.len() > MAX_FIELD {
                            return Err(ApiError::bad_request(format!(
                                "form field `{name}` is too long (at most {MAX_FIELD} bytes)"
                            )));
                        }
                    }
                    set_option(&mut options, &name, &String::from_utf8_lossy(&value))?;
                    continue;
                }
            };
            files += 1;
            if files > 1 {
                return Err(ApiError::bad_request(ONE_FILE));
            }
            let content_type = field
                .content_type()
                .map(ToString::to_string)
                .unwrap_or_default();
            crate::names::check_names(&file_name, &content_type)?;
            let options = options.clone().validate().map_err(invalid)?;
            if let Some(req) = req.take() {
                let mut client = client.clone();
                call = Some(tokio::spawn(
                    async move { client.upload(req).await }.in_current_span(),
                ));
            }
            let meta = UploadMetadata {
                filename: file_name,
                content_type,
                declared_size_bytes: None,
                options: Some(media_store::proto::options(&options)),
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

    // The edge's own verdict (bad multipart, bad option) wins; the call, if
    // it started, then only reports the discarded upload.
    let Some(call) = call else {
        pumped?;
        return Err(ApiError::bad_request(ONE_FILE));
    };
    let result = call
        .await
        .map_err(|_| ApiError::new(Code::Internal, "internal error"))?;
    pumped?;
    match result {
        Ok(res) => {
            Ok(Json(res.into_inner().job.map(JobJson::from).ok_or_else(
                || ApiError::new(Code::Internal, "internal error"),
            )?))
        }
        // Over the size limit: 413; over a quota: 429 (both are
        // RESOURCE_EXHAUSTED in gRPC).
        Err(s) if s.code() == Code::ResourceExhausted && s.message().contains("larger than") => {
            Err(ApiError::from(s).with_status(StatusCode::PAYLOAD_TOO_LARGE))
        }
        Err(s) => Err(s.into()),
    }
}

fn multipart_error(e: multer::Error) -> ApiError {
    // A client that stopped sending (slowloris, a stalled upload).
    if svc_kit::limits::BodyIdle::in_chain(&e) {
        return ApiError::new(
            Code::DeadlineExceeded,
            "the upload sent nothing for too long; discarded",
        )
        .with_status(StatusCode::REQUEST_TIMEOUT);
    }
    if let Some(bound) = form::FormError::in_chain(&e) {
        return form::error(bound);
    }
    ApiError::bad_request(format!("bad upload body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_fields_are_read_and_checked() {
        let mut raw = RawOptions::default();
        set_option(&mut raw, "bitrate", "128").unwrap();
        set_option(&mut raw, "channels", "mono").unwrap();
        set_option(&mut raw, "sample_rate", "48000").unwrap();
        set_option(&mut raw, "trim_start", "1.5").unwrap();
        assert_eq!(raw.bitrate_kbps, Some(128));
        // Exactly as described: no spaces around a value, no unknown field
        // (a typo must not go unnoticed).
        assert!(set_option(&mut raw, "bitrate", " 128 ").is_err());
        let e = set_option(&mut raw, "bitrat", "128").unwrap_err();
        assert!(
            e.body.message.starts_with("unknown form field `bitrat`"),
            "{e:?}"
        );
        assert_eq!(raw.channels, Channels::Mono);
        assert_eq!(raw.trim_start, Some(1.5));
        let e = set_option(&mut raw, "quality", "high").unwrap_err();
        assert!(e.body.message.contains("quality"), "{e:?}");
        let e = set_option(&mut raw, "channels", "quad").unwrap_err();
        assert!(e.body.message.starts_with("channels:"), "{e:?}");
    }
}
