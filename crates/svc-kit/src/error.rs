//! The one mapping between gRPC status codes and HTTP statuses (after
//! google/rpc/code.proto, as grpc-gateway v2 does), and the JSON error body the
//! REST edge answers with.

use http::StatusCode;
use serde::Serialize;
use tonic::Code;

/// The HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // 499 "Client Closed Request" has no constant in `http`.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        // An upload over the size limit is RESOURCE_EXHAUSTED on the gRPC side;
        // at the edge that is "413 Payload Too Large" (see the REST handlers),
        // and a rate limit would be 429.
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A stable, lower-case name for a code, used as `code` in JSON error bodies.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The body of every error answer of the REST edge:
/// `{"code": "not_found", "message": "…", "reason": "TOKEN_EXPIRED"}`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// The gRPC status code in snake case (`invalid_argument`, `not_found`,
    /// `resource_exhausted`, …); the HTTP status follows it.
    #[schema(example = "not_found")]
    pub code: String,
    /// What went wrong, for people; safe to show.
    #[schema(example = "no such job")]
    pub message: String,
    /// A stable reason to branch on, when there is one (`TOKEN_EXPIRED`,
    /// `USER_DISABLED`, `LOGIN_RATE_LIMITED`, `BUSY`, …).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// Builds a `Status` carrying a `google.rpc.ErrorInfo` detail, so callers can
/// branch on `reason` without parsing the message.
pub fn status_with_reason(
    code: Code,
    message: impl Into<String>,
    domain: &str,
    reason: &str,
) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = ErrorDetails::with_error_info(
        reason,
        domain,
        std::collections::HashMap::<String, String>::new(),
    );
    tonic::Status::with_error_details(code, message, details)
}

/// The `ErrorInfo.reason` of a status, if it carries one.
pub fn status_reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
}

/// The `google.rpc.RetryInfo` delay of a status, if it carries one (rate
/// limits, a busy service): what `Retry-After` says over HTTP.
pub fn retry_after(status: &tonic::Status) -> Option<std::time::Duration> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

/// Builds INVALID_ARGUMENT with a `google.rpc.BadRequest` field violation.
pub fn invalid_argument(field: &str, description: impl Into<String>) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let description = description.into();
    let details = ErrorDetails::with_bad_request_violation(field, description.clone());
    tonic::Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        details,
    )
}

/// Formats an error and its chain of causes, one per line, for logs.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(cause) = cur {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        cur = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_follows_code_proto() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::Aborted), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::DeadlineExceeded),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            http_status(Code::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
    }

    #[test]
    fn reasons_round_trip() {
        let s = status_with_reason(
            Code::Unauthenticated,
            "expired",
            "auth.test",
            "TOKEN_EXPIRED",
        );
        assert_eq!(status_reason(&s).as_deref(), Some("TOKEN_EXPIRED"));
        assert_eq!(status_reason(&tonic::Status::internal("x")), None);
    }
}
