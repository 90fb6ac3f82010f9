//! Errors of the gateway: store and broker failures become gRPC statuses
//! here, and statuses become REST answers (JSON, via the one code→HTTP table
//! in `svc_kit::error`) in [`ApiError`].

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use svc_kit::error::{ErrorBody, code_name, http_status};
use tonic::{Code, Status};

/// A MongoDB failure: unavailable (retry) or internal; details are logged,
/// not sent.
pub(crate) fn store_error(context: &str, err: &media_store::mongodb::error::Error) -> Status {
    if media_store::is_unavailable(err) {
        tracing::warn!(error = %err, context, "MongoDB unavailable");
        Status::unavailable("storage is unavailable; retry later")
    } else {
        tracing::error!(error = %err, context, "MongoDB error");
        Status::internal("internal error")
    }
}

/// A job-database failure: unavailable (retry) or internal; details are
/// logged, not sent.
pub(crate) fn jobs_error(context: &str, err: &media_store::jobs::Error) -> Status {
    if err.is_unavailable() {
        tracing::warn!(error = %err, context, "the job database is unavailable");
        Status::unavailable("storage is unavailable; retry later")
    } else {
        tracing::error!(error = %err, context, "job database error");
        Status::internal("internal error")
    }
}

pub(crate) fn io_store_error(context: &str, err: &std::io::Error) -> Status {
    tracing::warn!(error = %err, context, "GridFS stream failed");
    Status::unavailable("storage is unavailable; retry later")
}

/// A REST error answer: `{"code", "message", "reason"?}` with the HTTP status
/// of its gRPC code.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: http::StatusCode,
    pub(crate) body: ErrorBody,
    /// Seconds, for `Retry-After` (rate limits, a busy service).
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: http_status(code),
            body: ErrorBody {
                code: code_name(code).to_owned(),
                message: message.into(),
                reason: None,
            },
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub(crate) fn with_status(mut self, status: http::StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        // Our own gRPC API only sends safe messages, but a transport failure
        // between the edge and it could carry internals: keep those generic.
        let (code, message) = match s.code() {
            Code::Unknown | Code::Internal | Code::DataLoss => {
                (s.code(), "internal error".to_owned())
            }
            // tonic reports its own client deadline (a dependency too slow)
            // as CANCELLED; the edge's client did not cancel anything.
            Code::Cancelled if s.message() == "Timeout expired" => (
                Code::DeadlineExceeded,
                "a service behind the edge did not answer in time; retry".to_owned(),
            ),
            // A connection refused or reset under us: say so, not how.
            Code::Unavailable if std::error::Error::source(&s).is_some() => (
                Code::Unavailable,
                "a service behind the edge is unavailable; retry shortly".to_owned(),
            ),
            _ => (s.code(), s.message().to_owned()),
        };
        let mut e = Self::new(code, message);
        e.body.reason = svc_kit::error::status_reason(&s);
        e.retry_after = svc_kit::error::retry_after(&s).map(|d| d.as_secs().max(1));
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        res
    }
}
