//! JWTs: HS256 only (RFC 8725 §3.1: the algorithm is pinned, the header's
//! `alg` is never trusted), with `sub`, `email`, `admin`, `iat`, `exp`, `iss`
//! and `aud`, all required and checked.
//!
//! HS256 is enough because auth-svc is the only verifier: the gateway asks
//! Validate rather than holding a key. Were other services to verify locally,
//! an asymmetric algorithm (EdDSA) would keep signing keys here.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use svc_kit::config::Secret;

/// The shortest signing secret accepted: 256 bits (RFC 8725 §3.5).
pub const MIN_SECRET_BYTES: usize = 32;

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
    #[error("the token's claims are missing or not for this service")]
    InvalidClaims,
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
            Self::InvalidClaims => "TOKEN_INVALID_CLAIMS",
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
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
        })
    }

    /// Signs a token for a user; returns it with its expiry.
    pub fn issue(
        &self,
        user_id: &str,
        email: &str,
        admin: bool,
    ) -> Result<(String, SystemTime), jsonwebtoken::errors::Error> {
        let now = SystemTime::now();
        let exp = now + self.ttl;
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let claims = Claims {
            sub: user_id.to_owned(),
            email: email.to_owned(),
            admin,
            iat: secs(now),
            exp: secs(exp),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, UNIX_EPOCH + Duration::from_secs(claims.exp)))
    }

    /// Checks signature, algorithm, expiry, issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        // A JWT is three base64url parts; anything much longer than ours is
        // not one of ours, and parsing it would only cost CPU.
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::MissingAlgorithm
                | ErrorKind::UnsupportedAlgorithm => TokenError::BadAlgorithm,
                ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::InvalidSubject
                | ErrorKind::ImmatureSignature
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_) => TokenError::InvalidClaims,
                _ => TokenError::Malformed,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> Tokens {
        Tokens::new(
            Some(&Secret::new(secret)),
            "iss-test",
            "aud-test",
            Duration::from_secs(60),
            Duration::from_secs(0),
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
    fn issued_tokens_verify() {
        let t = tokens(KEY);
        let (tok, _) = t.issue("u1", "a@b.c", true).unwrap();
        let c = t.verify(&tok).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.email.as_str(), c.admin),
            ("u1", "a@b.c", true)
        );
        assert_eq!(c.exp - c.iat, 60);
    }

    #[test]
    fn foreign_tampered_and_garbage_tokens_fail() {
        let t = tokens(KEY);
        let other = tokens("another key, also long enough!!!");
        let (tok, _) = other.issue("u1", "a@b.c", false).unwrap();
        assert_eq!(t.verify(&tok), Err(TokenError::BadSignature));

        let (tok, _) = t.issue("u1", "a@b.c", false).unwrap();
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
        let (tok, _) = t.issue("u1", "a@b.c", true).unwrap();
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
        let mut c = {
            let (tok, _) = t.issue("u1", "a@b.c", false).unwrap();
            t.verify(&tok).unwrap()
        };
        let sign = |c: &Claims| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                c,
                &EncodingKey::from_secret(KEY.as_bytes()),
            )
            .unwrap()
        };
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
