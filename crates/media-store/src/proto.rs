//! The job and its options as the contracts (`mp3converter.media.v1`) carry
//! them: one conversion, used by every API and by the job-change events.

use crate::{
    Job, JobState,
    options::{Channels, Encoding, InvalidOption, OutputOptions, RawOptions, SampleRate},
};
use mp3converter_proto::media::v1 as pb;
use std::time::SystemTime;

fn ts(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

pub fn job_state(s: JobState) -> pb::JobState {
    match s {
        // Internal states never reach users; map them to what they are
        // closest to, should one slip through.
        JobState::Uploading | JobState::Queued => pb::JobState::Queued,
        JobState::Converting => pb::JobState::Converting,
        JobState::Done => pb::JobState::Done,
        JobState::Failed | JobState::Deleted => pb::JobState::Failed,
    }
}

pub fn job(job: &Job) -> pb::Job {
    let done = job.state == JobState::Done;
    pb::Job {
        job_id: job.id.to_hex(),
        video_id: job.id.to_hex(),
        filename: job.filename.clone(),
        size_bytes: u64::try_from(job.size_bytes).unwrap_or_default(),
        state: job_state(job.state) as i32,
        mp3_id: job.mp3_id.map(|id| id.to_hex()).unwrap_or_default(),
        failure_reason: job.failure_reason.clone().unwrap_or_default(),
        create_time: Some(ts(job.created_at)),
        update_time: Some(ts(job.updated_at)),
        options: Some(options(&job.options)),
        progress_percent: match job.state {
            JobState::Converting => Some(job.progress.unwrap_or(0.0)),
            JobState::Done => Some(100.0),
            _ => None,
        },
        mp3_size_bytes: if done {
            job.mp3_size_bytes
                .and_then(|b| u64::try_from(b).ok())
                .unwrap_or_default()
        } else {
            0
        },
        duration_seconds: if done {
            job.duration_seconds.unwrap_or_default()
        } else {
            0.0
        },
        expire_time: job.expires_at.filter(|_| done).map(ts),
        notes: if done { job.notes.clone() } else { Vec::new() },
    }
}

pub fn options(o: &OutputOptions) -> pb::OutputOptions {
    pb::OutputOptions {
        encoding: Some(match o.encoding {
            Encoding::Vbr { quality } => pb::output_options::Encoding::Quality(quality),
            Encoding::Cbr { bitrate_kbps } => {
                pb::output_options::Encoding::BitrateKbps(bitrate_kbps)
            }
        }),
        channels: match o.channels {
            Channels::Source => pb::Channels::Unspecified,
            Channels::Mono => pb::Channels::Mono,
            Channels::Stereo => pb::Channels::Stereo,
        } as i32,
        sample_rate: match o.sample_rate {
            SampleRate::Source => pb::SampleRate::Unspecified,
            SampleRate::Hz44100 => pb::SampleRate::SampleRate44100,
            SampleRate::Hz48000 => pb::SampleRate::SampleRate48000,
        } as i32,
        trim_start_seconds: o.trim_start,
        trim_end_seconds: o.trim_end,
    }
}

/// Validates options as a gRPC client sent them (`None`: the defaults).
pub fn parse_options(o: Option<&pb::OutputOptions>) -> Result<OutputOptions, InvalidOption> {
    let Some(o) = o else {
        return Ok(OutputOptions::default());
    };
    let bad_enum = |field: &'static str, v: i32| InvalidOption {
        field,
        why: format!("unknown value {v}"),
    };
    let raw = RawOptions {
        bitrate_kbps: match o.encoding {
            Some(pb::output_options::Encoding::BitrateKbps(b)) => Some(b),
            _ => None,
        },
        quality: match o.encoding {
            Some(pb::output_options::Encoding::Quality(q)) => Some(q),
            _ => None,
        },
        channels: match pb::Channels::try_from(o.channels) {
            Ok(pb::Channels::Unspecified) => Channels::Source,
            Ok(pb::Channels::Mono) => Channels::Mono,
            Ok(pb::Channels::Stereo) => Channels::Stereo,
            Err(_) => return Err(bad_enum("channels", o.channels)),
        },
        sample_rate: match pb::SampleRate::try_from(o.sample_rate) {
            Ok(pb::SampleRate::Unspecified) => SampleRate::Source,
            Ok(pb::SampleRate::SampleRate44100) => SampleRate::Hz44100,
            Ok(pb::SampleRate::SampleRate48000) => SampleRate::Hz48000,
            Err(_) => return Err(bad_enum("sample_rate", o.sample_rate)),
        },
        trim_start: o.trim_start_seconds,
        trim_end: o.trim_end_seconds,
    };
    raw.validate()
}

/// The event that tells live watchers about a job.
pub fn job_changed(j: &Job, deleted: bool) -> mp3converter_proto::events::v1::JobChanged {
    mp3converter_proto::events::v1::JobChanged {
        owner_id: j.owner_id.clone(),
        job: Some(job(j)),
        deleted,
    }
}

/// The hint that an upload has begun (see converter-svc's `live`), and
/// where its bytes can be followed as they arrive.
pub fn upload_started(
    id: mongodb::bson::oid::ObjectId,
    follow_url: Option<&str>,
) -> mp3converter_proto::events::v1::UploadStarted {
    mp3converter_proto::events::v1::UploadStarted {
        event_id: format!("started-{}", id.to_hex()),
        job_id: id.to_hex(),
        video_id: id.to_hex(),
        occur_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        follow_url: follow_url.unwrap_or_default().to_owned(),
    }
}

/// The job's `VideoUploaded`: derived from the job alone, under an id derived
/// from it, so a repeat (the janitor's) is recognisably the same event.
pub fn video_uploaded(j: &Job) -> mp3converter_proto::events::v1::VideoUploaded {
    mp3converter_proto::events::v1::VideoUploaded {
        owner_id: j.owner_id.clone(),
        owner_email: j.owner_email.clone(),
        filename: j.filename.clone(),
        content_type: j.content_type.clone(),
        size_bytes: u64::try_from(j.size_bytes).unwrap_or_default(),
        ..video_uploaded_of(j.id)
    }
}

/// The `VideoUploaded` of job `id`, its other fields empty (converters read
/// the job itself): its event id derives from the job, so every announcement
/// of it is the same event. Tests and benches fill in what they need.
pub fn video_uploaded_of(
    id: mongodb::bson::oid::ObjectId,
) -> mp3converter_proto::events::v1::VideoUploaded {
    mp3converter_proto::events::v1::VideoUploaded {
        event_id: format!("video-{}", id.to_hex()),
        job_id: id.to_hex(),
        video_id: id.to_hex(),
        occur_time: Some(prost_types::Timestamp::from(SystemTime::now())),
        ..Default::default()
    }
}

/// The job's outcome event, done: derived from the job alone, under an id
/// derived from it, so every announcement of it is the same event.
pub fn mp3_ready(j: &Job) -> mp3converter_proto::events::v1::Mp3Ready {
    mp3converter_proto::events::v1::Mp3Ready {
        event_id: format!("mp3ready-{}", j.id.to_hex()),
        job_id: j.id.to_hex(),
        video_id: j.id.to_hex(),
        mp3_id: j.mp3_id.map(|m| m.to_hex()).unwrap_or_default(),
        owner_id: j.owner_id.clone(),
        owner_email: j.owner_email.clone(),
        filename: mp3_name(&j.filename),
        size_bytes: j
            .mp3_size_bytes
            .and_then(|b| u64::try_from(b).ok())
            .unwrap_or_default(),
        duration_seconds: j.duration_seconds.unwrap_or_default(),
        occur_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        expire_time: j.expires_at.map(ts),
        notes: j.notes.clone(),
    }
}

/// The job's outcome event, failed (see [`mp3_ready`]).
pub fn conversion_failed(j: &Job) -> mp3converter_proto::events::v1::ConversionFailed {
    use crate::FailureKind as K;
    use mp3converter_proto::events::v1::FailureKind as P;
    mp3converter_proto::events::v1::ConversionFailed {
        event_id: format!("failed-{}", j.id.to_hex()),
        job_id: j.id.to_hex(),
        video_id: j.id.to_hex(),
        owner_id: j.owner_id.clone(),
        owner_email: j.owner_email.clone(),
        filename: j.filename.clone(),
        reason: j.failure_reason.clone().unwrap_or_default(),
        kind: match j.failure_kind {
            Some(K::InvalidInput) | None => P::InvalidInput,
            Some(K::RetriesExhausted) => P::RetriesExhausted,
            Some(K::TimedOut) => P::TimedOut,
        } as i32,
        occur_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        source_deleted: j.source_deleted,
    }
}

/// The MP3's name: the video's, with `.mp3` for its extension.
pub fn mp3_name(video_name: &str) -> String {
    let stem = video_name
        .rsplit_once('.')
        .map_or(video_name, |(stem, _)| stem);
    let stem = if stem.is_empty() { "audio" } else { stem };
    format!("{stem}.mp3")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp3_names_keep_the_stem() {
        assert_eq!(mp3_name("holiday.mkv"), "holiday.mp3");
        assert_eq!(mp3_name("a.b.mp4"), "a.b.mp3");
        assert_eq!(mp3_name("noext"), "noext.mp3");
        assert_eq!(mp3_name(".mp4"), "audio.mp3");
    }

    #[test]
    fn options_survive_the_round_trip() {
        let o = RawOptions {
            bitrate_kbps: Some(192),
            channels: Channels::Mono,
            sample_rate: SampleRate::Hz44100,
            trim_start: Some(2.0),
            trim_end: Some(9.5),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(parse_options(Some(&options(&o))).unwrap(), o);
        assert_eq!(parse_options(None).unwrap(), OutputOptions::default());
        let bad = pb::OutputOptions {
            channels: 7,
            ..Default::default()
        };
        assert_eq!(parse_options(Some(&bad)).unwrap_err().field, "channels");
    }
}
