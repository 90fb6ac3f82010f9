//! Holding up under abuse: login rate limits (failures per address, per
//! account and address, per account), the trusted-proxy client address, and
//! the bounded password-hashing queue.

use crate::helpers::*;
use mp3converter_proto::auth::v1::{LoginRequest, auth_service_client::AuthServiceClient};
use std::time::{Duration, Instant};
use tonic::{Code, Request, Status, transport::Channel};

async fn login_via(
    client: &AuthServiceClient<Channel>,
    named: Option<&str>,
    email: &str,
    password: &str,
) -> Result<(), Status> {
    let mut req = Request::new(LoginRequest {
        email: email.into(),
        password: password.into(),
    });
    if let Some(addr) = named {
        req.metadata_mut()
            .insert("x-client-addr", addr.parse().unwrap());
    }
    client.clone().login(req).await.map(drop)
}

/// Asserts the rate-limit answer: RESOURCE_EXHAUSTED, a message with the
/// delay, and RetryInfo with the same delay (at most `max`).
fn assert_limited(res: Result<(), Status>, max: Duration) {
    let s = assert_code(res, Code::ResourceExhausted);
    assert_eq!(reason(&s).as_deref(), Some("LOGIN_RATE_LIMITED"));
    let delay = retry_delay(&s).expect("a RetryInfo detail");
    assert!(
        delay >= Duration::from_secs(1) && delay <= max,
        "retry delay {delay:?}"
    );
    assert_eq!(
        s.message(),
        format!("too many login attempts; retry in {} s", delay.as_secs())
    );
}

fn unauthenticated(res: Result<(), Status>) {
    assert_code(res, Code::Unauthenticated);
}

#[tokio::test]
async fn logins_are_limited_per_client_address() {
    let db_url = test_kit::Stack::from_env().fresh_database("auth").await;
    // Nobody trusted: every peer is counted by its own address.
    let app = spawn_app_on(
        &db_url,
        &[
            "--login-limit-per-addr",
            "3/1m",
            "--trusted-proxies",
            "none",
        ],
    )
    .await;
    let a = app.client_from("127.0.0.1").await;
    let b = app.client_from("127.0.0.2").await;
    // Different accounts each time: this is the address's limit.
    for i in 0..3 {
        unauthenticated(login_via(&a, None, &format!("u{i}@example.com"), "guess").await);
    }
    // Refused, after being held for the refusal delay (1 s): a client
    // that does not wait for its RetryInfo cannot spin.
    let t = Instant::now();
    assert_limited(
        login_via(&a, None, "u9@example.com", "guess").await,
        Duration::from_secs(20),
    );
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    // Even the right password, from that address; and naming another
    // address does not help an untrusted peer.
    assert_limited(
        login_via(&a, None, ADMIN_EMAIL, ADMIN_PASSWORD).await,
        Duration::from_secs(20),
    );
    assert_limited(
        login_via(&a, Some("198.51.100.1"), ADMIN_EMAIL, ADMIN_PASSWORD).await,
        Duration::from_secs(20),
    );
    // Another address is not affected.
    login_via(&b, None, ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_no_one_else_can() {
    let db_url = test_kit::Stack::from_env().fresh_database("auth").await;
    let app = spawn_app_on(
        &db_url,
        &[
            "--login-limit-per-addr",
            "2/1m",
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
    )
    .await;
    let proxy = app.client_from("127.0.0.1").await;
    let other = app.client_from("127.0.0.3").await;

    // From the proxy, each named client has its own budget.
    for _ in 0..2 {
        unauthenticated(login_via(&proxy, Some("198.51.100.7"), "x@example.com", "guess").await);
    }
    assert_limited(
        login_via(&proxy, Some("198.51.100.7"), "x@example.com", "guess").await,
        Duration::from_secs(30),
    );
    // (with or without a port, the same client)
    assert_limited(
        login_via(&proxy, Some("198.51.100.7:4444"), "x@example.com", "guess").await,
        Duration::from_secs(30),
    );
    login_via(&proxy, Some("198.51.100.8"), ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .unwrap();
    // The proxy calling for itself (naming no one) is counted by its own
    // address like anyone: successes never count, failures do.
    for _ in 0..5 {
        login_via(&proxy, None, ADMIN_EMAIL, ADMIN_PASSWORD)
            .await
            .unwrap();
    }
    for _ in 0..2 {
        unauthenticated(login_via(&proxy, None, "x@example.com", "guess").await);
    }
    assert_limited(
        login_via(&proxy, None, "x@example.com", "guess").await,
        Duration::from_secs(30),
    );

    // An untrusted peer's header is ignored: a new name each time does not
    // reset its budget.
    for i in 0..2 {
        unauthenticated(
            login_via(
                &other,
                Some(&format!("203.0.113.{i}")),
                "x@example.com",
                "guess",
            )
            .await,
        );
    }
    assert_limited(
        login_via(&other, Some("203.0.113.99"), "x@example.com", "guess").await,
        Duration::from_secs(30),
    );
    app.stop().await;
}

#[tokio::test]
async fn logins_are_limited_per_account_known_or_not() {
    let db_url = test_kit::Stack::from_env().fresh_database("auth").await;
    let app = spawn_app_on(&db_url, &["--login-limit-per-account", "2/1m"]).await;
    let email = app.new_user("account password").await;
    let proxy = app.client_from("127.0.0.1").await;
    // The owner logging in does not count.
    for _ in 0..4 {
        login_via(&proxy, Some("198.51.100.9"), &email, "account password")
            .await
            .unwrap();
    }

    // Two guesses from two addresses; the third from a third address is
    // refused, and then so is the right password (case does not matter).
    unauthenticated(login_via(&proxy, Some("198.51.100.1"), &email, "guess 1").await);
    unauthenticated(login_via(&proxy, Some("198.51.100.2"), &email, "guess 2").await);
    assert_limited(
        login_via(&proxy, Some("198.51.100.3"), &email, "guess 3").await,
        Duration::from_secs(30),
    );
    assert_limited(
        login_via(
            &proxy,
            Some("198.51.100.4"),
            &email.to_uppercase(),
            "account password",
        )
        .await,
        Duration::from_secs(30),
    );
    // An unknown email is limited the same way: no telling which exist.
    for _ in 0..2 {
        unauthenticated(login_via(&proxy, None, "nobody@example.com", "guess").await);
    }
    assert_limited(
        login_via(&proxy, None, "nobody@example.com", "guess").await,
        Duration::from_secs(30),
    );
    // Other accounts are not affected.
    login_via(&proxy, None, ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn change_password_counts_against_the_same_limits() {
    let db_url = test_kit::Stack::from_env().fresh_database("auth").await;
    let app = spawn_app_on(&db_url, &["--login-limit-per-account", "2/1m"]).await;
    let email = app.new_user("account password").await;
    let token = app.login(&email, "account password").await.unwrap().token;
    // The login was no failure; two wrong guesses through ChangePassword
    // spend the account's two.
    for _ in 0..2 {
        assert_code(
            app.change_password(&token, "guess", "new password 1").await,
            Code::Unauthenticated,
        );
    }
    let s = assert_code(
        app.change_password(&token, "account password", "new password 1")
            .await,
        Code::ResourceExhausted,
    );
    assert!(retry_delay(&s).is_some());
    app.stop().await;
}

#[tokio::test]
async fn the_owner_is_never_locked_out_by_logging_in_or_by_a_strangers_guesses() {
    let db_url = test_kit::Stack::from_env().fresh_database("auth").await;
    // The defaults: 10 failures a minute per address, 5 per account and
    // address, 50 an hour per account.
    let app = spawn_app_on(
        &db_url,
        &[
            "--login-limit-per-addr",
            "10/1m",
            "--login-limit-per-account-addr",
            "5/1m",
            "--login-limit-per-account",
            "50/1h",
        ],
    )
    .await;
    let email = app.new_user("account password").await;
    let proxy = app.client_from("127.0.0.1").await;
    let (owner, stranger) = (Some("198.51.100.1"), Some("203.0.113.1"));
    // Twenty logins in a row, far past any burst.
    for _ in 0..20 {
        login_via(&proxy, owner, &email, "account password")
            .await
            .unwrap();
    }
    // A stranger's five wrong guesses lock the stranger out of the
    // account, not the owner.
    for i in 0..5 {
        unauthenticated(login_via(&proxy, stranger, &email, &format!("guess {i}")).await);
    }
    assert_limited(
        login_via(&proxy, stranger, &email, "guess 5").await,
        Duration::from_secs(15),
    );
    login_via(&proxy, owner, &email, "account password")
        .await
        .unwrap();
    // The owner's own mistakes: four, a success that forgets them, four
    // more are still fine.
    for round in 0..2 {
        for _ in 0..4 {
            unauthenticated(login_via(&proxy, owner, &email, "typo").await);
        }
        if round == 0 {
            login_via(&proxy, owner, &email, "account password")
                .await
                .unwrap();
        }
    }
    login_via(&proxy, owner, &email, "account password")
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_hasher_answers_unavailable_quickly_and_recovers() {
    let db_url = test_kit::Stack::from_env().fresh_database("auth").await;
    // One slot, a costly hash, a short wait: most of a burst cannot be
    // served in time and must be told so, fast.
    let app = spawn_app_on(
        &db_url,
        &[
            "--argon2-max-concurrent",
            "1",
            "--argon2-queue-timeout",
            "200ms",
            "--argon2-memory-kib",
            "32768",
            "--argon2-iterations",
            "3",
        ],
    )
    .await;
    let started = Instant::now();
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let client = app.client.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let res = login_via(&client, None, &format!("f{i}@example.com"), "guess").await;
                (res, t.elapsed())
            })
        })
        .collect();
    let mut busy = 0;
    for call in calls {
        let (res, took) = call.await.unwrap();
        match res {
            Err(s) if s.code() == Code::Unavailable => {
                busy += 1;
                assert_eq!(reason(&s).as_deref(), Some("BUSY"), "{s:?}");
                assert!(s.message().contains("retry"), "{s:?}");
                assert!(retry_delay(&s).is_some(), "{s:?}");
                assert!(
                    took < Duration::from_secs(2),
                    "a busy answer took {took:?}: the wait is not bounded"
                );
            }
            Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
            Ok(()) => panic!("a wrong password was accepted"),
        }
    }
    assert!(
        busy > 0,
        "no call was refused: the hasher was never saturated"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // Nothing stays stuck: a valid login works afterwards.
    app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    app.stop().await;
}
