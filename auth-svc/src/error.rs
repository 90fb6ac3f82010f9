//! auth-svc's errors and their one mapping to gRPC statuses.

use crate::{db::DbError, password::HashError, ratelimit::Limited, token::TokenError};
use std::time::Duration;
use svc_kit::error::{invalid_argument, status_with_reason};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub(crate) const DOMAIN: &str = "auth.mp3converter";

#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("{field}: {why}")]
    InvalidArgument { field: &'static str, why: String },
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("admin role required")]
    NotAdmin,
    #[error("a user with that email already exists")]
    AlreadyExists,
    #[error("no such user")]
    NotFound,
    #[error("{0}")]
    FailedPrecondition(&'static str),
    #[error("too many login attempts (per {})", .0.scope)]
    RateLimited(Limited),
    /// Every password-hashing slot is taken and the queue is full or stuck.
    #[error("too many password checks in progress")]
    Busy,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<DbError> for AuthError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => Self::Unavailable(m),
            DbError::Duplicate => Self::AlreadyExists,
            DbError::Other(m) => Self::Internal(m),
        }
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => Self::Busy,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<Limited> for AuthError {
    fn from(l: Limited) -> Self {
        Self::RateLimited(l)
    }
}

/// A status with an ErrorInfo reason and a RetryInfo delay, the standard
/// way to say "come back after this long" (the gateway turns it into
/// `Retry-After`).
fn retry_later(code: Code, message: String, reason: &str, delay: Duration) -> Status {
    let mut details = ErrorDetails::new();
    details
        .set_error_info(
            reason,
            DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        )
        .set_retry_info(Some(delay));
    Status::with_error_details(code, message, details)
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidArgument { field, why } => invalid_argument(field, why),
            // One message for unknown email and wrong password: no user
            // enumeration.
            AuthError::InvalidCredentials => status_with_reason(
                Code::Unauthenticated,
                "invalid email or password",
                DOMAIN,
                "INVALID_CREDENTIALS",
            ),
            AuthError::Token(t) => {
                status_with_reason(Code::Unauthenticated, t.to_string(), DOMAIN, t.reason())
            }
            AuthError::NotAdmin => status_with_reason(
                Code::PermissionDenied,
                "admin role required",
                DOMAIN,
                "ADMIN_REQUIRED",
            ),
            AuthError::AlreadyExists => {
                Status::already_exists("a user with that email already exists")
            }
            AuthError::NotFound => Status::not_found("no such user"),
            AuthError::FailedPrecondition(why) => Status::failed_precondition(why),
            // Whole seconds, rounded up, in both the message and the detail:
            // a client that retries exactly then is let in.
            AuthError::RateLimited(l) => {
                let secs = l.retry_after.as_secs() + u64::from(l.retry_after.subsec_nanos() > 0);
                let secs = secs.max(1);
                retry_later(
                    Code::ResourceExhausted,
                    format!("too many login attempts; retry in {secs} s"),
                    "LOGIN_RATE_LIMITED",
                    Duration::from_secs(secs),
                )
            }
            AuthError::Busy => retry_later(
                Code::Unavailable,
                "busy checking other passwords; retry in a moment".into(),
                "BUSY",
                Duration::from_secs(1),
            ),
            AuthError::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Status::unavailable("the user database is unavailable; retry later")
            }
            AuthError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
