//! Every kind of input the issue names: the valid ones become MP3s of the same
//! length, the others fail with a reason the user can read.

use crate::helpers::*;
use std::time::Duration;

const AV: &str = "-f lavfi -i testsrc=duration=3:size=160x120:rate=10 -f lavfi -i sine=frequency=440:duration=3 -shortest";

#[tokio::test]
async fn valid_inputs_become_mp3s_of_the_same_length() {
    let env = Env::new().await;
    let clips = [
        env.clip(
            "h264_aac.mp4",
            &format!("{AV} -c:v libx264 -pix_fmt yuv420p -c:a aac -movflags +faststart"),
        ),
        env.clip(
            "mpeg4_vorbis.mkv",
            &format!("{AV} -c:v mpeg4 -c:a libvorbis"),
        ),
        env.clip(
            "vp9_opus.webm",
            &format!("{AV} -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -c:a libopus"),
        ),
        // ffmpeg's default for MOV: the moov atom after the media data; the
        // gateway keeps it at upload...
        env.clip(
            "moov_at_end.mov",
            &format!("{AV} -c:v libx264 -pix_fmt yuv420p -c:a aac"),
        ),
        // ...or, if it could not, the converter reads it back from the end.
        env.clip(
            "moov_at_end-no-kept-index.mp4",
            &format!("{AV} -c:v libx264 -pix_fmt yuv420p -c:a aac"),
        ),
    ];
    let conv = env.start().await;
    let mut jobs = Vec::new();
    for c in &clips {
        jobs.push((env.submit(c).await, c.clone()));
    }
    let events = env.events(clips.len(), Duration::from_secs(120)).await;
    for (id, clip) in jobs {
        let ready = events
            .iter()
            .find_map(|e| match e {
                Outcome::Ready(r) if r.job_id == id.to_hex() => Some(r),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Mp3Ready for {}: {events:?}", clip.display()));
        let mp3 = env.fetch_mp3(&ready.mp3_id).await;
        let (format, got) = probe(&mp3);
        let want = source_duration(&clip);
        assert_eq!(format, "mp3", "{}", clip.display());
        assert!(
            (got - want).abs() <= 0.2,
            "{}: MP3 lasts {got} s, source {want} s",
            clip.display()
        );
        let job = env.job(id).await;
        assert_eq!(job.state, media_store::JobState::Done);
        assert_eq!(job.mp3_id.unwrap().to_hex(), ready.mp3_id);
        assert_eq!(ready.owner_email, "user@example.com");
        assert!(ready.filename.ends_with(".mp3"));
        // Once done and announced (the announcement goes first).
        test_kit::wait_until(
            "the source deleted once done",
            Duration::from_secs(20),
            || async { (!env.video_stored(id).await).then_some(()) },
        )
        .await;
        assert!(ready.expire_time.is_some(), "MP3s expire");
    }
    conv.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_inputs_fail_with_a_reason_and_store_nothing() {
    let env = Env::new().await;
    let whole = env.clip(
        "whole.mkv",
        &format!("{AV} -c:v mpeg4 -c:a libvorbis").replace("duration=3", "duration=8"),
    );
    let truncated = env.clips.path().join("truncated.mkv");
    let bytes = std::fs::read(&whole).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let random = env.clips.path().join("random.mp4");
    std::fs::write(
        &random,
        (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let cases = [
        (
            env.clip(
                "audio_only.m4a",
                "-f lavfi -i sine=frequency=440:duration=3 -c:a aac",
            ),
            "not a video",
        ),
        (
            env.clip(
                "no_audio.mp4",
                "-f lavfi -i testsrc=duration=3:size=160x120:rate=10 -c:v libx264 -pix_fmt yuv420p",
            ),
            "no audio track",
        ),
        (truncated, "truncated"),
        (random, "not a media file"),
    ];
    let conv = env.start().await;
    let mut jobs = Vec::new();
    for (clip, reason) in &cases {
        jobs.push((env.submit(clip).await, *reason));
    }
    let events = env.events(cases.len(), Duration::from_secs(120)).await;
    for (id, reason) in jobs {
        let failed = events
            .iter()
            .find_map(|e| match e {
                Outcome::Failed(f) if f.job_id == id.to_hex() => Some(f),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no ConversionFailed for {reason}: {events:?}"));
        assert!(
            failed.reason.contains(reason),
            "expected a reason with {reason:?}, got {:?}",
            failed.reason
        );
        let job = env.job(id).await;
        assert_eq!(job.state, media_store::JobState::Failed);
        assert_eq!(job.failure_reason.as_deref(), Some(failed.reason.as_str()));
        assert!(
            failed.source_deleted && !env.video_stored(id).await,
            "nothing kept"
        );
    }
    assert_eq!(
        env.mp3_count(None).await,
        0,
        "no MP3 may be stored for a failure"
    );
    assert_eq!(env.chunk_count("mp3s").await, 0, "nor a chunk of one");
    conv.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_second_audio_track_is_not_dropped_silently() {
    let env = Env::new().await;
    let clip = env.clip(
        "two_tracks.mkv",
        "-f lavfi -i testsrc=duration=3:size=160x120:rate=10 -f lavfi -i sine=frequency=440:duration=3 \
         -f lavfi -i sine=frequency=880:duration=3 -map 0:v -map 1:a -map 2:a -shortest -c:v mpeg4 -c:a aac",
    );
    let one = env.clip("one_track.mkv", &format!("{AV} -c:v mpeg4 -c:a aac"));
    let conv = env.start().await;
    let (two_id, one_id) = (env.submit(&clip).await, env.submit(&one).await);
    let events = env.events(2, Duration::from_secs(60)).await;
    let ready = |id: String| {
        events
            .iter()
            .find_map(|e| match e {
                Outcome::Ready(r) if r.job_id == id => Some(r.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{events:?}"))
    };
    // The user is told, on the job and in the event the email is made of.
    let note = "the video has 2 audio tracks; the MP3 holds the first";
    assert_eq!(ready(two_id.to_hex()).notes, vec![note.to_owned()]);
    assert_eq!(env.job(two_id).await.notes, vec![note.to_owned()]);
    let shown = media_store::proto::job(&env.job(two_id).await);
    assert_eq!(shown.notes, vec![note.to_owned()]);
    assert!(ready(one_id.to_hex()).notes.is_empty());
    conv.stop().await;
    env.cleanup().await;
}
