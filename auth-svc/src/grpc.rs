//! The gRPC surface: decode the request, call the domain, encode the answer.

use crate::{
    db::{self, UserKey, UserRow},
    domain::{Email, Password},
    error::AuthError,
    password::Hasher,
    ratelimit::{CLIENT_ADDR_HEADER, Client, LoginLimits, Peer},
    token::{TokenClaims, TokenError, Tokens},
};
use deadpool_postgres::Pool;
use mp3converter_proto::auth::v1::{
    ChangePasswordRequest, ChangePasswordResponse, CreateUserRequest, CreateUserResponse,
    LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, SetUserDisabledRequest,
    SetUserDisabledResponse, User, ValidateRequest, ValidateResponse,
    auth_service_server::AuthService, set_user_disabled_request,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub(crate) struct AuthGrpc {
    pub(crate) pool: Pool,
    pub(crate) hasher: Hasher,
    pub(crate) tokens: Tokens,
    pub(crate) limits: LoginLimits,
}

/// A token that passed every check, signature to database.
struct Caller {
    claims: TokenClaims,
    user_id: Uuid,
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn arg(field: &'static str) -> impl FnOnce(String) -> AuthError {
    move |why| AuthError::InvalidArgument { field, why }
}

fn user_message(user: &UserRow) -> User {
    User {
        id: user.id.to_string(),
        email: user.email.clone(),
        admin: user.admin,
        create_time: Some(timestamp(user.created_at)),
        disabled: user.disabled,
    }
}

/// The `result` label of the login counter.
fn login_result<T>(res: &Result<T, AuthError>) -> &'static str {
    match res {
        Ok(_) => "ok",
        Err(AuthError::InvalidCredentials) => "rejected",
        Err(AuthError::RateLimited(_)) => "rate_limited",
        Err(AuthError::Busy) => "busy",
        Err(AuthError::InvalidArgument { .. }) => "invalid",
        Err(_) => "error",
    }
}

impl AuthGrpc {
    async fn login(&self, client: Client, req: LoginRequest) -> Result<LoginResponse, AuthError> {
        // Before anything that costs: a client over its limit gets no query
        // and no hash.
        let attempt = self.limits.admit_client(client).await?;
        let (email, password) = match (
            Email::parse(&req.email).map_err(arg("email")),
            Password::for_login(&req.password).map_err(arg("password")),
        ) {
            (Ok(e), Ok(p)) => (e, p),
            (Err(e), _) | (_, Err(e)) => {
                attempt.not_counted();
                return Err(e);
            }
        };
        let attempt = self.limits.admit_account(attempt, &email).await?;
        let user = match self.check_password(&email, password).await {
            Ok(Some(user)) => user,
            // A wrong password, an unknown or disabled account: a failure,
            // and the attempt stays counted.
            Ok(None) => return Err(AuthError::InvalidCredentials),
            Err(e) => {
                attempt.not_counted();
                return Err(e);
            }
        };
        attempt.succeeded();
        let (token, exp) = self.issue(&user)?;
        tracing::info!(user_id = %user.id, "login");
        Ok(LoginResponse {
            token,
            expire_time: Some(timestamp(exp)),
        })
    }

    /// The user, if the password is theirs and they may log in. An unknown
    /// email is checked against a dummy hash, and a disabled account's
    /// password is checked too, so every failure costs the same time and
    /// gives the same answer.
    async fn check_password(
        &self,
        email: &Email,
        password: Password,
    ) -> Result<Option<UserRow>, AuthError> {
        let user = db::find_by_email(&self.pool, email.as_str()).await?;
        let ok = self
            .hasher
            .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await?;
        Ok(user.filter(|u| ok && !u.disabled))
    }

    fn issue(&self, user: &UserRow) -> Result<(String, SystemTime), AuthError> {
        self.tokens
            .issue(
                &user.id.to_string(),
                &user.email,
                user.admin,
                user.token_version,
            )
            .map(|issued| (issued.token, issued.expires))
            .map_err(|e| AuthError::Internal(format!("signing a token: {e}")))
    }

    /// Validate's checks: the token itself, then one query for what may have
    /// happened since it was issued.
    async fn authenticate(&self, token: Option<&str>) -> Result<Caller, AuthError> {
        let claims = self.tokens.verify(token.ok_or(TokenError::Missing)?)?;
        let user_id = Uuid::parse_str(&claims.claims.sub).map_err(|_| TokenError::InvalidClaims)?;
        // No row: the user was deleted, which ends their tokens too.
        let state = db::token_state(&self.pool, user_id, claims.jti)
            .await?
            .ok_or(TokenError::Revoked)?;
        if state.disabled {
            return Err(TokenError::UserDisabled.into());
        }
        if state.revoked || state.token_version != claims.ver {
            return Err(TokenError::Revoked.into());
        }
        Ok(Caller { claims, user_id })
    }

    async fn validate(&self, token: &str) -> Result<ValidateResponse, AuthError> {
        let res = self.authenticate(Some(token)).await;
        let result = match &res {
            Ok(_) => "valid",
            Err(AuthError::Token(e)) => e.reason(),
            Err(AuthError::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        metrics::counter!("mp3converter_auth_validations_total", "result" => result).increment(1);
        let claims = res?.claims.claims;
        Ok(ValidateResponse {
            user_id: claims.sub,
            email: claims.email,
            admin: claims.admin,
            expire_time: Some(timestamp(UNIX_EPOCH + Duration::from_secs(claims.exp))),
        })
    }

    async fn create_user(
        &self,
        bearer: Option<&str>,
        req: CreateUserRequest,
    ) -> Result<CreateUserResponse, AuthError> {
        let caller = self.authenticate(bearer).await?;
        if !caller.claims.claims.admin {
            return Err(AuthError::NotAdmin);
        }
        let email = Email::parse(&req.email).map_err(arg("email"))?;
        let password = Password::new_user(&req.password).map_err(arg("password"))?;
        let hash = self.hasher.hash(password).await?;
        let user = db::insert_user(&self.pool, email.as_str(), &hash, req.admin).await?;
        tracing::info!(user_id = %user.id, admin = user.admin, by = %caller.user_id, "user created");
        Ok(CreateUserResponse {
            user: Some(user_message(&user)),
        })
    }

    async fn logout(&self, bearer: Option<&str>) -> Result<LogoutResponse, AuthError> {
        let caller = self.authenticate(bearer).await?;
        match caller.claims.jti {
            // Kept until the token would be refused anyway: its expiry plus
            // the leeway Validate grants past it.
            Some(jti) => {
                let expires = UNIX_EPOCH
                    + Duration::from_secs(caller.claims.claims.exp)
                    + self.tokens.leeway();
                db::revoke_token(&self.pool, jti, caller.user_id, expires).await?;
            }
            // A token issued before tokens had ids: the only way to end it is
            // to end all of the user's tokens.
            None => {
                db::bump_token_version(&self.pool, caller.user_id).await?;
            }
        }
        tracing::info!(user_id = %caller.user_id, "logout");
        Ok(LogoutResponse {})
    }

    async fn change_password(
        &self,
        client: Client,
        bearer: Option<&str>,
        req: ChangePasswordRequest,
    ) -> Result<ChangePasswordResponse, AuthError> {
        // A stolen token must not become a way to guess the password: the
        // same limits as Login.
        let attempt = self.limits.admit_client(client).await?;
        let checked = async {
            let caller = self.authenticate(bearer).await?;
            let current =
                Password::for_login(&req.current_password).map_err(arg("current_password"))?;
            let new = Password::new_user(&req.new_password).map_err(arg("new_password"))?;
            let user = db::find_by_id(&self.pool, caller.user_id)
                .await?
                .ok_or(TokenError::Revoked)?;
            let email = Email::parse(&user.email)
                .map_err(|why| AuthError::Internal(format!("stored email {why}")))?;
            Ok::<_, AuthError>((caller, current, new, user, email))
        }
        .await;
        let (caller, current, new, user, email) = match checked {
            Ok(c) => c,
            Err(e) => {
                attempt.not_counted();
                return Err(e);
            }
        };
        let attempt = self.limits.admit_account(attempt, &email).await?;
        match self.hasher.verify(current, Some(user.password_hash)).await {
            Ok(true) => attempt.succeeded(),
            Ok(false) => return Err(AuthError::InvalidCredentials),
            Err(e) => {
                attempt.not_counted();
                return Err(e.into());
            }
        }
        let hash = self.hasher.hash(new).await?;
        // Only if nothing revoked the caller's token meanwhile (another
        // change, a disable): then this call is as stale as its token.
        let user = db::change_password(&self.pool, user.id, &hash, caller.claims.ver)
            .await?
            .ok_or(TokenError::Revoked)?;
        let (token, exp) = self.issue(&user)?;
        tracing::info!(user_id = %user.id, "password changed; earlier tokens revoked");
        Ok(ChangePasswordResponse {
            token,
            expire_time: Some(timestamp(exp)),
        })
    }

    async fn set_user_disabled(
        &self,
        bearer: Option<&str>,
        req: SetUserDisabledRequest,
    ) -> Result<SetUserDisabledResponse, AuthError> {
        let caller = self.authenticate(bearer).await?;
        if !caller.claims.claims.admin {
            return Err(AuthError::NotAdmin);
        }
        let email;
        let (key, is_caller) = match req.user {
            Some(set_user_disabled_request::User::UserId(id)) => {
                let id = Uuid::parse_str(id.trim())
                    .map_err(|_| arg("user_id")("is not a UUID".into()))?;
                (UserKey::Id(id), id == caller.user_id)
            }
            Some(set_user_disabled_request::User::Email(raw)) => {
                email = Email::parse(&raw).map_err(arg("email"))?;
                let is_caller = email.as_str() == caller.claims.claims.email;
                (UserKey::Email(email.as_str()), is_caller)
            }
            None => return Err(arg("user")("give user_id or email".into())),
        };
        // Locking oneself out is never what was meant, and could leave no
        // admin at all; operators have `auth-svc user disable`.
        if req.disabled && is_caller {
            return Err(AuthError::FailedPrecondition(
                "an admin cannot disable themselves",
            ));
        }
        let user = db::set_disabled(&self.pool, key, req.disabled)
            .await?
            .ok_or(AuthError::NotFound)?;
        tracing::info!(user_id = %user.id, disabled = user.disabled, by = %caller.user_id, "user disabled flag set");
        Ok(SetUserDisabledResponse {
            user: Some(user_message(&user)),
        })
    }
}

/// The bearer token of `authorization: Bearer <token>` metadata.
fn bearer<T>(req: &Request<T>) -> Option<String> {
    let value = req.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

impl AuthGrpc {
    /// Whom a call counts against for rate limits.
    fn client<T>(&self, req: &Request<T>) -> Client {
        let named = req
            .metadata()
            .get(CLIENT_ADDR_HEADER)
            .and_then(|v| v.to_str().ok());
        self.limits.client(Peer {
            addr: svc_kit::tls::peer_addr(req),
            mesh: req.extensions().get::<svc_kit::tls::MeshConnectInfo>(),
            named,
        })
    }
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        let client = self.client(&req);
        let res = self.login(client, req.into_inner()).await;
        metrics::counter!("mp3converter_auth_logins_total", "result" => login_result(&res))
            .increment(1);
        Ok(Response::new(res?))
    }

    async fn validate(
        &self,
        req: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        Ok(Response::new(self.validate(&req.into_inner().token).await?))
    }

    async fn create_user(
        &self,
        req: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let token = bearer(&req);
        Ok(Response::new(
            self.create_user(token.as_deref(), req.into_inner()).await?,
        ))
    }

    async fn logout(
        &self,
        req: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        Ok(Response::new(self.logout(bearer(&req).as_deref()).await?))
    }

    async fn change_password(
        &self,
        req: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let client = self.client(&req);
        let token = bearer(&req);
        let res = self
            .change_password(client, token.as_deref(), req.into_inner())
            .await;
        metrics::counter!("mp3converter_auth_password_changes_total", "result" => login_result(&res))
            .increment(1);
        Ok(Response::new(res?))
    }

    async fn set_user_disabled(
        &self,
        req: Request<SetUserDisabledRequest>,
    ) -> Result<Response<SetUserDisabledResponse>, Status> {
        let token = bearer(&req);
        Ok(Response::new(
            self.set_user_disabled(token.as_deref(), req.into_inner())
                .await?,
        ))
    }
}
