//! Following ffmpeg as it converts (limits, progress, the MP3 stored as it
//! grows), then judging from its exit and what it said whether the MP3 is
//! whole.

use super::{Context, Facts, Failure, Settings, feed_failure, seconds};
use crate::{
    ffmpeg::{self, Event, Ffmpeg},
    input::FeedError,
    output::{Mp3Sink, SinkError},
};
use media_store::Job;
use std::time::{Duration, Instant};

fn too_long(d: f64, max: Duration) -> Failure {
    Failure::Permanent(format!(
        "the video is {} long; the longest accepted is {}",
        seconds(Duration::from_secs_f64(d.max(0.0))),
        seconds(max)
    ))
}

/// Once the source's length is known: the trims must fall inside it, and
/// what is converted (the trimmed part, not the whole file) must be within
/// the limit.
pub(super) fn check_length(s: &Settings, job: &Job, source: f64) -> Result<(), Failure> {
    if let Some(why) = job.options.trims_outside(source) {
        return Err(Failure::Permanent(why));
    }
    let kept = job.options.expected_duration(source);
    if kept > s.max_input_duration.as_secs_f64() {
        return Err(if kept < source {
            Failure::Permanent(format!(
                "the part to convert is {} long; the longest accepted is {}",
                seconds(Duration::from_secs_f64(kept)),
                seconds(s.max_input_duration)
            ))
        } else {
            too_long(source, s.max_input_duration)
        });
    }
    Ok(())
}

/// Follows ffmpeg until it closes its output, enforcing the limits, storing
/// the MP3 as it grows and reporting progress.
pub(super) async fn watch(
    ctx: &Context<'_>,
    job: &Job,
    ff: &mut Ffmpeg,
    feeder: &mut Option<tokio::task::JoinHandle<Result<u64, FeedError>>>,
    sink: &mut Mp3Sink,
    declared: Option<f64>,
) -> Result<Facts, Failure> {
    let s = ctx.settings;
    let max_input = s.max_input_duration.as_secs_f64();
    let deadline = tokio::time::Instant::now() + s.job_timeout;
    let mut facts = Facts::default();
    let mut pump = tokio::time::interval(Duration::from_millis(100));
    pump.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_report = Instant::now();
    loop {
        tokio::select! {
            ev = ff.next() => match ev {
                None => return Ok(facts),
                Some(Event::Streams { audio, video }) => {
                    facts.streams = Some((audio, video));
                    if audio == 0 {
                        return Err(no_audio());
                    }
                    if !video && !s.allow_audio_only {
                        return Err(not_a_video());
                    }
                }
                Some(Event::Duration(d)) => {
                    facts.container_duration = Some(d);
                    check_length(s, job, declared.unwrap_or(d))?;
                }
                Some(Event::Progress(t)) => {
                    facts.out_time = Some(t);
                    if facts.source_duration(declared).is_none() && t > max_input {
                        return Err(too_long(t, s.max_input_duration));
                    }
                    let expected = facts
                        .source_duration(declared)
                        .map(|d| job.options.expected_duration(d))
                        .filter(|e| *e > 0.0);
                    if let Some(expected) = expected
                        && last_report.elapsed() >= s.progress_interval
                    {
                        last_report = Instant::now();
                        (ctx.progress)((t / expected * 100.0).clamp(0.0, 99.9));
                    }
                }
                Some(Event::Error(line)) => {
                    if facts.errors.len() < 20 {
                        facts.errors.push(line);
                    }
                }
            },
            _ = pump.tick() => match sink.pump().await {
                Ok(_) => {}
                Err(e @ SinkError::TooLarge(_)) => return Err(Failure::Permanent(e.to_string())),
                Err(e) => return Err(Failure::Transient(e.to_string())),
            },
            fed = async { feeder.as_mut().expect("guarded").await }, if feeder.is_some() => {
                *feeder = None;
                match fed {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(feed_failure(e)),
                    Err(e) => return Err(Failure::Transient(format!("the feeding task failed: {e}"))),
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(Failure::Permanent(format!(
                    "the conversion took longer than {}",
                    seconds(s.job_timeout)
                )));
            }
        }
    }
}

/// What the user should know about an MP3 made from this input.
pub(super) fn notes(facts: &Facts) -> Vec<String> {
    match facts.streams {
        Some((tracks, _)) if tracks > 1 => vec![format!(
            "the video has {tracks} audio tracks; the MP3 holds the first"
        )],
        _ => Vec::new(),
    }
}

fn no_audio() -> Failure {
    Failure::Permanent("the video has no audio track, so there is nothing to put in an MP3".into())
}

fn not_a_video() -> Failure {
    Failure::Permanent("the file is not a video (it has no video stream)".into())
}

/// Decides from ffmpeg's exit and what it said whether the MP3 is whole;
/// its duration if so.
pub(super) fn judge(
    s: &Settings,
    job: &Job,
    facts: &Facts,
    status: std::process::ExitStatus,
    declared: Option<f64>,
) -> Result<f64, Failure> {
    let Some((audio, video)) = facts.streams else {
        return Err(Failure::Permanent(format!(
            "not a media file ffmpeg can read ({})",
            ffmpeg::short_reason(&facts.errors)
        )));
    };
    if audio == 0 {
        return Err(no_audio());
    }
    if !video && !s.allow_audio_only {
        return Err(not_a_video());
    }
    if !status.success() {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(sig) = status.signal() {
                // Not ours (we kill only on the paths above): the OOM killer,
                // a node drain. Worth another try.
                return Err(Failure::Transient(format!(
                    "ffmpeg was killed by signal {sig}"
                )));
            }
        }
        return Err(Failure::Permanent(format!(
            "the file could not be decoded ({})",
            ffmpeg::short_reason(&facts.errors)
        )));
    }
    let got = facts.out_time.unwrap_or(0.0);
    match facts.source_duration(declared) {
        Some(source) => {
            let want = job.options.expected_duration(source);
            if (got - want).abs() > s.tolerance.as_secs_f64() {
                return Err(Failure::Permanent(format!(
                    "the video looks truncated or damaged: only {got:.1} s of its {want:.1} s of audio could be decoded"
                )));
            }
        }
        // Nothing declared (live-recorded WebM, MPEG-TS): what decoded
        // without error is all there is.
        None => {
            tracing::info!(job_id = %job.id, got, "the input declares no duration; not checked")
        }
    }
    if got <= 0.0 {
        // A source that declares no length shows a trim past its end only
        // here: nothing came out.
        if let Some(start) = job.options.trim_start {
            return Err(Failure::Permanent(format!(
                "nothing is left after the trim start of {start} s: the video is shorter than that"
            )));
        }
        return Err(Failure::Permanent(
            "the file holds no audio that could be decoded".into(),
        ));
    }
    Ok(got)
}
