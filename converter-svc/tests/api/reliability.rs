//! At-least-once delivery without double work: redeliveries, competing
//! instances, a converter killed mid-conversion, shutdown, poison messages.

use crate::helpers::*;
use std::{collections::HashMap, time::Duration};

const SHORT: &str = "-f lavfi -i testsrc=duration=2:size=64x48:rate=5 -f lavfi -i sine=frequency=440:duration=2 -shortest -c:v mpeg4 -c:a aac";
/// Long enough that ffmpeg is still running when we interfere: 40 minutes
/// of sound in 30 MB, about 6 s of ffmpeg's work (the read no longer holds
/// ffmpeg back, so size alone would not do).
const LONG: &str = "-f lavfi -i testsrc=duration=2400:size=32x24:rate=1 -f lavfi -i sine=frequency=440:duration=2400 -shortest -c:v mpeg4 -c:a flac";

#[tokio::test]
async fn a_redelivered_job_is_neither_converted_nor_announced_again() {
    let env = Env::new().await;
    let clip = env.clip("short.mkv", SHORT);
    let conv = env.start().await;
    let id = env.submit(&clip).await;
    let first = env.events(1, Duration::from_secs(60)).await;
    let Outcome::Ready(first) = &first[0] else {
        panic!("{first:?}")
    };

    // The same event again, as RabbitMQ may redeliver it (a converter that
    // died after the job was done, before its ack): the job is done and its
    // outcome went out with the transition, so nothing more happens.
    env.publish_uploaded(id, "short.mkv", 1).await;
    env.video_events_settled(Duration::from_secs(30)).await;
    let again = env.drain(&env.mp3_queue).await;
    assert!(again.is_empty(), "announced twice: {again:?}");
    assert_eq!(env.mp3_count(Some(id)).await, 1);
    let job = env.job(id).await;
    assert_eq!(job.mp3_id.map(|m| m.to_hex()), Some(first.mp3_id.clone()));
    let outcomes: Vec<_> = env
        .jobs
        .events()
        .await
        .unwrap()
        .into_iter()
        .filter(|(kind, _, _)| kind.ends_with("Mp3Ready"))
        .collect();
    assert_eq!(outcomes.len(), 1, "one outcome written: {outcomes:?}");
    assert_eq!(outcomes[0].1, first.event_id);
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
    for &id in &ids {
        assert_eq!(env.mp3_count(Some(id)).await, 1);
    }
    // Their sources go after the acks, in batches: every one, chunks too,
    // and each job says so.
    test_kit::wait_until("every source deleted", Duration::from_secs(30), || async {
        for &id in &ids {
            if env.video_stored(id).await || !env.job(id).await.source_deleted {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_eq!(
        env.video_chunk_count().await,
        0,
        "chunks of deleted sources left"
    );
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
    let killed = std::time::Instant::now();
    let work_dirs = || {
        std::fs::read_dir(env.work.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("converter-"))
            .count()
    };
    assert_eq!(work_dirs(), 1, "the victim left its work directory");

    let survivor = env.start().await;
    assert_eq!(
        work_dirs(),
        1,
        "the survivor removed the dead one's, made its own"
    );
    let events = env.events(1, Duration::from_secs(120)).await;
    let Outcome::Ready(ready) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(ready.job_id, id.to_hex());
    assert_eq!(env.mp3_count(Some(id)).await, 1);
    assert_eq!(env.job(id).await.state, media_store::JobState::Done);
    // About one lease (3 s here) plus the conversion itself.
    println!("recovered {:?} after the SIGKILL", killed.elapsed());
    survivor.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_leased_elsewhere_waits_for_the_lease_without_spending_retries() {
    let env = Env::new().await;
    let clip = env.clip("short.mkv", SHORT);
    let id = env.store_video(&clip, Default::default()).await;
    // Another converter holds it, alive as far as anyone can tell (its
    // connection dropped and the broker redelivered to us).
    let until = std::time::SystemTime::now() + Duration::from_secs(6);
    env.sql(
        "UPDATE jobs SET state = 'converting', lease_holder = 'another-converter', \
         lease_until = $2 WHERE id = $1",
        &[&id.to_hex(), &until],
    )
    .await;
    // A retry budget far shorter than the lease: waiting must not spend it.
    let conv = env
        .start_with(&[
            "--amqp-retry-delays",
            "300ms,1s,2s,3s",
            "--amqp-delivery-limit",
            "5",
        ])
        .await;
    let t = std::time::Instant::now();
    env.publish_uploaded(id, "short.mkv", 1).await;
    let events = env.events(1, Duration::from_secs(60)).await;
    assert!(
        matches!(&events[0], Outcome::Ready(r) if r.job_id == id.to_hex()),
        "converted once the lease ran out, never failed: {events:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_secs(5),
        "not before the lease ran out: {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "soon after it: {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        env.drain(&env.mp3_queue).await.is_empty(),
        "one outcome only"
    );
    assert_eq!(env.job(id).await.state, media_store::JobState::Done);
    conv.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn dead_letters_are_listed_without_being_taken_and_replayed() {
    let env = Env::new().await;
    let clip = env.clip("short.mkv", SHORT);
    let id = env.store_video(&clip, Default::default()).await;
    // A VideoUploaded that ended in the dead-letter queue (say its retries ran
    // out while MongoDB was down).
    let dlq = format!("{}.dlq", env.video_queue);
    env.publish_uploaded_to(&dlq, id, "short.mkv", 1).await;
    let url = svc_kit::config::Secret::new(env.stack.amqp_url.clone());
    let letters = amqp_kit::dlq::list(&url, &dlq, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].message_id.as_deref(),
        Some(format!("video-{}", id.to_hex()).as_str())
    );

    // The operator's command decodes it, and leaves it there.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_converter-svc"))
        .args(&env.args()[1..])
        .args(["dlq", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&id.to_hex()) && text.contains("VideoUploaded"),
        "{text}"
    );
    assert_eq!(amqp_kit::dlq::list(&url, &dlq, 10).await.unwrap().len(), 1);

    let conv = env.start().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_converter-svc"))
        .args(&env.args()[1..])
        .args(["dlq", "replay", "--all"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 1"));
    let events = env.events(1, Duration::from_secs(60)).await;
    assert!(
        matches!(&events[0], Outcome::Ready(r) if r.job_id == id.to_hex()),
        "{events:?}"
    );
    assert!(
        amqp_kit::dlq::list(&url, &dlq, 10)
            .await
            .unwrap()
            .is_empty()
    );
    conv.stop().await;
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
