//! SMTP refusals against a real Mailpit: our credentials refused is retried
//! (and a rotated password file picked up), a refused recipient is given up
//! on at once.

use crate::{helpers::*, private_mailpit::PrivateMailpit};
use std::{path::Path, time::Duration};

const T: Duration = Duration::from_secs(30);
const FAILURES: &str = "mp3converter_smtp_failures_total";
const EMAILS: &str = "mp3converter_emails_total";

/// Replaces the file at once, as a Kubernetes Secret volume does.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_retried_until_the_rotated_one_is_read() {
    let mailpit = PrivateMailpit::start(Some(("notify", "right-password")), &[]).await;
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("password");
    write_atomically(&password_file, "wrong-password\n");

    // Retries spread over ~25 s: time to see them fail, then rotate.
    let env = Env::new("1s,2s,2s,4s,8s,8s").await;
    let port = mailpit.smtp_port.to_string();
    let n = env
        .start_with(&[
            "--smtp-port",
            &port,
            "--smtp-username",
            "notify",
            "--smtp-password-file",
            password_file.to_str().unwrap(),
        ])
        .await;
    let auth_before = n.counter(FAILURES, &[("class", "auth")]).await;
    let retry = [("kind", "mp3_ready"), ("outcome", "retry")];
    let retries_before = n.counter(EMAILS, &retry).await;
    let owner = Env::owner();
    let ev = Env::ready(&owner);
    env.publish(&ev, &ev.event_id).await;

    // Refused, counted, and retried: nothing recorded as sent or rejected.
    test_kit::wait_until("an authentication failure", T, || async {
        (n.counter(FAILURES, &[("class", "auth")]).await > auth_before).then_some(())
    })
    .await;
    test_kit::wait_until("a retry", T, || async {
        (n.counter(EMAILS, &retry).await > retries_before).then_some(())
    })
    .await;
    assert!(mailpit.api.messages_to(&owner).await.unwrap().is_empty());
    assert_eq!(env.sent_log(&ev.event_id).await, None);
    assert!(
        env.receipts().await.is_empty(),
        "a receipt before any email"
    );

    // The Secret is rotated: the next attempt reads the file again.
    write_atomically(&password_file, "right-password\n");
    env_emails_once(&mailpit, &owner).await;
    let (outcome, _) = env.sent_log(&ev.event_id).await.unwrap();
    assert_eq!(outcome, "sent");
    assert_eq!(env.parked_messages().await, 0);
    let receipts = env.receipts().await;
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    assert_eq!(
        (receipts[0].job_id.as_str(), receipts[0].result.as_str()),
        (ev.job_id.as_str(), "sent")
    );
    n.stop().await;
    env.cleanup().await;
}

/// Waits for the email to `owner`, then makes sure no second one follows.
async fn env_emails_once(mailpit: &PrivateMailpit, owner: &str) {
    test_kit::wait_until(&format!("an email to {owner}"), T, || async {
        let m = mailpit.api.messages_to(owner).await.ok()?;
        (!m.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = mailpit.api.messages_to(owner).await.unwrap();
    assert_eq!(mails.len(), 1, "{mails:?}");
}

#[tokio::test]
async fn a_refused_recipient_is_given_up_on_at_once() {
    // Mailpit answers RCPT TO with "550 5.1.0 ... mailbox unavailable" for
    // anyone else.
    let mailpit =
        PrivateMailpit::start(None, &["--smtp-allowed-recipients", r"@example\.com$"]).await;
    let env = Env::new("500ms,1s,2s").await;
    let port = mailpit.smtp_port.to_string();
    let n = env.start_with(&["--smtp-port", &port]).await;
    let rejected_before = n.counter(FAILURES, &[("class", "recipient")]).await;

    let refused = format!("{}@refused.example", test_kit::unique_name("nobody"));
    let ev = Env::ready(&refused);
    env.publish(&ev, &ev.event_id).await;
    let owner = Env::owner();
    let sentinel = Env::ready(&owner);
    env.publish(&sentinel, &sentinel.event_id).await;
    env_emails_once(&mailpit, &owner).await;

    let (outcome, detail) = test_kit::wait_until("the refusal in the sent-log", T, || {
        env.sent_log(&ev.event_id)
    })
    .await;
    assert_eq!(outcome, "rejected");
    let detail = detail.unwrap();
    assert!(
        detail.contains("RCPT TO") && detail.contains("5.1.0"),
        "{detail}"
    );
    // Past the first retry's delay: one SMTP attempt, nothing waiting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rejected = n.counter(FAILURES, &[("class", "recipient")]).await - rejected_before;
    assert_eq!(rejected, 1.0);
    assert_eq!(env.parked_messages().await, 0);
    // Refused for good still settles the job: its receipt says so.
    let mut receipts: Vec<_> = env
        .receipts()
        .await
        .into_iter()
        .map(|r| (r.job_id, r.result))
        .collect();
    receipts.sort();
    let mut want = vec![
        (ev.job_id.clone(), "rejected".to_owned()),
        (sentinel.job_id.clone(), "sent".to_owned()),
    ];
    want.sort();
    assert_eq!(receipts, want);
    n.stop().await;
    env.cleanup().await;
}
