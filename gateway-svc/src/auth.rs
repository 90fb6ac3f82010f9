//! The JWT check shared by both stacks: one tower [`AuthLayer`] takes the
//! bearer token, asks auth-svc `Validate` over gRPC (through a small cache),
//! and puts the [`Caller`] into the request's extensions. What a rejection
//! looks like is the only thing that differs between gRPC and REST
//! ([`Reject`]).
//!
//! Fail closed: no token or a bad one is UNAUTHENTICATED/401; auth-svc not
//! answering is UNAVAILABLE/503, never a pass.

use futures::future::BoxFuture;
use http::{Request, Response};
use moka::{Expiry, future::Cache};
use mp3converter_proto::auth::v1::{ValidateRequest, auth_service_client::AuthServiceClient};
use sha2::{Digest, Sha256};
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};
use svc_kit::observe::TracedChannel;
use tonic::{Code, transport::Channel};
use tower::{Layer, Service};
use tracing::Instrument;

/// Who is calling, as auth-svc vouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub email: String,
    pub admin: bool,
    /// When the token stops being valid.
    pub expires: SystemTime,
}

/// The caller's bearer token, kept beside the [`Caller`] for streams that
/// must check it again while they last (WatchJobs). Never printed.
#[derive(Clone)]
pub struct Bearer(Arc<str>);

impl Bearer {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer([redacted])")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing bearer token (send `Authorization: Bearer <token>`)")]
    Missing,
    /// auth-svc said UNAUTHENTICATED; `reason` is its ErrorInfo reason.
    #[error("{message}")]
    Rejected {
        message: String,
        reason: Option<String>,
    },
    #[error("the authentication service is unavailable; retry later")]
    Unavailable,
}

#[derive(Clone)]
struct Entry {
    caller: Caller,
}

/// Entries live at most the configured TTL and never past the token's `exp`.
struct UntilExpiry {
    max_ttl: Duration,
}

impl Expiry<[u8; 32], Entry> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Entry,
        _now: Instant,
    ) -> Option<Duration> {
        let left = value
            .caller
            .expires
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some(left.min(self.max_ttl))
    }
}

/// Calls auth-svc `Validate`, remembering good answers briefly. Keys are
/// SHA-256 digests, so tokens are not kept in memory.
#[derive(Clone)]
pub struct Validator {
    client: AuthServiceClient<TracedChannel>,
    timeout: Duration,
    cache: Option<Cache<[u8; 32], Entry>>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("timeout", &self.timeout)
            .field("cache", &self.cache.as_ref().map(|c| c.entry_count()))
            .finish()
    }
}

impl Validator {
    pub fn new(channel: Channel, timeout: Duration, cache_ttl: Duration, cache_size: u64) -> Self {
        let cache = (!cache_ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(cache_size)
                .expire_after(UntilExpiry { max_ttl: cache_ttl })
                .support_invalidation_closures()
                .build()
        });
        Self {
            client: AuthServiceClient::new(tower::Layer::layer(
                &svc_kit::observe::GrpcClientLayer,
                channel,
            )),
            timeout,
            cache,
        }
    }

    /// Forgets a token (it was just revoked through this replica).
    pub async fn forget(&self, token: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&Self::key(token)).await;
        }
    }

    /// Forgets every cached token of a user (disabled, password changed).
    pub async fn forget_user(&self, user_id: &str) {
        if let Some(cache) = &self.cache {
            let id = user_id.to_owned();
            let _ = cache.invalidate_entries_if(move |_, e| e.caller.user_id == id);
        }
    }

    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub async fn validate(&self, token: &str) -> Result<Caller, AuthFailure> {
        self.validate_with(token, true).await
    }

    /// [`Validator::validate`] asking auth-svc whatever the cache holds (the
    /// answer still refreshes it): for streams that outlive many requests.
    pub async fn revalidate(&self, token: &str) -> Result<Caller, AuthFailure> {
        self.validate_with(token, false).await
    }

    async fn validate_with(&self, token: &str, cached: bool) -> Result<Caller, AuthFailure> {
        let span = tracing::info_span!(
            "auth.check_token",
            cache.hit = tracing::field::Empty,
            result = tracing::field::Empty,
        );
        let res = self
            .check(token, cached, &span)
            .instrument(span.clone())
            .await;
        span.record(
            "result",
            match &res {
                Ok(_) => "valid",
                Err(AuthFailure::Missing) => "missing",
                Err(AuthFailure::Rejected { .. }) => "rejected",
                Err(AuthFailure::Unavailable) => "unavailable",
            },
        );
        res
    }

    async fn check(
        &self,
        token: &str,
        cached: bool,
        span: &tracing::Span,
    ) -> Result<Caller, AuthFailure> {
        let key = Self::key(token);
        if let Some(cache) = self.cache.as_ref().filter(|_| cached) {
            if let Some(entry) = cache.get(&key).await
                && entry.caller.expires > SystemTime::now()
            {
                metrics::counter!("mp3converter_gateway_auth_cache_lookups_total", "result" => "hit")
                    .increment(1);
                span.record("cache.hit", true);
                return Ok(entry.caller);
            }
            metrics::counter!("mp3converter_gateway_auth_cache_lookups_total", "result" => "miss")
                .increment(1);
            span.record("cache.hit", false);
        }
        let mut req = tonic::Request::new(ValidateRequest {
            token: token.to_owned(),
        });
        req.set_timeout(self.timeout);
        let res = self.client.clone().validate(req).await;
        let res = match res {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == Code::Unauthenticated => {
                metrics::counter!("mp3converter_gateway_auth_validations_total", "result" => "rejected")
                    .increment(1);
                return Err(AuthFailure::Rejected {
                    message: status.message().to_owned(),
                    reason: svc_kit::error::status_reason(&status),
                });
            }
            Err(status) => {
                metrics::counter!("mp3converter_gateway_auth_validations_total", "result" => "unavailable")
                    .increment(1);
                tracing::warn!(code = ?status.code(), message = status.message(), "auth-svc Validate failed");
                return Err(AuthFailure::Unavailable);
            }
        };
        metrics::counter!("mp3converter_gateway_auth_validations_total", "result" => "valid")
            .increment(1);
        let expires = res
            .expire_time
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let caller = Caller {
            user_id: res.user_id,
            email: res.email,
            admin: res.admin,
            expires,
        };
        if let Some(cache) = &self.cache
            && expires > SystemTime::now()
        {
            cache
                .insert(
                    key,
                    Entry {
                        caller: caller.clone(),
                    },
                )
                .await;
        }
        Ok(caller)
    }
}

/// How a stack answers a request that fails authentication.
pub trait Reject<B>: Clone + Send + Sync + 'static {
    fn reject(&self, failure: &AuthFailure) -> Response<B>;
}

/// The bearer token of an `Authorization` header, if well-formed.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[derive(Clone, Debug)]
pub struct AuthLayer<R> {
    validator: Validator,
    reject: R,
}

impl<R> AuthLayer<R> {
    pub fn new(validator: Validator, reject: R) -> Self {
        Self { validator, reject }
    }
}

impl<S, R: Clone> Layer<S> for AuthLayer<R> {
    type Service = AuthMiddleware<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware {
            inner,
            validator: self.validator.clone(),
            reject: self.reject.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthMiddleware<S, R> {
    inner: S,
    validator: Validator,
    reject: R,
}

impl<S, R, ReqB, ResB> Service<Request<ReqB>> for AuthMiddleware<S, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    R: Reject<ResB>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The clone is not ready; swap so the instance polled ready is used.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let validator = self.validator.clone();
        let reject = self.reject.clone();
        Box::pin(async move {
            let Some(token) = bearer(req.headers()).map(str::to_owned) else {
                return Ok(reject.reject(&AuthFailure::Missing));
            };
            match validator.validate(&token).await {
                Ok(caller) => {
                    req.extensions_mut().insert(Arc::new(caller));
                    req.extensions_mut().insert(Bearer(token.into()));
                    inner.call(req).await
                }
                Err(failure) => Ok(reject.reject(&failure)),
            }
        })
    }
}

/// gRPC: a trailers-only response carrying the status.
#[derive(Clone, Copy, Debug)]
pub struct GrpcReject;

impl<B: Default> Reject<B> for GrpcReject {
    fn reject(&self, failure: &AuthFailure) -> Response<B> {
        failure_status(failure).into_http()
    }
}

/// The status for a failure, with the upstream reason kept for clients.
pub fn failure_status(failure: &AuthFailure) -> tonic::Status {
    const DOMAIN: &str = "auth.mp3converter";
    match failure {
        AuthFailure::Missing => svc_kit::error::status_with_reason(
            Code::Unauthenticated,
            failure.to_string(),
            DOMAIN,
            "TOKEN_MISSING",
        ),
        AuthFailure::Rejected {
            message,
            reason: Some(reason),
        } => svc_kit::error::status_with_reason(Code::Unauthenticated, message, DOMAIN, reason),
        AuthFailure::Rejected { message, .. } => tonic::Status::unauthenticated(message),
        AuthFailure::Unavailable => tonic::Status::unavailable(failure.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&http::HeaderMap::new()), None);
    }

    #[test]
    fn failures_map_to_codes_with_reasons() {
        let s = failure_status(&AuthFailure::Missing);
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(
            svc_kit::error::status_reason(&s).as_deref(),
            Some("TOKEN_MISSING")
        );
        let s = failure_status(&AuthFailure::Unavailable);
        assert_eq!(s.code(), Code::Unavailable);
        let s = failure_status(&AuthFailure::Rejected {
            message: "the token has expired".into(),
            reason: Some("TOKEN_EXPIRED".into()),
        });
        assert_eq!(
            svc_kit::error::status_reason(&s).as_deref(),
            Some("TOKEN_EXPIRED")
        );
    }
}
