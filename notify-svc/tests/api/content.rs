//! What the emails say, as Mailpit receives them: user text stays text (the
//! download command, run by a shell, does only what it shows), and only what
//! is true is said.

use crate::helpers::*;
use mp3converter_proto::events::v1::FailureKind;
use std::time::Duration;
use test_kit::{
    mailpit::Message,
    shell::{email_commands, run_with_fake_curl},
};

const T: Duration = Duration::from_secs(20);

/// Video names an attacker would upload, the MP3 name the converter makes of
/// each (the stem + `.mp3`), and the `--output` name the email must use.
const HOSTILE: &[(&str, &str)] = &[
    ("$(touch INJECTED).mp3", "_touch_INJECTED_.mp3"),
    ("`touch INJECTED`.mp3", "_touch_INJECTED_.mp3"),
    ("it's \"quoted\".mp3", "it_s_quoted_.mp3"),
    ("a; touch INJECTED; b.mp3", "a_touch_INJECTED_b.mp3"),
    (
        "<script>alert(1)</script>.mp3",
        "_script_alert_1_script_.mp3",
    ),
    ("clip\u{202E}3pm.exe.mp3", "clip_3pm.exe.mp3"),
];

async fn email_to(env: &Env, owner: &str) -> Message {
    let mails = env.emails(owner, 1, T).await;
    env.mailpit.message(&mails[0].id).await.unwrap()
}

#[tokio::test]
async fn hostile_file_names_stay_text_in_the_ready_email() {
    let env = Env::new("300ms,1s,2s").await;
    let n = env.start().await;
    let mut sent = Vec::new();
    for (name, safe) in HOSTILE {
        let owner = Env::owner();
        let mut ev = Env::ready(&owner);
        ev.filename = (*name).into();
        env.publish(&ev, &ev.event_id).await;
        sent.push((owner, ev, *name, *safe));
    }
    for (owner, ev, name, safe) in sent {
        let msg = email_to(&env, &owner).await;
        let all = format!("{}\n{}\n{}", msg.subject, msg.text, msg.html);
        assert!(!all.contains('\u{202E}'), "{name:?}: {all}");
        assert!(!msg.html.contains("<script>"), "{}", msg.html);
        if name.starts_with("<script>") {
            let shown = "&lt;script&gt;alert(1)&lt;/script&gt;.mp3";
            assert!(msg.html.contains(shown), "{}", msg.html);
            assert!(msg.text.contains(name), "{}", msg.text);
        }

        let ran = run_with_fake_curl(&email_commands(&msg.text));
        let runs = &ran.curl_runs[..];
        assert!(!ran.injected(), "{name:?} ran: {}", msg.text);
        let url = format!("{BASE_URL}/download?fid={}", ev.mp3_id);
        assert_eq!(
            runs,
            [
                vec![
                    "--fail",
                    "-X",
                    "POST",
                    format!("{BASE_URL}/login").as_str(),
                    "-u",
                    owner.as_str()
                ],
                vec![
                    "--fail",
                    "--output",
                    safe,
                    "-X",
                    "GET",
                    "-H",
                    "Authorization: Bearer fake-token",
                    url.as_str()
                ],
            ],
            "{name:?}"
        );
        assert!(
            safe.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        );
    }
    n.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_owner_address_with_shell_characters_is_quoted() {
    let env = Env::new("300ms,1s,2s").await;
    let n = env.start().await;
    let owner = format!("o'brien$HOME{}@example.com", test_kit::unique_name("x"));
    let ev = Env::ready(&owner);
    env.publish(&ev, &ev.event_id).await;
    let msg = email_to(&env, &owner).await;
    let ran = run_with_fake_curl(&email_commands(&msg.text));
    let runs = &ran.curl_runs[..];
    assert!(!ran.injected());
    assert_eq!(runs[0][4..], ["-u".to_owned(), owner]);
    n.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_ready_email_names_the_deletion_date_only_when_there_is_one() {
    let env = Env::new("300ms,1s,2s").await;
    let n = env.start().await;
    let (kept, forever) = (Env::owner(), Env::owner());
    let mut ev = Env::ready(&kept);
    ev.expire_time = Some(prost_types::Timestamp {
        seconds: 1_796_738_759, // 2026-12-08 14:05:59 UTC
        nanos: 0,
    });
    env.publish(&ev, &ev.event_id).await;
    let ev = Env::ready(&forever);
    env.publish(&ev, &ev.event_id).await;

    let msg = email_to(&env, &kept).await;
    let said = "It will be deleted on 2026-12-08 14:05 (UTC)";
    assert!(msg.text.contains(said), "{}", msg.text);
    assert!(msg.html.contains(said), "{}", msg.html);
    let msg = email_to(&env, &forever).await;
    assert!(!msg.text.contains("deleted"), "{}", msg.text);
    assert!(!msg.html.contains("deleted"), "{}", msg.html);
    n.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_failure_email_says_nothing_was_kept_and_whose_problem_it_was_only_when_true() {
    let env = Env::new("300ms,1s,2s").await;
    let n = env.start().await;
    let cases = [
        (FailureKind::InvalidInput, true, "a video with sound"),
        (FailureKind::InvalidInput, false, "a video with sound"),
        (FailureKind::RetriesExhausted, true, "a problem on our side"),
        (FailureKind::TimedOut, false, "a problem on our side"),
    ];
    let mut sent = Vec::new();
    for (kind, deleted, advice) in cases {
        let owner = Env::owner();
        let mut ev = Env::failed(&owner, "it did not work");
        ev.kind = kind as i32;
        ev.source_deleted = deleted;
        env.publish(&ev, &ev.event_id).await;
        sent.push((owner, kind, deleted, advice));
    }
    for (owner, kind, deleted, advice) in sent {
        let msg = email_to(&env, &owner).await;
        for part in [&msg.text, &msg.html] {
            assert_eq!(
                part.contains("Nothing was kept."),
                deleted,
                "{kind:?}: {part}"
            );
            assert_eq!(part.contains("kept"), deleted, "{kind:?}: {part}");
            assert!(part.contains(advice), "{kind:?}: {part}");
        }
    }
    n.stop().await;
    env.cleanup().await;
}
