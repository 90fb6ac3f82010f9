//! tus's headers: reading what a client sends (versions, numbers,
//! `Upload-Metadata`, ids) and writing what it expects back (offsets,
//! expiry, CORS), and MediaService statuses as tus's answers.

use super::super::upload::set_option;
use crate::{error::ApiError, media::CHECKSUM_MISMATCH};
use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use media_store::options::RawOptions;
use mp3converter_proto::media::v1::{ResumableUpload, UploadMetadata};
use tonic::Code;

pub(super) const VERSION: &str = "1.0.0";
pub(super) const EXTENSIONS: &str = "creation,termination,expiration,checksum";
pub(super) const OFFSET_STREAM: &str = "application/offset+octet-stream";

pub(super) const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
pub(super) const TUS_VERSION: HeaderName = HeaderName::from_static("tus-version");
pub(super) const TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
pub(super) const TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
pub(super) const TUS_CHECKSUM_ALGORITHM: HeaderName =
    HeaderName::from_static("tus-checksum-algorithm");
pub(super) const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
pub(super) const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
pub(super) const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
pub(super) const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
pub(super) const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
pub(super) const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");

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
pub(super) fn tus_error(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message).with_status(status)
}

pub(super) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// Headers every tus answer carries, added by a layer over the routes (so
/// the auth layer's 401 has them too).
pub(crate) async fn common_headers(req_headers: HeaderMap, mut res: Response) -> Response {
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
pub(super) fn version_refused(headers: &HeaderMap) -> Option<Response> {
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

pub(super) fn number(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
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

pub(super) fn http_date(t: &prost_types::Timestamp) -> Option<HeaderValue> {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(t.seconds).ok()?);
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok()
}

/// Where an upload is, as headers.
pub(super) fn progress(res: &mut Response, upload: &ResumableUpload) {
    let h = res.headers_mut();
    h.insert(UPLOAD_OFFSET, HeaderValue::from(upload.offset));
    h.insert(UPLOAD_LENGTH, HeaderValue::from(upload.total_bytes));
    if let Some(v) = upload.expire_time.as_ref().and_then(http_date) {
        h.insert(UPLOAD_EXPIRES, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The id in the path: 24 hex digits.
pub(super) fn upload_id(raw: &str) -> Result<String, ApiError> {
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
pub(super) fn metadata(headers: &HeaderMap) -> Result<UploadMetadata, ApiError> {
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
pub(super) fn status_error(s: tonic::Status) -> ApiError {
    let status = match s.code() {
        // Another offset than the stored one: ask again (HEAD).
        Code::FailedPrecondition => StatusCode::CONFLICT,
        // Another PATCH at work on it.
        Code::Aborted if s.message().starts_with("another append") => StatusCode::LOCKED,
        // The checksum extension's own status.
        Code::InvalidArgument if s.message() == CHECKSUM_MISMATCH => {
            StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
        }
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
