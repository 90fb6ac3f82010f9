//! auth-svc's errors and their one mapping to gRPC statuses.

use crate::{db::DbError, password::HashError, token::TokenError};
use svc_kit::error::{invalid_argument, status_with_reason};
use tonic::{Code, Status};

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
        Self::Internal(e.to_string())
    }
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
