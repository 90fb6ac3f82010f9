use crate::helpers::*;
use tonic::Code;

#[tokio::test]
async fn only_admins_create_users() {
    let app = spawn_app().await;
    let s = assert_code(
        app.create_user(None, "new@example.com", "new password", false)
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s).as_deref(), Some("TOKEN_MISSING"));

    let s = assert_code(
        app.create_user(Some("garbage"), "new@example.com", "new password", false)
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s).as_deref(), Some("TOKEN_MALFORMED"));

    let email = app.new_user("user password").await;
    let user_token = app.login(&email, "user password").await.unwrap().token;
    let s = assert_code(
        app.create_user(Some(&user_token), "new@example.com", "new password", false)
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&s).as_deref(), Some("ADMIN_REQUIRED"));

    let admin = app.admin_token().await;
    let user = app
        .create_user(Some(&admin), "  New@Example.com ", "new password", true)
        .await
        .unwrap();
    assert_eq!(user.email, "new@example.com", "stored normalised");
    assert!(user.admin);
    assert!(app.login("new@example.com", "new password").await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn emails_are_unique_regardless_of_case() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(Some(&admin), "dup@example.com", "password one", false)
        .await
        .unwrap();
    assert_code(
        app.create_user(Some(&admin), "DUP@example.COM", "password two", false)
            .await,
        Code::AlreadyExists,
    );
    app.stop().await;
}

#[tokio::test]
async fn weak_or_invalid_new_users_are_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let s = assert_code(
        app.create_user(Some(&admin), "weak@example.com", "short", false)
            .await,
        Code::InvalidArgument,
    );
    assert!(s.message().contains("at least 8"), "{}", s.message());
    assert_code(
        app.create_user(Some(&admin), "nope", "long enough pw", false)
            .await,
        Code::InvalidArgument,
    );
    app.stop().await;
}

#[tokio::test]
async fn passwords_are_stored_as_argon2id_hashes() {
    let app = spawn_app().await;
    let email = app.new_user("visible password").await;
    let (client, conn) = tokio_postgres::connect(&app.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT password_hash FROM users WHERE email = $1",
            &[&email],
        )
        .await
        .unwrap();
    let hash: String = row.get(0);
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains("visible password"));
    app.stop().await;
}
