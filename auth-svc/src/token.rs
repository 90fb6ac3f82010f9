//! JWTs: HS256 only (RFC 8725 §3.1: the algorithm is pinned, the header's
//! `alg` is never trusted), with `sub`, `email`, `admin`, `iat`, `exp`, `iss`
//! and `aud`, all required and checked, plus `jti` (the token's id, so Logout
//! can end it alone) and `ver` (the user's token version, so a password change
//! or a disable ends all of them).
//!
//! HS256 is enough because auth-svc is the only verifier: the gateway asks
//! Validate rather than holding a key. Were other services to verify locally,
//! an asymmetric algorithm (EdDSA) would keep signing keys here.
//!
//! This module checks what the token itself says; whether it has since been
//! revoked is the database's answer (see `Validate` in grpc.rs).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use svc_kit::config::Secret;
use uuid::Uuid;

/// The shortest signing secret accepted: 256 bits (RFC 8725 §3.5).
pub const MIN_SECRET_BYTES: usize = 32;

/// The claims every token has, and all that tokens issued before `jti` and
/// `ver` existed carry (tests sign these by hand too).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub email: String,
    pub admin: bool,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

/// Everything a token says: [`Claims`] plus its revocation handles.
///
/// Both handles are optional when reading, so tokens issued before they
/// existed keep working until they expire: no `jti` (Logout of such a token
/// ends all of the user's tokens instead) and version 0 (the first password
/// change or disable ends them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenClaims {
    #[serde(flatten)]
    pub claims: Claims,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<Uuid>,
    #[serde(default)]
    pub ver: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token was given")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is signed with an algorithm that is not accepted")]
    BadAlgorithm,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("the token's claims are missing or not for this service")]
    InvalidClaims,
    #[error("the token has been revoked (logout or password change)")]
    Revoked,
    #[error("the account is disabled")]
    UserDisabled,
}

impl TokenError {
    /// The `google.rpc.ErrorInfo.reason` callers branch on.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "TOKEN_MISSING",
            Self::Malformed => "TOKEN_MALFORMED",
            Self::BadSignature => "TOKEN_BAD_SIGNATURE",
            Self::BadAlgorithm => "TOKEN_BAD_ALGORITHM",
            Self::Expired => "TOKEN_EXPIRED",
            Self::NotYetValid => "TOKEN_NOT_YET_VALID",
            Self::InvalidClaims => "TOKEN_INVALID_CLAIMS",
            Self::Revoked => "TOKEN_REVOKED",
            Self::UserDisabled => "USER_DISABLED",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("no JWT signing secret: set JWT_SECRET_FILE (or JWT_SECRET)")]
    NoSecret,
    #[error("the JWT signing secret is {0} bytes; at least {MIN_SECRET_BYTES} are required")]
    TooShort(usize),
}

/// A freshly signed token.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub jti: Uuid,
    pub expires: SystemTime,
}

#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Tokens {
    pub fn new(
        secret: Option<&Secret>,
        issuer: &str,
        audience: &str,
        ttl: Duration,
        leeway: Duration,
    ) -> Result<Self, TokenConfigError> {
        let secret = secret.ok_or(TokenConfigError::NoSecret)?;
        let bytes = secret.expose().as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(TokenConfigError::TooShort(bytes.len()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        // Every time claim is required: a token without `exp` never expires,
        // and a string-typed `exp` skipped validation unless required
        // (CVE-2026-25537).
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        // Off by default in jsonwebtoken: a token that says "not before
        // tomorrow" would be accepted today.
        validation.validate_nbf = true;
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
        })
    }

    /// How long issued tokens live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The clock skew tolerated: a token is still accepted this long after
    /// its `exp`, so a revocation must outlive the expiry by as much.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.validation.leeway)
    }

    /// Signs a token for a user, under the user's current token `version`.
    pub fn issue(
        &self,
        user_id: &str,
        email: &str,
        admin: bool,
        version: i32,
    ) -> Result<Issued, jsonwebtoken::errors::Error> {
        let now = SystemTime::now();
        let jti = Uuid::new_v4();
        let claims = TokenClaims {
            claims: Claims {
                sub: user_id.to_owned(),
                email: email.to_owned(),
                admin,
                iat: unix_secs(now),
                exp: unix_secs(now + self.ttl),
                iss: self.issuer.clone(),
                aud: self.audience.clone(),
            },
            jti: Some(jti),
            ver: version,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(Issued {
            token,
            jti,
            expires: UNIX_EPOCH + Duration::from_secs(claims.claims.exp),
        })
    }

    /// Checks signature, algorithm, expiry, `nbf`/`iat` not in the future,
    /// issuer and audience. Not revocation: that needs the database.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        // A JWT is three base64url parts; anything much longer than ours is
        // not one of ours, and parsing it would only cost CPU.
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::MissingAlgorithm
                | ErrorKind::UnsupportedAlgorithm => TokenError::BadAlgorithm,
                ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::InvalidSubject
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_) => TokenError::InvalidClaims,
                _ => TokenError::Malformed,
            })?;
        // jsonwebtoken never looks at `iat`. One in the future means a forged
        // token or a signer with a wrong clock; either way not ours to accept.
        if claims.claims.iat > jsonwebtoken::get_current_timestamp() + self.validation.leeway {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> Tokens {
        tokens_with_leeway(secret, 0)
    }

    fn tokens_with_leeway(secret: &str, leeway: u64) -> Tokens {
        Tokens::new(
            Some(&Secret::new(secret)),
            "iss-test",
            "aud-test",
            Duration::from_secs(60),
            Duration::from_secs(leeway),
        )
        .unwrap()
    }

    fn sign<T: Serialize>(c: &T) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            c,
            &EncodingKey::from_secret(KEY.as_bytes()),
        )
        .unwrap()
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn short_or_missing_secrets_are_refused() {
        let t = |s: Option<&Secret>| {
            Tokens::new(s, "i", "a", Duration::from_secs(1), Duration::ZERO).map(drop)
        };
        assert!(matches!(t(None), Err(TokenConfigError::NoSecret)));
        assert!(matches!(
            t(Some(&Secret::new("too short"))),
            Err(TokenConfigError::TooShort(9))
        ));
    }

    #[test]
    fn issued_tokens_verify_and_carry_an_id_and_the_version() {
        let t = tokens(KEY);
        let issued = t.issue("u1", "a@b.c", true, 7).unwrap();
        let c = t.verify(&issued.token).unwrap();
        assert_eq!(
            (
                c.claims.sub.as_str(),
                c.claims.email.as_str(),
                c.claims.admin
            ),
            ("u1", "a@b.c", true)
        );
        assert_eq!(c.claims.exp - c.claims.iat, 60);
        assert_eq!((c.jti, c.ver), (Some(issued.jti), 7));
        assert_eq!(
            issued.expires,
            UNIX_EPOCH + Duration::from_secs(c.claims.exp)
        );
        let other = t.issue("u1", "a@b.c", true, 7).unwrap();
        assert_ne!(issued.jti, other.jti, "every token has its own id");
    }

    #[test]
    fn tokens_without_jti_or_ver_still_verify_as_version_0() {
        // What tokens issued before revocation existed look like.
        let t = tokens(KEY);
        let mut c = t
            .verify(&t.issue("u1", "a@b.c", false, 0).unwrap().token)
            .unwrap();
        c.jti = None;
        let legacy = sign(&c.claims);
        assert!(!legacy.is_empty());
        let v = t.verify(&legacy).unwrap();
        assert_eq!((v.jti, v.ver), (None, 0));
        assert_eq!(v.claims, c.claims);
    }

    #[test]
    fn nbf_or_iat_in_the_future_fail_beyond_the_leeway() {
        let t = tokens_with_leeway(KEY, 10);
        let now = jsonwebtoken::get_current_timestamp();
        let base = t
            .verify(&t.issue("u1", "a@b.c", false, 0).unwrap().token)
            .unwrap();
        let with_nbf = |nbf: u64| {
            let mut v = serde_json::to_value(&base).unwrap();
            v["nbf"] = nbf.into();
            sign(&v)
        };
        let with_iat = |iat: u64| {
            let mut c = base.clone();
            c.claims.iat = iat;
            sign(&c)
        };
        assert_eq!(
            t.verify(&with_nbf(now + 3600)),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            t.verify(&with_iat(now + 3600)),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(t.verify(&with_nbf(now + 30)), Err(TokenError::NotYetValid));
        assert_eq!(t.verify(&with_iat(now + 30)), Err(TokenError::NotYetValid));
        // Within the leeway (clock skew between hosts), and in the past: fine.
        assert!(t.verify(&with_nbf(now + 5)).is_ok());
        assert!(t.verify(&with_iat(now + 5)).is_ok());
        assert!(t.verify(&with_nbf(now - 60)).is_ok());
        // A malformed nbf is refused, not skipped.
        let mut v = serde_json::to_value(&base).unwrap();
        v["nbf"] = "tomorrow".into();
        assert_eq!(t.verify(&sign(&v)), Err(TokenError::InvalidClaims));
        assert_eq!(TokenError::NotYetValid.reason(), "TOKEN_NOT_YET_VALID");
    }

    #[test]
    fn foreign_tampered_and_garbage_tokens_fail() {
        let t = tokens(KEY);
        let other = tokens("another key, also long enough!!!");
        let tok = other.issue("u1", "a@b.c", false, 0).unwrap().token;
        assert_eq!(t.verify(&tok), Err(TokenError::BadSignature));

        let tok = t.issue("u1", "a@b.c", false, 0).unwrap().token;
        let mut parts: Vec<String> = tok.split('.').map(str::to_owned).collect();
        // Flip `admin` to true in the payload, keep the signature.
        let payload = String::from_utf8(base64_decode(&parts[1]))
            .unwrap()
            .replace("\"admin\":false", "\"admin\":true");
        parts[1] = base64_encode(payload.as_bytes());
        assert_eq!(t.verify(&parts.join(".")), Err(TokenError::BadSignature));

        assert_eq!(t.verify("garbage"), Err(TokenError::Malformed));
        assert_eq!(t.verify(""), Err(TokenError::Missing));
        assert_eq!(t.verify(&"a".repeat(5000)), Err(TokenError::Malformed));
    }

    #[test]
    fn alg_none_and_other_algorithms_fail() {
        let t = tokens(KEY);
        let tok = t.issue("u1", "a@b.c", true, 0).unwrap().token;
        let payload = tok.split('.').nth(1).unwrap();
        let none = format!(
            "{}.{payload}.",
            base64_encode(br#"{"alg":"none","typ":"JWT"}"#)
        );
        assert_eq!(t.verify(&none), Err(TokenError::Malformed));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &t.verify(&tok).unwrap(),
            &EncodingKey::from_secret(KEY.as_bytes()),
        )
        .unwrap();
        assert_eq!(t.verify(&hs512), Err(TokenError::BadAlgorithm));
    }

    #[test]
    fn expired_and_wrong_audience_fail() {
        let t = tokens(KEY);
        let mut c = t
            .verify(&t.issue("u1", "a@b.c", false, 0).unwrap().token)
            .unwrap()
            .claims;
        c.exp = c.iat - 120;
        assert_eq!(t.verify(&sign(&c)), Err(TokenError::Expired));
        c.exp = c.iat + 120;
        c.aud = "someone-else".into();
        assert_eq!(t.verify(&sign(&c)), Err(TokenError::InvalidClaims));
        c.aud = "aud-test".into();
        c.iss = "mallory".into();
        assert_eq!(t.verify(&sign(&c)), Err(TokenError::InvalidClaims));
    }

    fn base64_encode(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &x)| n | (u32::from(x) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let vals: Vec<u32> = s
            .bytes()
            .map(|c| A.iter().position(|&a| a == c).unwrap() as u32)
            .collect();
        let mut out = Vec::new();
        for chunk in vals.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &v)| n | (v << (18 - 6 * i)));
            for i in 0..chunk.len() - 1 {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }
}
