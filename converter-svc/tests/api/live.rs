//! Converting a video while it is uploaded: the converter takes the job on
//! `UploadStarted`, follows the chunks as they land, and the commit hands the
//! job to it; containers that cannot be decoded front to back, and uploads
//! that abort, fall back or leave nothing.

use crate::helpers::*;
use media_store::JobState;
use std::time::Duration;

/// 6 s of lossless 640×360 H.264 (about 3 MB): a dozen GridFS chunks.
const CLIP: &str = "-f lavfi -i testsrc2=duration=6:size=640x360:rate=25 -f lavfi -i sine=frequency=440:duration=6 -shortest -c:v libx264 -preset ultrafast -qp 0 -c:a aac";

/// Whether a converter holds a live claim on the upload.
async fn leased(env: &Env, id: media_store::mongodb::bson::oid::ObjectId) -> bool {
    env.jobs
        .get(id)
        .await
        .unwrap()
        .is_some_and(|j| j.live_holder.is_some())
}

#[tokio::test]
async fn uploads_that_decode_front_to_back_are_converted_as_they_arrive() {
    let env = Env::new().await;
    let conv = env.start().await;
    for (name, extra) in [("live.mkv", ""), ("faststart.mp4", " -movflags +faststart")] {
        let clip = env.clip(name, &format!("{CLIP}{extra}"));
        let bytes = std::fs::read(&clip).unwrap();
        assert!(
            bytes.len() > 4 * 255 * 1024,
            "{name}: {} bytes",
            bytes.len()
        );

        let mut up = env.begin_upload(name).await;
        let id = up.id;
        up.write_paced(&bytes[..bytes.len() / 2], 4, Duration::from_millis(150))
            .await;
        test_kit::wait_until(
            "a converter takes the upload",
            Duration::from_secs(10),
            || async { leased(&env, id).await.then_some(()) },
        )
        .await;
        up.write_paced(&bytes[bytes.len() / 2..], 4, Duration::from_millis(150))
            .await;
        let committed = env.commit(up).await;
        // Handed over at the commit, not queued: it was being converted.
        assert_eq!(committed.state, JobState::Converting, "{name}");
        assert!(committed.lease_holder.is_some(), "{name}");

        // Done by the live conversion, and announced once: the job's own
        // event then meets a finished, announced job and says nothing more.
        let events = env.events(1, Duration::from_secs(60)).await;
        let Outcome::Ready(ready) = &events[0] else {
            panic!("{name}: {events:?}")
        };
        assert_eq!(ready.job_id, id.to_hex());
        env.video_events_settled(Duration::from_secs(60)).await;
        let again = env.drain(&env.mp3_queue).await;
        assert!(again.is_empty(), "{name}: announced twice: {again:?}");
        let mp3 = env.fetch_mp3(&ready.mp3_id).await;
        let (format, duration) = probe(&mp3);
        assert_eq!(format, "mp3");
        assert!(
            (duration - source_duration(&clip)).abs() < 0.3,
            "{name}: {duration} s"
        );
        assert_eq!(env.job(id).await.state, JobState::Done);
        assert_eq!(env.mp3_count(Some(id)).await, 1);
    }
    conv.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_mp4_with_its_index_at_the_end_is_converted_after_its_upload() {
    let env = Env::new().await;
    let conv = env.start().await;
    let clip = env.clip("late-index.mp4", CLIP);
    let bytes = std::fs::read(&clip).unwrap();
    let mut up = env.begin_upload("late-index.mp4").await;
    let id = up.id;
    // Whether or not a converter looked at it before the commit (it gives
    // such an upload back once it sees the first bytes; `plan_live` is
    // unit-tested), the job's own event converts it, once.
    up.write_paced(&bytes, 4, Duration::from_millis(100)).await;
    let committed = env.commit(up).await;
    assert!(
        matches!(committed.state, JobState::Queued | JobState::Converting),
        "{committed:?}"
    );
    let events = env.events(1, Duration::from_secs(60)).await;
    let Outcome::Ready(ready) = &events[0] else {
        panic!("{events:?}")
    };
    let (_, duration) = probe(&env.fetch_mp3(&ready.mp3_id).await);
    assert!(
        (duration - source_duration(&clip)).abs() < 0.3,
        "{duration} s"
    );
    assert_eq!(env.mp3_count(Some(id)).await, 1);
    conv.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_upload_that_aborts_takes_its_conversion_with_it() {
    let env = Env::new().await;
    let conv = env.start().await;
    let clip = env.clip("aborted.mkv", CLIP);
    let bytes = std::fs::read(&clip).unwrap();
    let mut up = env.begin_upload("aborted.mkv").await;
    let id = up.id;
    up.write_paced(&bytes[..bytes.len() * 3 / 4], 6, Duration::from_millis(100))
        .await;
    test_kit::wait_until("ffmpeg at work on it", Duration::from_secs(10), || async {
        (leased(&env, id).await && env.work_in_progress() == 1).then_some(())
    })
    .await;
    env.abort(up).await;

    test_kit::wait_until(
        "the conversion stopped",
        Duration::from_secs(15),
        || async { (env.work_in_progress() == 0).then_some(()) },
    )
    .await;
    assert_eq!(env.mp3_count(None).await, 0);
    assert_eq!(env.chunk_count("mp3s").await, 0, "no partial MP3");
    assert_eq!(env.video_chunk_count().await, 0);
    assert!(env.jobs.get(id).await.unwrap().is_none());
    assert!(!leased(&env, id).await, "the claim is dropped");
    // Nothing was announced, and nothing is.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(env.drain(&env.mp3_queue).await.is_empty());
    conv.stop().await;
    env.cleanup().await;
}
