//! Jobs over REST: list, get, delete, download the MP3, and watch them live
//! as Server-Sent Events.

use super::{ApiQuery, Edge, forward};
use crate::error::ApiError;
use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use mp3converter_proto::media::v1::{
    self as pb, DeleteJobRequest, DownloadRequest, GetJobRequest, ListJobsRequest,
    WatchJobsRequest, download_response, watch_jobs_response,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use svc_kit::error::ErrorBody;
use tonic::Code;
use utoipa::{IntoParams, ToSchema};

/// A job as the REST edge shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub(crate) struct JobJson {
    job_id: String,
    /// The uploaded video's id (its GridFS file).
    video_id: String,
    /// The uploaded file's name, cleaned.
    filename: String,
    size_bytes: u64,
    state: JobState,
    /// Percent converted, while converting (one decimal).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100)]
    progress: Option<f64>,
    /// The MP3's id (`GET /download?fid=`), once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    mp3_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mp3_size_bytes: Option<u64>,
    /// The MP3's length, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_seconds: Option<f64>,
    /// Why it failed, in words for the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    /// What the user should know about a done job.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    options: OptionsJson,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// When the job, its video and MP3 are deleted (retention).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum JobState {
    Queued,
    Converting,
    Done,
    Failed,
    /// A state this edge does not know (a newer server).
    Unknown,
}

/// The output options a job was asked for.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobOptions)]
pub(crate) struct OptionsJson {
    /// Constant bitrate (kb/s), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    bitrate_kbps: Option<u32>,
    /// LAME VBR quality (0 best – 9), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<u32>,
    channels: ChannelsJson,
    sample_rate: SampleRateJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    trim_start: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trim_end: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Channels)]
pub(crate) enum ChannelsJson {
    Source,
    Mono,
    Stereo,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(as = SampleRate)]
pub(crate) enum SampleRateJson {
    #[serde(rename = "source")]
    Source,
    #[serde(rename = "44100")]
    Hz44100,
    #[serde(rename = "48000")]
    Hz48000,
}

fn rfc3339(t: Option<prost_types::Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

fn options_json(o: Option<pb::OutputOptions>) -> OptionsJson {
    let o = o.unwrap_or_default();
    let (bitrate_kbps, quality) = match o.encoding {
        Some(pb::output_options::Encoding::BitrateKbps(b)) => (Some(b), None),
        Some(pb::output_options::Encoding::Quality(q)) => (None, Some(q)),
        None => (None, None),
    };
    OptionsJson {
        bitrate_kbps,
        quality,
        channels: match pb::Channels::try_from(o.channels) {
            Ok(pb::Channels::Mono) => ChannelsJson::Mono,
            Ok(pb::Channels::Stereo) => ChannelsJson::Stereo,
            _ => ChannelsJson::Source,
        },
        sample_rate: match pb::SampleRate::try_from(o.sample_rate) {
            Ok(pb::SampleRate::SampleRate44100) => SampleRateJson::Hz44100,
            Ok(pb::SampleRate::SampleRate48000) => SampleRateJson::Hz48000,
            _ => SampleRateJson::Source,
        },
        trim_start: o.trim_start_seconds,
        trim_end: o.trim_end_seconds,
    }
}

impl From<pb::Job> for JobJson {
    fn from(j: pb::Job) -> Self {
        let state = match pb::JobState::try_from(j.state) {
            Ok(pb::JobState::Queued) => JobState::Queued,
            Ok(pb::JobState::Converting) => JobState::Converting,
            Ok(pb::JobState::Done) => JobState::Done,
            Ok(pb::JobState::Failed) => JobState::Failed,
            _ => JobState::Unknown,
        };
        let done = state == JobState::Done;
        Self {
            job_id: j.job_id,
            video_id: j.video_id,
            filename: j.filename,
            size_bytes: j.size_bytes,
            state,
            progress: j.progress_percent.map(|p| (p * 10.0).round() / 10.0),
            mp3_id: (!j.mp3_id.is_empty()).then_some(j.mp3_id),
            mp3_size_bytes: done.then_some(j.mp3_size_bytes),
            duration_seconds: done.then_some(j.duration_seconds),
            failure_reason: (!j.failure_reason.is_empty()).then_some(j.failure_reason),
            notes: j.notes,
            options: options_json(j.options),
            created_at: rfc3339(j.create_time),
            updated_at: rfc3339(j.update_time),
            expires_at: j.expire_time.map(|t| t.to_string()),
        }
    }
}

/// One of the caller's jobs.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id", pattern = r"^[0-9a-fA-F]{24}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The job", body = JobJson),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such job (or someone else's)", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get(
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

/// Deletes one of the caller's jobs, its video and its MP3.
#[utoipa::path(
    delete,
    path = "/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id", pattern = r"^[0-9a-fA-F]{24}$")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a valid id", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such job (or someone else's)", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(edge): State<Edge>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edge.media
        .clone()
        .delete_job(forward(&headers, DeleteJobRequest { job_id: id }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Jobs per page (0 or absent: 20; over 100: 100).
    #[param(value_type = u64, required = false, minimum = 0, maximum = 4294967295_u64, nullable = false)]
    page_size: Option<u32>,
    /// The `next_page_token` of the previous page (empty: the first page).
    #[param(pattern = r"^([0-9a-fA-F]{24})?$", nullable = false)]
    page_token: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobList {
    jobs: Vec<JobJson>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "String::is_empty")]
    #[schema(required = false)]
    next_page_token: String,
}

/// The caller's jobs, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "jobs",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 400, description = "A bad query or page token", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(edge): State<Edge>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only this job's events (absent or empty: all of the caller's jobs).
    #[param(pattern = r"^([0-9a-fA-F]{24})?$", nullable = false)]
    job_id: Option<String>,
}

/// The caller's jobs as they change, as Server-Sent Events: `job` (the job
/// as JSON, first for each current job, then at every change), `deleted`
/// (`{"job_id"}`), `resync` (missed changes: list again), and a keep-alive
/// comment every 15 s. Open until the client leaves or its token stops
/// being valid.
#[utoipa::path(
    get,
    path = "/jobs/events",
    tag = "jobs",
    params(EventsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event stream; each event's data is a JSON object: `job` a Job, `deleted` `{\"job_id\"}`, `resync` `{}`", content_type = "text/event-stream", body = Object),
        (status = 400, description = "Not a valid job id", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 429, description = "Too many watchers for this user", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn events(
    State(edge): State<Edge>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let job_id = q.job_id.unwrap_or_default();
    let stream = edge
        .media
        .clone()
        .watch_jobs(forward(&headers, WatchJobsRequest { job_id }))
        .await?
        .into_inner();
    let events = stream
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| async move {
            use watch_jobs_response::Event as E;
            let ev = match m.ok()?.event? {
                E::Job(job) => Event::default()
                    .event("job")
                    .json_data(JobJson::from(job))
                    .ok()?,
                E::DeletedJobId(id) => Event::default()
                    .event("deleted")
                    .json_data(serde_json::json!({ "job_id": id }))
                    .ok()?,
                E::Resync(_) => Event::default().event("resync").data("{}"),
            };
            Some(Ok(ev))
        });
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}

/// `Content-Disposition` for a file name of any script (RFC 6266): an ASCII
/// fallback in `filename=`, the real name UTF-8 percent-encoded in
/// `filename*=`. Nothing the user chose can end the header or add another.
pub(crate) fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .-_()+,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DownloadQuery {
    /// The MP3's id (`mp3_id` of a done job; the email names it).
    #[param(required = true, nullable = false, pattern = r"^[0-9a-fA-F]{24}$")]
    fid: Option<String>,
}

/// Downloads one of the caller's MP3s.
#[utoipa::path(
    get,
    path = "/download",
    tag = "jobs",
    params(DownloadQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The MP3", content_type = "audio/mpeg", body = super::openapi::Binary,
         headers(("content-disposition" = String, description = "attachment; its file name"))),
        (status = 400, description = "Missing or bad id", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such MP3 (or someone else's)", body = ErrorBody),
        (status = 503, description = "A service behind the edge is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn download(
    State(edge): State<Edge>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<DownloadQuery>,
) -> Result<Response, ApiError> {
    let Some(fid) = q.fid.filter(|f| !f.is_empty()) else {
        return Err(ApiError::bad_request(
            "query parameter `fid` (the MP3's id) is required",
        ));
    };
    let mut stream = edge
        .media
        .clone()
        .download(forward(&headers, DownloadRequest { mp3_id: fid }))
        .await?
        .into_inner();
    let meta = match stream.message().await? {
        Some(pb::DownloadResponse {
            payload: Some(download_response::Payload::Metadata(m)),
        }) => m,
        _ => return Err(ApiError::new(Code::Internal, "internal error")),
    };
    let body = Body::from_stream(chunks_to_trailers(stream, meta.size_bytes));
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size_bytes));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&meta.filename)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(res.into_response())
}

/// The download's chunks, each handed on only once we know it is not followed
/// by an error: hyper drops a `Content-Length` body as soon as it has that
/// many bytes, so without reading ahead to the trailers the gRPC call would be
/// cancelled after its last byte (and counted so), and a failure the server
/// reports at the very end would reach the client as a complete file.
fn chunks_to_trailers(
    stream: tonic::Streaming<pb::DownloadResponse>,
    size: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::try_unfold((stream, 0u64), move |(mut stream, sent)| async move {
        let chunk = match stream.message().await.map_err(status_to_io)? {
            None => return Ok(None),
            Some(pb::DownloadResponse {
                payload: Some(download_response::Payload::Chunk(b)),
            }) => b,
            Some(_) => {
                return Err(std::io::Error::other(
                    "unexpected message in the download stream",
                ));
            }
        };
        let sent = sent + chunk.len() as u64;
        if sent >= size {
            // The last chunk: the stream must end here, and end OK.
            if stream.message().await.map_err(status_to_io)?.is_some() {
                return Err(std::io::Error::other(
                    "the download is longer than announced",
                ));
            }
        }
        Ok(Some((chunk, (stream, sent))))
    })
}

fn status_to_io(s: tonic::Status) -> std::io::Error {
    std::io::Error::other(s.message().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_of_any_script_fit_in_the_header() {
        assert_eq!(
            content_disposition("holiday.mp3"),
            "attachment; filename=\"holiday.mp3\"; filename*=UTF-8''holiday.mp3"
        );
        let d = content_disposition("Été à Paris \"x\";\r\nSet-Cookie: a=b.mp3");
        assert!(
            d.starts_with("attachment; filename=\"_t_ _ Paris _x____Set-Cookie_ a_b.mp3\";"),
            "{d}"
        );
        assert!(
            d.contains("filename*=UTF-8''%C3%89t%C3%A9%20%C3%A0%20Paris"),
            "{d}"
        );
        assert!(HeaderValue::from_str(&d).is_ok(), "a valid header value");
        assert!(!d.contains('\r') && !d.contains('\n'));
    }
}
