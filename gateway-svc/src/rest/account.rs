//! The account over REST: sign out, change the password, and (admins)
//! disable or enable a user — each one AuthService call, with the caller's
//! token passed on. A token this replica has cached as valid is forgotten at
//! once when it stops being valid through here; elsewhere (another replica,
//! auth-svc directly) the cache's TTL bounds how long it lingers.

use super::{Edge, forward};
use crate::{auth::bearer, error::ApiError};
use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use mp3converter_proto::auth::v1::{
    ChangePasswordRequest, LogoutRequest, SetUserDisabledRequest, set_user_disabled_request,
};
use serde::{Deserialize, Serialize};
use svc_kit::error::ErrorBody;
use utoipa::ToSchema;

/// Signs out: this token, and every other of the caller's, stop working.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "account",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "The authentication service is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn logout(
    State(edge): State<Edge>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    edge.auth
        .clone()
        .logout(forward(&headers, LogoutRequest {}))
        .await?;
    if let Some(token) = bearer(&headers) {
        edge.validator.forget(token).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct NewPassword {
    #[schema(min_length = 1, max_length = 256)]
    current_password: String,
    #[schema(min_length = 8, max_length = 256)]
    new_password: String,
}

/// A new token (earlier ones were revoked).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Token)]
pub(crate) struct TokenJson {
    /// The JWT, for `Authorization: Bearer`.
    token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    expire_time: Option<String>,
}

/// Changes the caller's password; every earlier token is revoked, and the
/// answer carries a new one. Counted against the login rate limits.
#[utoipa::path(
    post,
    path = "/password",
    tag = "account",
    request_body = NewPassword,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed; a new token", body = TokenJson),
        (status = 400, description = "A bad body or new password", body = ErrorBody),
        (status = 401, description = "No valid token, or the current password is wrong", body = ErrorBody),
        (status = 413, description = "A body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many failed attempts; `Retry-After`", body = ErrorBody),
        (status = 503, description = "The authentication service is busy or unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn change_password(
    State(edge): State<Edge>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Json<NewPassword>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<TokenJson>, ApiError> {
    let Json(body) =
        body.map_err(|e| json_rejection("{\"current_password\", \"new_password\"}", &e))?;
    // Whose tokens to forget afterwards: all of them stop validating.
    let user = match bearer(&headers) {
        Some(token) => edge.validator.validate(token).await.ok().map(|c| c.user_id),
        None => None,
    };
    let mut req = forward(
        &headers,
        ChangePasswordRequest {
            current_password: body.current_password,
            new_password: body.new_password,
        },
    );
    // Counted against the same per-address limits as a login.
    super::name_client(&mut req, &edge, &headers, peer.map(|p| p.0.0));
    let res = edge.auth.clone().change_password(req).await?.into_inner();
    if let Some(user) = user {
        edge.validator.forget_user(&user).await;
    }
    Ok(Json(TokenJson {
        token: res.token,
        expire_time: res.expire_time.map(|t| t.to_string()),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct Whom {
    email: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = User)]
pub(crate) struct UserJson {
    id: String,
    email: String,
    admin: bool,
    disabled: bool,
}

async fn set_disabled(
    edge: Edge,
    headers: HeaderMap,
    body: Result<Json<Whom>, axum::extract::rejection::JsonRejection>,
    disabled: bool,
) -> Result<Json<UserJson>, ApiError> {
    let Json(whom) = body.map_err(|e| json_rejection("{\"email\"}", &e))?;
    let user = edge
        .auth
        .clone()
        .set_user_disabled(forward(
            &headers,
            SetUserDisabledRequest {
                user: Some(set_user_disabled_request::User::Email(whom.email)),
                disabled,
            },
        ))
        .await?
        .into_inner()
        .user
        .unwrap_or_default();
    // That user's tokens, cached here, stop at once.
    edge.validator.forget_user(&user.id).await;
    Ok(Json(UserJson {
        id: user.id,
        email: user.email,
        admin: user.admin,
        disabled: user.disabled,
    }))
}

/// (Admins) disables a user: their tokens stop working and they cannot log
/// in until enabled again.
#[utoipa::path(
    post,
    path = "/admin/users/disable",
    tag = "admin",
    request_body = Whom,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user, disabled", body = UserJson),
        (status = 400, description = "A bad body or email; or the admin themselves", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 413, description = "A body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "The authentication service is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn disable_user(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: Result<Json<Whom>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<UserJson>, ApiError> {
    set_disabled(edge, headers, body, true).await
}

/// (Admins) enables a disabled user again.
#[utoipa::path(
    post,
    path = "/admin/users/enable",
    tag = "admin",
    request_body = Whom,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user, enabled", body = UserJson),
        (status = 400, description = "A bad body or email", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 413, description = "A body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "The authentication service is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn enable_user(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: Result<Json<Whom>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<UserJson>, ApiError> {
    set_disabled(edge, headers, body, false).await
}

/// A JSON body the extractor refused: too large is 413, the wrong media type
/// 415, anything else 400; each says what was expected.
pub(super) fn json_rejection(
    expected: &str,
    e: &axum::extract::rejection::JsonRejection,
) -> ApiError {
    let message = format!("expected JSON {expected} ({})", e.body_text());
    match e.status() {
        http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(tonic::Code::ResourceExhausted, message).with_status(e.status())
        }
        http::StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::bad_request(message).with_status(e.status())
        }
        _ => ApiError::bad_request(message),
    }
}
