//! At-least-once delivery without double work: redeliveries, competing
//! instances, a converter killed mid-conversion, shutdown, poison messages.

use crate::helpers::*;
use std::{collections::HashMap, time::Duration};

const SHORT: &str = "-f lavfi -i testsrc=duration=2:size=64x48:rate=5 -f lavfi -i sine=frequency=440:duration=2 -shortest -c:v mpeg4 -c:a aac";
/// Long enough that ffmpeg is still running when we interfere.
const LONG: &str = "-f lavfi -i testsrc=duration=900:size=32x24:rate=1 -f lavfi -i sine=frequency=440:duration=900 -shortest -c:v mpeg4 -c:a pcm_s16le";

#[tokio::test]
async fn a_redelivered_job_is_announced_again_not_converted_again() {
    let env = Env::new().await;
    let clip = env.clip("short.mkv", SHORT);
    let conv = env.start().await;
    let id = env.submit(&clip).await;
    let first = env.events(1, Duration::from_secs(60)).await;
    let Outcome::Ready(first) = &first[0] else {
        panic!("{first:?}")
    };

    // The same event again, as RabbitMQ may redeliver it.
    env.publish_uploaded(id, "short.mkv", 1).await;
    let again = env.events(1, Duration::from_secs(60)).await;
    let Outcome::Ready(again) = &again[0] else {
        panic!("{again:?}")
    };
    assert_eq!(again.mp3_id, first.mp3_id);
    assert_eq!(again.event_id, first.event_id, "same event id: one email");
    assert_eq!(env.mp3_count(Some(id)).await, 1);
    conv.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn two_instances_convert_each_of_twenty_jobs_exactly_once() {
    let env = Env::new().await;
    let clip = env.clip("short.mkv", SHORT);
    let (a, b) = (env.start().await, env.start().await);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(env.submit(&clip).await);
    }
    let events = env.events(20, Duration::from_secs(180)).await;
    let mut mp3_of: HashMap<String, String> = HashMap::new();
    for e in &events {
        let Outcome::Ready(r) = e else {
            panic!("{e:?}")
        };
        let prev = mp3_of.insert(r.job_id.clone(), r.mp3_id.clone());
        assert!(prev.is_none() || prev.as_deref() == Some(r.mp3_id.as_str()));
    }
    assert_eq!(mp3_of.len(), 20);
    assert_eq!(env.mp3_count(None).await, 20);
    for id in ids {
        assert_eq!(env.mp3_count(Some(id)).await, 1);
    }
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}

async fn wait_converting(env: &Env, id: media_store::mongodb::bson::oid::ObjectId) {
    test_kit::wait_until(
        "the job to be converting",
        Duration::from_secs(60),
        || async { (env.job(id).await.state == media_store::JobState::Converting).then_some(()) },
    )
    .await;
    // Past spooling, into ffmpeg.
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_converter_killed_mid_conversion_leaves_the_job_to_another() {
    let env = Env::new().await;
    let clip = env.clip("long.mkv", LONG);
    let mut victim = std::process::Command::new(env!("CARGO_BIN_EXE_converter-svc"))
        .args(&env.args()[1..])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let id = env.submit(&clip).await;
    wait_converting(&env, id).await;
    victim.kill().unwrap(); // SIGKILL: no cleanup, no nack
    victim.wait().unwrap();

    let survivor = env.start().await;
    let events = env.events(1, Duration::from_secs(120)).await;
    let Outcome::Ready(ready) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(ready.job_id, id.to_hex());
    assert_eq!(env.mp3_count(Some(id)).await, 1);
    assert_eq!(env.job(id).await.state, media_store::JobState::Done);
    survivor.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn shutdown_abandons_the_conversion_and_requeues_it() {
    let env = Env::new().await;
    let clip = env.clip("long.mkv", LONG);
    let first = env.start().await;
    let id = env.submit(&clip).await;
    wait_converting(&env, id).await;
    let t = std::time::Instant::now();
    first.stop().await; // grace is 2 s in these tests
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(env.job(id).await.state, media_store::JobState::Queued);
    assert_eq!(env.mp3_count(Some(id)).await, 0, "no partial MP3");

    let second = env.start().await;
    let events = env.events(1, Duration::from_secs(120)).await;
    assert!(
        matches!(&events[0], Outcome::Ready(r) if r.job_id == id.to_hex()),
        "{events:?}"
    );
    second.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_malformed_message_is_dead_lettered_and_work_goes_on() {
    let env = Env::new().await;
    let clip = env.clip("short.mkv", SHORT);
    let conv = env.start().await;
    env.publish_raw(b"\xff\xfe this is not protobuf").await;
    let id = env.submit(&clip).await;
    let events = env.events(1, Duration::from_secs(60)).await;
    assert!(matches!(&events[0], Outcome::Ready(r) if r.job_id == id.to_hex()));
    let dlq = format!("{}.dlq", env.video_queue);
    test_kit::wait_until(
        "the malformed message in the DLQ",
        Duration::from_secs(10),
        || async {
            let conn = amqp_kit::connect(
                &svc_kit::config::Secret::new(env.stack.amqp_url.clone()),
                "dlq",
            )
            .await
            .ok()?;
            let ch = conn.create_channel().await.ok()?;
            let msg = ch
                .basic_get(
                    dlq.as_str().into(),
                    amqp_kit::lapin::options::BasicGetOptions::default(),
                )
                .await
                .ok()??;
            Some(msg.delivery.data.clone())
        },
    )
    .await;
    conv.stop().await;
    env.cleanup().await;
}
