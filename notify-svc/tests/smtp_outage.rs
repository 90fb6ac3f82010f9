#![allow(unreachable_pub, dead_code, clippy::unwrap_used)]

//! Mailpit stopped while events arrive, then started: every email arrives,
//! once. Its own test binary: cargo runs test binaries one at a time, so
//! stopping the stack's Mailpit cannot disturb other tests.

#[path = "api/helpers.rs"]
mod helpers;

use helpers::*;
use std::{path::PathBuf, process::Command, time::Duration};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stack(action: &str) {
    let out = Command::new(root().join("scripts/stack"))
        .args([action, "mailpit"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/stack {action} mailpit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stop_mailpit() {
    stack("stop");
}

fn start_mailpit() {
    stack("start");
}

struct Restart;
impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/stack"))
            .arg("up")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_queued_while_smtp_is_down_all_arrive_once() {
    // Retries spread over ~20 s: enough to ride out the outage below.
    let env = Env::new("1s,2s,4s,6s,8s").await;
    let n = env.start().await;
    let _restart = Restart;
    stop_mailpit();
    let owners: Vec<String> = (0..3).map(|_| Env::owner()).collect();
    for o in &owners {
        let ev = Env::ready(o);
        env.publish(&ev, &ev.event_id).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    start_mailpit();
    for o in &owners {
        env.emails(o, 1, Duration::from_secs(60)).await;
    }
    // Give any duplicate time to show up, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for o in &owners {
        assert_eq!(env.mailpit.messages_to(o).await.unwrap().len(), 1, "{o}");
    }
    n.stop().await;
    env.cleanup().await;
}
