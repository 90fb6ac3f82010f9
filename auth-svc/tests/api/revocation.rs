//! Tokens that can be taken back: Logout, ChangePassword, disabling a user,
//! and the cleanup of revocations that are no longer needed.

use crate::helpers::*;
use auth_svc::token::Claims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mp3converter_proto::auth::v1::set_user_disabled_request;
use std::time::Duration;
use tonic::Code;

fn refused_with(res: Result<impl std::fmt::Debug, tonic::Status>, want: &str) {
    let s = assert_code(res, Code::Unauthenticated);
    assert_eq!(reason(&s).as_deref(), Some(want), "{s:?}");
}

#[tokio::test]
async fn logout_revokes_that_token_and_only_that_one() {
    let app = spawn_app().await;
    let email = app.new_user("logout password").await;
    let first = app.login(&email, "logout password").await.unwrap();
    let second = app.login(&email, "logout password").await.unwrap().token;

    app.logout(Some(&first.token)).await.unwrap();
    refused_with(app.validate(&first.token).await, "TOKEN_REVOKED");
    assert_eq!(app.validate(&second).await.unwrap().email, email);
    // A revoked token can do nothing more, not even log out again.
    refused_with(app.logout(Some(&first.token)).await, "TOKEN_REVOKED");
    refused_with(app.logout(None).await, "TOKEN_MISSING");
    refused_with(app.logout(Some("garbage")).await, "TOKEN_MALFORMED");

    // The revocation is kept until the token would be refused anyway: its
    // expiry plus the 10 s leeway.
    let row = app
        .db()
        .await
        .query_one(
            "SELECT extract(epoch FROM expires_at)::bigint FROM revoked_tokens",
            &[],
        )
        .await
        .unwrap();
    let kept_until: i64 = row.get(0);
    assert_eq!(kept_until, first.expire_time.unwrap().seconds + 10);
    app.stop().await;
}

#[tokio::test]
async fn logout_of_a_token_without_an_id_ends_all_of_the_users_tokens() {
    // Tokens issued before they carried a `jti` cannot be revoked alone.
    let app = spawn_app().await;
    let email = app.new_user("legacy password").await;
    let current = app.login(&email, "legacy password").await.unwrap().token;
    let v = app.validate(&current).await.unwrap();
    let now = now_secs();
    let legacy = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims {
            sub: v.user_id,
            email: v.email,
            admin: false,
            iat: now,
            exp: now + 600,
            iss: "mp3converter-auth".into(),
            aud: "mp3converter".into(),
        },
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert!(app.validate(&legacy).await.is_ok(), "legacy tokens work");

    app.logout(Some(&legacy)).await.unwrap();
    refused_with(app.validate(&legacy).await, "TOKEN_REVOKED");
    refused_with(app.validate(&current).await, "TOKEN_REVOKED");
    let fresh = app.login(&email, "legacy password").await.unwrap().token;
    assert!(app.validate(&fresh).await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn change_password_needs_the_current_one_and_revokes_every_earlier_token() {
    let app = spawn_app().await;
    let email = app.new_user("old password 1").await;
    let mine = app.login(&email, "old password 1").await.unwrap().token;
    let other_device = app.login(&email, "old password 1").await.unwrap().token;

    // A wrong current password: the answer of a wrong login, and nothing
    // changes.
    let wrong = assert_code(
        app.change_password(&mine, "not my password", "new password 2")
            .await,
        Code::Unauthenticated,
    );
    let wrong_login = assert_code(
        app.login(&email, "not my password").await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&wrong).as_deref(), Some("INVALID_CREDENTIALS"));
    assert_eq!(wrong.message(), wrong_login.message());
    assert!(app.validate(&mine).await.is_ok());
    // A weak new password is refused before anything is hashed.
    let weak = assert_code(
        app.change_password(&mine, "old password 1", "short").await,
        Code::InvalidArgument,
    );
    assert!(weak.message().starts_with("new_password:"), "{weak:?}");
    refused_with(
        app.change_password("garbage", "old password 1", "new password 2")
            .await,
        "TOKEN_MALFORMED",
    );

    let changed = app
        .change_password(&mine, "old password 1", "new password 2")
        .await
        .unwrap();
    let ttl = changed.expire_time.unwrap().seconds - now_secs() as i64;
    assert!((3590..=3610).contains(&ttl), "{ttl}");
    refused_with(app.validate(&mine).await, "TOKEN_REVOKED");
    refused_with(app.validate(&other_device).await, "TOKEN_REVOKED");
    assert_eq!(app.validate(&changed.token).await.unwrap().email, email);
    // The old token cannot change it again.
    refused_with(
        app.change_password(&mine, "new password 2", "new password 3")
            .await,
        "TOKEN_REVOKED",
    );
    assert_code(
        app.login(&email, "old password 1").await,
        Code::Unauthenticated,
    );
    let again = app.login(&email, "new password 2").await.unwrap().token;
    assert!(app.validate(&again).await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn a_disabled_user_is_refused_everywhere_until_enabled() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let email = app.new_user("disable password").await;
    let token = app.login(&email, "disable password").await.unwrap().token;

    // Only admins.
    let s = assert_code(
        app.set_disabled(&token, &email, true).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&s).as_deref(), Some("ADMIN_REQUIRED"));

    let user = app
        .set_disabled(&admin, &email.to_uppercase(), true)
        .await
        .unwrap();
    assert!(user.disabled);
    assert_eq!(user.email, email);
    refused_with(app.validate(&token).await, "USER_DISABLED");
    refused_with(app.logout(Some(&token)).await, "USER_DISABLED");
    // Login with the right password: exactly the wrong-password answer.
    let disabled = assert_code(
        app.login(&email, "disable password").await,
        Code::Unauthenticated,
    );
    let wrong = assert_code(app.login(&email, "wrong").await, Code::Unauthenticated);
    assert_eq!(disabled.message(), wrong.message());
    assert_eq!(reason(&disabled), reason(&wrong));
    // Disabling twice is harmless.
    assert!(
        app.set_disabled(&admin, &email, true)
            .await
            .unwrap()
            .disabled
    );

    // Enabled again (by id this time): logins work; the tokens from before
    // stay dead.
    let user = app
        .set_disabled_by(
            &admin,
            set_user_disabled_request::User::UserId(user.id),
            false,
        )
        .await
        .unwrap();
    assert!(!user.disabled);
    let fresh = app.login(&email, "disable password").await.unwrap().token;
    assert!(app.validate(&fresh).await.is_ok());
    refused_with(app.validate(&token).await, "TOKEN_REVOKED");
    app.stop().await;
}

#[tokio::test]
async fn set_user_disabled_refuses_unknown_users_bad_ids_and_self_lockout() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    assert_code(
        app.set_disabled(&admin, "nobody@example.com", true).await,
        Code::NotFound,
    );
    assert_code(
        app.set_disabled_by(
            &admin,
            set_user_disabled_request::User::UserId("not-a-uuid".into()),
            true,
        )
        .await,
        Code::InvalidArgument,
    );
    assert_code(
        app.set_disabled_by(
            &admin,
            set_user_disabled_request::User::UserId(uuid::Uuid::new_v4().to_string()),
            true,
        )
        .await,
        Code::NotFound,
    );
    let s = assert_code(
        app.set_disabled(&admin, ADMIN_EMAIL, true).await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("cannot disable themselves"), "{s:?}");
    assert!(app.validate(&admin).await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn a_disabled_admin_can_no_longer_act_as_one() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(Some(&admin), "second@example.com", "second admin pw", true)
        .await
        .unwrap();
    let second = app
        .login("second@example.com", "second admin pw")
        .await
        .unwrap()
        .token;
    app.set_disabled(&admin, "second@example.com", true)
        .await
        .unwrap();
    refused_with(
        app.create_user(Some(&second), "new@example.com", "new password", false)
            .await,
        "USER_DISABLED",
    );
    refused_with(
        app.set_disabled(&second, ADMIN_EMAIL, true).await,
        "USER_DISABLED",
    );
    app.stop().await;
}

#[tokio::test]
async fn expired_revocations_are_deleted_and_live_ones_kept() {
    let db_url = test_kit::Stack::from_env().fresh_database("auth").await;
    let app = spawn_app_on(&db_url, &["--housekeeping-interval", "100ms"]).await;
    let email = app.new_user("cleanup password").await;
    let token = app.login(&email, "cleanup password").await.unwrap().token;
    let user_id = app.validate(&token).await.unwrap().user_id;
    app.logout(Some(&token)).await.unwrap();
    let db = app.db().await;
    // A revocation whose token has long expired.
    db.execute(
        "INSERT INTO revoked_tokens (jti, user_id, expires_at) \
         VALUES (gen_random_uuid(), $1::text::uuid, now() - interval '1 minute')",
        &[&user_id],
    )
    .await
    .unwrap();
    test_kit::wait_until(
        "the expired revocation deleted",
        Duration::from_secs(10),
        || async {
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM revoked_tokens WHERE expires_at < now()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        },
    )
    .await;
    let live: i64 = db
        .query_one("SELECT count(*) FROM revoked_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 1, "the logout's revocation is still needed");
    refused_with(app.validate(&token).await, "TOKEN_REVOKED");
    app.stop().await;
}

#[tokio::test]
async fn token_lifetime_is_configurable() {
    let db_url = test_kit::Stack::from_env().fresh_database("auth").await;
    let app = spawn_app_on(&db_url, &["--token-ttl", "5m"]).await;
    let res = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let ttl = res.expire_time.unwrap().seconds - now_secs() as i64;
    assert!((295..=305).contains(&ttl), "{ttl}");
    let v = app.validate(&res.token).await.unwrap();
    assert_eq!(v.expire_time, res.expire_time);
    app.stop().await;
}
