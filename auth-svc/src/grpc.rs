//! The gRPC surface: decode the request, call the domain, encode the answer.

use crate::{
    db,
    domain::{Email, Password},
    error::AuthError,
    password::Hasher,
    token::{TokenError, Tokens},
};
use deadpool_postgres::Pool;
use mp3converter_proto::auth::v1::{
    CreateUserRequest, CreateUserResponse, LoginRequest, LoginResponse, User, ValidateRequest,
    ValidateResponse, auth_service_server::AuthService,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub(crate) struct AuthGrpc {
    pub(crate) pool: Pool,
    pub(crate) hasher: Hasher,
    pub(crate) tokens: Tokens,
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn arg(field: &'static str) -> impl FnOnce(String) -> AuthError {
    move |why| AuthError::InvalidArgument { field, why }
}

impl AuthGrpc {
    async fn login(&self, req: LoginRequest) -> Result<LoginResponse, AuthError> {
        let email = Email::parse(&req.email).map_err(arg("email"))?;
        let password = Password::for_login(&req.password).map_err(arg("password"))?;
        let user = db::find_by_email(&self.pool, email.as_str()).await?;
        // An unknown email is checked against a dummy hash, so both failures
        // cost the same time and give the same answer.
        let ok = self
            .hasher
            .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await?;
        let user = match (ok, user) {
            (true, Some(user)) => user,
            _ => {
                metrics::counter!("mp3converter_auth_logins_total", "result" => "rejected")
                    .increment(1);
                return Err(AuthError::InvalidCredentials);
            }
        };
        let (token, exp) = self
            .tokens
            .issue(&user.id.to_string(), &user.email, user.admin)
            .map_err(|e| AuthError::Internal(format!("signing a token: {e}")))?;
        metrics::counter!("mp3converter_auth_logins_total", "result" => "ok").increment(1);
        tracing::info!(user_id = %user.id, "login");
        Ok(LoginResponse {
            token,
            expire_time: Some(timestamp(exp)),
        })
    }

    fn validate(&self, token: &str) -> Result<ValidateResponse, AuthError> {
        let res = self.tokens.verify(token);
        let result = match &res {
            Ok(_) => "valid",
            Err(e) => e.reason(),
        };
        metrics::counter!("mp3converter_auth_validations_total", "result" => result).increment(1);
        let claims = res?;
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
        let caller = self.tokens.verify(bearer.ok_or(TokenError::Missing)?)?;
        if !caller.admin {
            return Err(AuthError::NotAdmin);
        }
        let email = Email::parse(&req.email).map_err(arg("email"))?;
        let password = Password::new_user(&req.password).map_err(arg("password"))?;
        let hash = self.hasher.hash(password).await?;
        let user = db::insert_user(&self.pool, email.as_str(), &hash, req.admin).await?;
        tracing::info!(user_id = %user.id, admin = user.admin, by = %caller.sub, "user created");
        Ok(CreateUserResponse {
            user: Some(User {
                id: user.id.to_string(),
                email: user.email,
                admin: user.admin,
                create_time: Some(timestamp(user.created_at)),
            }),
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

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        Ok(Response::new(self.login(req.into_inner()).await?))
    }

    async fn validate(
        &self,
        req: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        Ok(Response::new(self.validate(&req.into_inner().token)?))
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
}
