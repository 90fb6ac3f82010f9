use crate::helpers::*;
use auth_svc::token::Claims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mp3converter_proto::auth::v1::ValidateRequest;
use tonic::Code;

async fn validate(
    app: &TestApp,
    token: &str,
) -> Result<mp3converter_proto::auth::v1::ValidateResponse, tonic::Status> {
    app.client
        .clone()
        .validate(ValidateRequest {
            token: token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn b64(bytes: &[u8]) -> String {
    // base64url without padding, enough for hand-made tokens.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
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

async fn good_claims(app: &TestApp) -> (String, Claims) {
    let token = app.admin_token().await;
    let v = validate(app, &token).await.unwrap();
    let exp = v.expire_time.unwrap().seconds as u64;
    let c = Claims {
        sub: v.user_id,
        email: v.email,
        admin: v.admin,
        iat: exp - 86_400,
        exp,
        iss: "mp3converter-auth".into(),
        aud: "mp3converter".into(),
    };
    (token, c)
}

fn sign(c: &Claims, key: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        c,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_valid_token_says_who_it_belongs_to() {
    let app = spawn_app().await;
    let (token, c) = good_claims(&app).await;
    let v = validate(&app, &token).await.unwrap();
    assert_eq!(v.email, ADMIN_EMAIL);
    assert!(v.admin);
    // A token we sign by hand with the same key and claims is as good.
    assert!(
        validate(&app, &sign(&c, SECRET, Algorithm::HS256))
            .await
            .is_ok()
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_with_a_reason() {
    let app = spawn_app().await;
    let (token, good) = good_claims(&app).await;
    let payload = token.split('.').nth(1).unwrap();

    let mut expired = good.clone();
    expired.iat -= 200_000;
    expired.exp = expired.iat + 60;
    let mut wrong_aud = good.clone();
    wrong_aud.aud = "another-service".into();
    let mut wrong_iss = good.clone();
    wrong_iss.iss = "evil-issuer".into();
    let mut escalated = good.clone();
    escalated.admin = true;
    escalated.email = "mallory@example.com".into();
    let tampered = {
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(serde_json::to_string(&escalated).unwrap().as_bytes());
        parts[1] = &forged;
        parts.join(".")
    };

    let cases = vec![
        ("garbage", "garbage".to_owned(), "TOKEN_MALFORMED"),
        ("empty", String::new(), "TOKEN_MISSING"),
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            "TOKEN_MALFORMED",
        ),
        (
            "another key",
            sign(
                &good,
                "some-other-key-some-other-key-1234",
                Algorithm::HS256,
            ),
            "TOKEN_BAD_SIGNATURE",
        ),
        (
            "HS512",
            sign(&good, SECRET, Algorithm::HS512),
            "TOKEN_BAD_ALGORITHM",
        ),
        ("tampered payload", tampered, "TOKEN_BAD_SIGNATURE"),
        (
            "expired",
            sign(&expired, SECRET, Algorithm::HS256),
            "TOKEN_EXPIRED",
        ),
        (
            "wrong aud",
            sign(&wrong_aud, SECRET, Algorithm::HS256),
            "TOKEN_INVALID_CLAIMS",
        ),
        (
            "wrong iss",
            sign(&wrong_iss, SECRET, Algorithm::HS256),
            "TOKEN_INVALID_CLAIMS",
        ),
        (
            "no exp",
            {
                let mut v = serde_json::to_value(&good).unwrap();
                v.as_object_mut().unwrap().remove("exp");
                jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &v,
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .unwrap()
            },
            "TOKEN_MALFORMED", /* our claims type requires exp */
        ),
    ];
    for (what, token, want) in cases {
        let s = assert_code(validate(&app, &token).await, Code::Unauthenticated);
        assert_eq!(reason(&s).as_deref(), Some(want), "{what}: {s:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn tokens_from_the_future_are_refused() {
    let app = spawn_app().await;
    let (_, good) = good_claims(&app).await;
    let now = now_secs();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let sign_json = |v: &serde_json::Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), v, &key).unwrap()
    };
    let mut not_before = serde_json::to_value(&good).unwrap();
    not_before["nbf"] = (now + 3600).into();
    let mut issued_later = good.clone();
    issued_later.iat = now + 3600;
    for (what, token) in [
        ("nbf in an hour", sign_json(&not_before)),
        (
            "iat in an hour",
            sign(&issued_later, SECRET, Algorithm::HS256),
        ),
    ] {
        let s = assert_code(validate(&app, &token).await, Code::Unauthenticated);
        assert_eq!(
            reason(&s).as_deref(),
            Some("TOKEN_NOT_YET_VALID"),
            "{what}: {s:?}"
        );
    }
    // Within the 10 s leeway (clock skew between hosts) they pass.
    not_before["nbf"] = (now + 5).into();
    issued_later.iat = now + 5;
    assert!(validate(&app, &sign_json(&not_before)).await.is_ok());
    assert!(
        validate(&app, &sign(&issued_later, SECRET, Algorithm::HS256))
            .await
            .is_ok()
    );
    app.stop().await;
}
