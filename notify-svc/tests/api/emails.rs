use crate::helpers::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn mp3_ready_sends_one_email_with_the_id_and_the_download_command() {
    let env = Env::new("300ms,1s,2s").await;
    let n = env.start().await;
    let owner = Env::owner();
    let ev = Env::ready(&owner);
    env.publish(&ev, &ev.event_id).await;
    let mails = env.emails(&owner, 1, T).await;
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].subject.contains("Your MP3 is ready"),
        "{}",
        mails[0].subject
    );
    let msg = env.mailpit.message(&mails[0].id).await.unwrap();
    assert!(msg.text.contains(&ev.mp3_id), "{}", msg.text);
    let url = format!("http://mp3converter.test:8080/download?fid={}", ev.mp3_id);
    assert!(
        msg.text.contains(&format!(
            "curl --fail --output 'holiday.mp3' -X GET -H \"Authorization: Bearer $TOKEN\" \"{url}\""
        )),
        "{}",
        msg.text
    );
    assert!(
        msg.html.contains(&ev.mp3_id) && msg.html.contains("<a href="),
        "{}",
        msg.html
    );
    n.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn conversion_failed_sends_the_reason_in_plain_words() {
    let env = Env::new("300ms,1s,2s").await;
    let n = env.start().await;
    let owner = Env::owner();
    let ev = Env::failed(
        &owner,
        "the video has no audio track, so there is nothing to put in an MP3",
    );
    env.publish(&ev, &ev.event_id).await;
    let mails = env.emails(&owner, 1, T).await;
    let msg = env.mailpit.message(&mails[0].id).await.unwrap();
    assert!(mails[0].subject.contains("could not convert holiday.mkv"));
    assert!(
        msg.text.contains("the video has no audio track"),
        "{}",
        msg.text
    );
    n.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_same_event_twice_sends_one_email() {
    let env = Env::new("300ms,1s,2s").await;
    let n = env.start().await;
    let owner = Env::owner();
    let ev = Env::ready(&owner);
    env.publish(&ev, &ev.event_id).await;
    env.publish(&ev, &ev.event_id).await;
    // A sentinel behind them: once its email is there, both copies were
    // handled (one consumer, one message at a time, in order).
    let sentinel_owner = Env::owner();
    let sentinel = Env::ready(&sentinel_owner);
    env.publish(&sentinel, &sentinel.event_id).await;
    env.emails(&sentinel_owner, 1, T).await;
    let mails = env.mailpit.messages_to(&owner).await.unwrap();
    assert_eq!(mails.len(), 1, "{mails:?}");
    // Every copy is answered with a receipt (the first one may have been
    // lost on its way to the gateway); the receipt id dedupes them there.
    // Taken as they come (the sentinel's may follow its email).
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while all.len() < 3 && tokio::time::Instant::now() < deadline {
        all.extend(env.receipts().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(all.len(), 3, "{all:?}");
    let of_ev: Vec<_> = all.iter().filter(|r| r.job_id == ev.job_id).collect();
    assert_eq!(of_ev.len(), 2, "{all:?}");
    assert!(
        of_ev.iter().all(|r| r.outcome_event_id == ev.event_id
            && r.event_id == format!("notified-{}", ev.event_id)),
        "{all:?}"
    );
    let mut results: Vec<&str> = of_ev.iter().map(|r| r.result.as_str()).collect();
    results.sort_unstable();
    assert_eq!(results, ["already", "sent"]);
    n.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_malformed_event_is_dead_lettered_and_the_consumer_goes_on() {
    let env = Env::new("300ms,1s,2s").await;
    let n = env.start().await;
    env.publish_raw(
        "mp3converter.events.v1.Mp3Ready",
        b"\xff\xff\xff not protobuf",
    )
    .await;
    env.publish_raw("something.Else", b"{}").await;
    let owner = Env::owner();
    let ev = Env::ready(&owner);
    env.publish(&ev, &ev.event_id).await;
    env.emails(&owner, 1, T).await;
    let conn = amqp_kit::connect(
        &svc_kit::config::Secret::new(env.stack.amqp_url.clone()),
        "dlq",
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dlq = ch
        .queue_declare(
            format!("{}.dlq", env.queue).as_str().into(),
            amqp_kit::lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(dlq.message_count(), 2);
    n.stop().await;
    env.cleanup().await;
}
