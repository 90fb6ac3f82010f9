//! What users choose lands in the MP3; what operators bound is enforced; the
//! progress of a conversion reaches watchers.

use crate::helpers::*;
use media_store::options::{Channels, RawOptions, SampleRate};
use mp3converter_proto::{EventType, events::v1::JobChanged, media::v1 as pb};
use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

/// 10 s of stereo 44.1 kHz sound under a tiny video.
const STEREO: &str = "-f lavfi -i testsrc=duration=10:size=64x48:rate=5 -f lavfi -i sine=frequency=440:duration=10:sample_rate=44100 -ac 2 -shortest -c:v mpeg4 -c:a aac";

/// One ffprobe field of the first audio stream.
fn audio(path: &Path, field: &str) -> String {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .arg(format!("stream={field}"))
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn title(path: &Path) -> String {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format_tags=title",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn mp3_of(
    env: &Env,
    events: &[Outcome],
    id: media_store::mongodb::bson::oid::ObjectId,
) -> std::path::PathBuf {
    let ready = events
        .iter()
        .find_map(|e| match e {
            Outcome::Ready(r) if r.job_id == id.to_hex() => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Mp3Ready for {id}: {events:?}"));
    env.fetch_mp3(&ready.mp3_id).await
}

#[tokio::test]
async fn each_output_option_lands_in_the_mp3() {
    let env = Env::new().await;
    let clip = env.clip("Summer Holiday.mkv", STEREO);
    let conv = env.start().await;
    let opts = |raw: RawOptions| raw.validate().unwrap();
    let cbr = env
        .submit_with(
            &clip,
            opts(RawOptions {
                bitrate_kbps: Some(96),
                ..Default::default()
            }),
        )
        .await;
    let mono48 = env
        .submit_with(
            &clip,
            opts(RawOptions {
                channels: Channels::Mono,
                sample_rate: SampleRate::Hz48000,
                quality: Some(6),
                ..Default::default()
            }),
        )
        .await;
    let trimmed = env
        .submit_with(
            &clip,
            opts(RawOptions {
                trim_start: Some(2.0),
                trim_end: Some(5.5),
                ..Default::default()
            }),
        )
        .await;
    let plain = env.submit(&clip).await;
    let events = env.events(4, Duration::from_secs(120)).await;

    let mp3 = mp3_of(&env, &events, cbr).await;
    assert_eq!(audio(&mp3, "bit_rate"), "96000", "constant 96 kb/s");
    assert_eq!(audio(&mp3, "channels"), "2", "stereo kept");

    let mp3 = mp3_of(&env, &events, mono48).await;
    assert_eq!(audio(&mp3, "channels"), "1");
    assert_eq!(audio(&mp3, "sample_rate"), "48000");

    let mp3 = mp3_of(&env, &events, trimmed).await;
    let (_, secs) = probe(&mp3);
    assert!((secs - 3.5).abs() < 0.15, "trimmed to 3.5 s, got {secs}");
    let job = env.job(trimmed).await;
    assert!((job.duration_seconds.unwrap() - 3.5).abs() < 0.15);

    let mp3 = mp3_of(&env, &events, plain).await;
    let (_, secs) = probe(&mp3);
    assert!((secs - 10.0).abs() < 0.2, "whole, got {secs}");
    assert_eq!(audio(&mp3, "sample_rate"), "44100", "as the source");
    assert_eq!(
        title(&mp3),
        "Summer Holiday",
        "ID3 title from the file name"
    );

    // The options are recorded on the job, as the API shows them.
    let shown = media_store::proto::job(&env.job(cbr).await);
    assert_eq!(
        shown.options.unwrap().encoding,
        Some(pb::output_options::Encoding::BitrateKbps(96))
    );
    conv.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn inputs_over_the_duration_limit_and_outputs_over_the_size_limit_fail_clearly() {
    let env = Env::new().await;
    let clip = env.clip("ten.mkv", STEREO);
    let short = env.start_with(&["--max-input-duration", "5s"]).await;
    let too_long = env.submit(&clip).await;
    // What counts is the part converted: 3 s of the 10 s are within 5 s.
    let trim = |start, end| {
        RawOptions {
            trim_start: start,
            trim_end: end,
            ..Default::default()
        }
        .validate()
        .unwrap()
    };
    let trimmed = env.submit_with(&clip, trim(None, Some(3.0))).await;
    // A trim past the end is refused for what it is (not "no audio").
    let past_end = env
        .submit_with(&clip, trim(Some(100.0), Some(1000.0)))
        .await;
    let events = env.events(3, Duration::from_secs(60)).await;
    let failed = |id: media_store::mongodb::bson::oid::ObjectId| {
        events
            .iter()
            .find_map(|e| match e {
                Outcome::Failed(f) if f.job_id == id.to_hex() => Some(f.reason.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{id} did not fail: {events:?}"))
    };
    let reason = failed(too_long);
    assert!(reason.contains("longest accepted is 0m05s"), "{reason}");
    let reason = failed(past_end);
    assert!(
        reason.contains("the trim starts at 100 s, but the video lasts only 10.0 s"),
        "{reason}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Outcome::Ready(d) if d.job_id == trimmed.to_hex())),
        "{events:?}"
    );
    short.stop().await;

    let chunks_before = env.chunk_count("mp3s").await;
    let small = env.start_with(&["--max-output-size", "20KiB"]).await;
    let too_big = env.submit(&clip).await;
    let events = env.events(1, Duration::from_secs(60)).await;
    let Outcome::Failed(f) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(f.job_id, too_big.to_hex());
    assert!(f.reason.contains("larger than the limit"), "{}", f.reason);
    assert_eq!(env.mp3_count(Some(too_big)).await, 0);
    assert_eq!(
        env.chunk_count("mp3s").await,
        chunks_before,
        "no chunk of a refused MP3 kept"
    );
    small.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn progress_and_state_changes_reach_the_job_events_exchange() {
    let env = Env::new().await;
    // Long enough to report progress a few times at 100 ms.
    let clip = env.clip(
        "talk.mkv",
        "-f lavfi -i testsrc=duration=240:size=32x24:rate=1 -f lavfi -i sine=frequency=300:duration=240 -shortest -c:v mpeg4 -c:a aac",
    );
    let heard: Arc<Mutex<Vec<JobChanged>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let listener = {
        let heard = heard.clone();
        tokio::spawn(amqp_kit::broadcast::listen(
            svc_kit::config::Secret::new(env.stack.amqp_url.clone()),
            "test-listener".into(),
            env.events_exchange.clone(),
            stop.clone(),
            move |h| {
                if let amqp_kit::broadcast::Heard::Message { kind, payload } = h
                    && kind == JobChanged::TYPE
                {
                    heard
                        .lock()
                        .unwrap()
                        .push(prost::Message::decode(payload.as_slice()).unwrap());
                }
            },
        ))
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // bound before we publish
    let conv = env.start_with(&["--progress-interval", "100ms"]).await;
    let id = env.submit(&clip).await;
    env.events(1, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    listener.await.unwrap();

    let seen: Vec<(i32, Option<f64>)> = heard
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| c.job.as_ref())
        .filter(|j| j.job_id == id.to_hex())
        .map(|j| (j.state, j.progress_percent))
        .collect();
    let converting = pb::JobState::Converting as i32;
    assert!(
        seen.iter()
            .any(|(s, p)| *s == converting && p.is_some_and(|p| p > 0.0 && p < 100.0)),
        "a percentage while converting: {seen:?}"
    );
    let percents: Vec<f64> = seen
        .iter()
        .filter(|(s, _)| *s == converting)
        .filter_map(|(_, p)| *p)
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "never backwards: {percents:?}"
    );
    assert_eq!(
        seen.last().map(|(s, p)| (*s, *p)),
        Some((pb::JobState::Done as i32, Some(100.0))),
        "ends done: {seen:?}"
    );
    conv.stop().await;
    env.cleanup().await;
}
