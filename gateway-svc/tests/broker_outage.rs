#![allow(unreachable_pub, dead_code, clippy::unwrap_used)]

//! The RabbitMQ publisher against a real broker stop and start. Its own test
//! binary: cargo runs test binaries one at a time, so stopping the stack's
//! broker here cannot disturb any other test.

#[path = "api/helpers.rs"]
mod helpers;

use helpers::*;
use std::{path::PathBuf, process::Command, time::Duration};

fn stack(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/stack {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn upload(app: &TestApp, user: &User) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/upload"))
        .bearer_auth(&user.token)
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(random_bytes(512 << 10)).file_name("v.mkv"),
        ))
        .send()
        .await
        .unwrap()
}

/// Whatever happens, leave the broker running for the tests after us.
struct StartOnDrop;
impl Drop for StartOnDrop {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack");
        let _ = Command::new(script).arg("up").output();
    }
}

// One test, scenarios in sequence: stopping the broker must not overlap
// anything else that uses it.
#[tokio::test]
async fn the_publisher_survives_a_broker_restart_and_idle_heartbeats() {
    idling_past_the_heartbeat().await;
    broker_restart_keeps_uploads_in_the_outbox_until_it_is_back().await;
}

async fn broker_restart_keeps_uploads_in_the_outbox_until_it_is_back() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    assert_eq!(upload(&app, &user).await.status(), 200);
    app.wait_queued(1).await;

    let _guard = StartOnDrop;
    // The whole node, not stop_app/start_app: on RabbitMQ 3.10 the latter can
    // leave the at-least-once dead-letter supervisor dead, and every quorum
    // queue declared afterwards crashes.
    stack(&["rabbitmqctl", "stop"]);
    // Accepted all the same: the job and its event commit together, and the
    // event waits in the outbox.
    let res = upload(&app, &user).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(app.job_count().await, 2);
    test_kit::wait_until(
        "NOT_SERVING while the broker is down",
        Duration::from_secs(15),
        || async {
            let r = reqwest::get(format!("http://{}/readyz", app.admin))
                .await
                .ok()?;
            (r.status() == 503).then_some(())
        },
    )
    .await;
    let events = app.jobs.events().await.unwrap();
    assert_eq!(
        events.iter().filter(|(_, _, sent)| !*sent).count(),
        1,
        "the second event waits: {events:?}"
    );

    stack(&["up"]);
    // The relay publishes it once the broker is back, without a restart.
    test_kit::wait_until(
        "the waiting event to go out",
        Duration::from_secs(60),
        || async { (app.queued_messages().await == 2).then_some(()) },
    )
    .await;
    assert_eq!(upload(&app, &user).await.status(), 200);
    app.wait_queued(3).await;
    app.stop().await;
    auth.stop().await;
}

async fn idling_past_the_heartbeat() {
    let auth = Auth::start().await;
    let stack = test_kit::Stack::from_env();
    // A 1 s heartbeat: idling 5 s would kill a connection that does not
    // answer heartbeats.
    let sep = if stack.amqp_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}heartbeat=1", stack.amqp_url);
    let app = spawn_app_with(&auth, &["--amqp-url", &url]).await;
    let user = app.user().await;
    assert_eq!(upload(&app, &user).await.status(), 200);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(upload(&app, &user).await.status(), 200);
    app.wait_queued(2).await;
    app.stop().await;
    auth.stop().await;
}
