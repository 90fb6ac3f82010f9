//! Start-up, health, reflection, the database going away and coming back, and
//! the operator CLI.

use crate::helpers::*;
use auth_svc::app::App;
use std::{io::Write, path::PathBuf, process::Stdio, time::Duration};
use test_kit::{pg::PrivatePostgres, wait_until};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn serving(app: &TestApp, service: &str) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test]
async fn refuses_to_start_without_a_strong_secret() {
    let db = test_kit::Stack::from_env().fresh_database("auth").await;
    let mut cli = cli(&db, &[]);
    cli.config.jwt_secret = None;
    let err = App::build(cli.config.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no JWT signing secret"), "{err}");
    cli.config.jwt_secret = Some(svc_kit::config::Secret::new("only-20-bytes-secret"));
    let err = App::build(cli.config).await.unwrap_err().to_string();
    assert!(err.contains("at least 32"), "{err}");
}

#[tokio::test]
async fn secret_can_come_from_a_file() {
    let db = test_kit::Stack::from_env().fresh_database("auth").await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{SECRET}").unwrap();
    let mut cli = cli(&db, &[]);
    cli.config.jwt_secret = None;
    cli.config.jwt_secret_file = Some(file.path().to_owned());
    let app = App::build(cli.config).await.unwrap();
    drop(app);
}

// Runs grpcurl/curl as a blocking child process: a second worker thread
// keeps the in-process server answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_work_without_proto_files() {
    let app = spawn_app().await;
    assert_eq!(serving(&app, "").await, SERVING);
    assert_eq!(
        serving(&app, "mp3converter.auth.v1.AuthService").await,
        SERVING
    );

    // grpcurl 1.8.6 (the stack's) speaks reflection v1alpha only.
    let grpcurl = workspace_root().join(".tools/bin/grpcurl");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&grpcurl)
            .arg("-plaintext")
            .args(args)
            .output()
            .expect("grpcurl from `scripts/stack up` in .tools/bin");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let addr = app.addr.to_string();
    let list = run(&[&addr, "list"]);
    assert!(list.contains("mp3converter.auth.v1.AuthService"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");
    let desc = run(&[&addr, "describe", "mp3converter.auth.v1.AuthService"]);
    assert!(desc.contains("rpc Login"), "{desc}");
    let body = format!(r#"{{"email":"{ADMIN_EMAIL}","password":"{ADMIN_PASSWORD}"}}"#);
    let login = run(&["-d", &body, &addr, "mp3converter.auth.v1.AuthService/Login"]);
    assert!(login.contains("\"token\""), "{login}");

    // The admin listener answers probes and metrics.
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("http://{}/readyz", app.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = http
        .get(format!("http://{}/metrics", app.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mp3converter_auth_logins_total"),
        "{metrics}"
    );
    app.stop().await;
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn database_outage_is_unavailable_and_the_service_recovers_by_itself() {
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    let app = spawn_app_on(&pg.url(), &[]).await;
    let email = app.new_user("outage password").await;
    let token = app.login(&email, "outage password").await.unwrap().token;

    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();

    // Down: UNAVAILABLE, not UNAUTHENTICATED, and NOT_SERVING.
    let s = assert_code(
        app.login(&email, "outage password").await,
        Code::Unavailable,
    );
    assert!(
        !s.message().contains("postgres://"),
        "leaks internals: {}",
        s.message()
    );
    wait_until("NOT_SERVING", PrivatePostgres::NOTICE, || async {
        (serving(&app, "").await == NOT_SERVING).then_some(())
    })
    .await;
    // A token that fails its own checks is refused without the database;
    // a good one cannot be checked for revocation, so it is not passed:
    // UNAVAILABLE (fail closed), never valid and never UNAUTHENTICATED.
    assert_code(app.validate("x").await, Code::Unauthenticated);
    assert_code(app.validate(&token).await, Code::Unavailable);

    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();

    // Back: logins succeed and health recovers, with no restart.
    wait_until("login after restart", PrivatePostgres::NOTICE, || async {
        app.login(&email, "outage password").await.ok()
    })
    .await;
    wait_until("SERVING", PrivatePostgres::NOTICE, || async {
        (serving(&app, "").await == SERVING).then_some(())
    })
    .await;
    app.stop().await;
    drop(pg);
}

// Runs grpcurl/curl as a blocking child process: a second worker thread
// keeps the in-process server answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_adds_a_user_who_can_log_in() {
    let app = spawn_app().await;
    let email = format!("{}@example.com", test_kit::unique_name("cli"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auth-svc"))
        .args([
            "user",
            "add",
            "--email",
            &email,
            "--password-stdin",
            "--admin",
        ])
        .env("DATABASE_URL", &app.db_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cli password 123\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap();
    assert!(uuid::Uuid::parse_str(id.trim()).is_ok(), "{id}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("cli password"),
        "password logged"
    );

    let res = app.login(&email, "cli password 123").await.unwrap();
    let v = app
        .client
        .clone()
        .validate(mp3converter_proto::auth::v1::ValidateRequest { token: res.token })
        .await
        .unwrap()
        .into_inner();
    assert!(v.admin);
    app.stop().await;
}

/// Runs `auth-svc user <args>` against the app's database; its stdout.
fn run_cli(app: &TestApp, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auth-svc"))
        .arg("user")
        .args(args)
        .env("DATABASE_URL", &app.db_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_disables_and_enables_a_user() {
    let app = spawn_app().await;
    let email = app.new_user("cli disable pw").await;
    let token = app.login(&email, "cli disable pw").await.unwrap().token;
    let user_id = app.validate(&token).await.unwrap().user_id;

    let out = run_cli(&app, &["disable", "--email", &email.to_uppercase()]).unwrap();
    assert_eq!(out.trim(), user_id);
    let s = assert_code(app.validate(&token).await, Code::Unauthenticated);
    assert_eq!(reason(&s).as_deref(), Some("USER_DISABLED"));
    assert_code(
        app.login(&email, "cli disable pw").await,
        Code::Unauthenticated,
    );

    run_cli(&app, &["enable", "--email", &email]).unwrap();
    assert!(app.login(&email, "cli disable pw").await.is_ok());

    let err = run_cli(&app, &["disable", "--email", "nobody@example.com"]).unwrap_err();
    assert!(err.contains("no user has the email"), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn stops_on_cancel_within_the_grace_period() {
    let app = spawn_app().await;
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(started.elapsed() < Duration::from_secs(10));
}
