//! The conversion itself: the stored video streamed through one ffmpeg into
//! an MP3 that is stored as it is written, under limits (time, input
//! duration, output size), with progress reported as ffmpeg goes. Nothing is
//! kept unless ffmpeg succeeded and wrote as much audio as the input holds.
//!
//! Opening the source and running ffmpeg are here; following ffmpeg as it
//! goes and judging what it made are in `watch`.

use crate::{
    ffmpeg::{self, Ffmpeg, Input},
    input::{self, FeedError, Plan},
    output::{Mp3Sink, SinkError},
    workdir::WorkDir,
};
use media_store::{FileInfo, Job, READ_BATCH_CHUNKS, ReadError, Store, mongodb::bson::doc};
use std::time::Duration;
use tracing::Instrument;

mod watch;

use watch::{check_length, judge, notes, watch};

/// Limits and policy of every conversion.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Longest one conversion may take (wall clock).
    pub(crate) job_timeout: Duration,
    /// Longest input accepted.
    pub(crate) max_input_duration: Duration,
    /// Largest MP3 written.
    pub(crate) max_output_bytes: u64,
    /// How far the MP3's length may differ from the input's.
    pub(crate) tolerance: Duration,
    pub(crate) allow_audio_only: bool,
    /// At most one progress report per job this often.
    pub(crate) progress_interval: Duration,
}

/// Why a job did not finish.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Tell the user; retrying cannot help.
    Permanent(String),
    /// Try again later.
    Transient(String),
    /// Shutdown: give the job back.
    Abandoned,
    /// Our lease on the job ended (deleted, or taken over).
    LostLease,
}

impl Failure {
    /// How the conversion ended, for `mp3converter_conversions_total`.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Self::Permanent(_) => "invalid_input",
            Self::Transient(_) => "retry",
            Self::Abandoned => "abandoned",
            Self::LostLease => "lost_lease",
        }
    }

    /// (error.type, reason) for the span, for real failures.
    pub(crate) fn error_kind(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::Permanent(r) => Some(("invalid_input", r)),
            Self::Transient(r) => Some(("transient", r)),
            Self::Abandoned | Self::LostLease => None,
        }
    }
}

/// A stored MP3.
#[derive(Debug, Clone)]
pub(crate) struct Converted {
    pub(crate) id: media_store::mongodb::bson::oid::ObjectId,
    pub(crate) size_bytes: u64,
    pub(crate) duration_seconds: f64,
    /// What the user should know (see `media_store::Job::notes`).
    pub(crate) notes: Vec<String>,
}

pub(crate) struct Context<'a> {
    pub(crate) store: &'a Store,
    pub(crate) work: &'a WorkDir,
    pub(crate) settings: &'a Settings,
    /// Called with the percentage done, at most once per interval.
    pub(crate) progress: &'a (dyn Fn(f64) + Send + Sync),
}

pub(crate) use media_store::proto::mp3_name;

fn read_failure(e: ReadError) -> Failure {
    match e {
        ReadError::Mongo(e) => Failure::Transient(format!("reading the video: {e}")),
        e @ ReadError::Corrupt(_) => {
            Failure::Permanent(format!("the stored video is damaged ({e})"))
        }
    }
}

fn feed_failure(e: FeedError) -> Failure {
    match e {
        FeedError::Read(e) => read_failure(e),
        FeedError::Write(e) => Failure::Transient(format!("feeding ffmpeg: {e}")),
        FeedError::Upload(why) => Failure::Transient(why),
        e @ FeedError::SpoolFull(_) => Failure::Transient(e.to_string()),
    }
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Where the video is read from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The committed upload.
    Stored,
    /// The upload as it arrives (see [`crate::live`]), followed at `url`.
    Live {
        settings: crate::live::Settings,
        url: String,
        connect: crate::live::Connect,
    },
}

/// Converts `job`'s video and stores the MP3.
pub(crate) async fn run(
    ctx: &Context<'_>,
    job: &Job,
    source: Source,
) -> Result<Converted, Failure> {
    let s = ctx.settings;
    let dir = ctx
        .work
        .job(&job.id.to_hex())
        .map_err(|e| Failure::Transient(format!("no work directory: {e}")))?;

    let read_span = tracing::info_span!(
        "gridfs.read",
        otel.name = "gridfs.read videos",
        db.system.name = "mongodb",
        db.collection.name = "videos.chunks",
        video_id = %job.id,
        bytes = tracing::field::Empty,
        live = matches!(source, Source::Live { .. }),
    );
    let live = matches!(source, Source::Live { .. });
    let (stream, first, plan, declared) = match source {
        Source::Stored => open_stored(ctx, job, &read_span).await?,
        Source::Live {
            settings,
            url,
            connect,
        } => open_live(job, &connect, &url, settings, &read_span).await?,
    };
    if let Some(d) = declared.audio_duration {
        check_length(s, job, d)?;
    }

    let input_path = dir.path().join("input");
    let output_path = dir.path().join("output.mp3");
    let mut pipe = None;
    let how = match &plan {
        Plan::Pipe { moved: None } if live => "live",
        Plan::Spool if live => "live_spooled",
        Plan::Pipe { moved: None } => "piped",
        Plan::Pipe { moved: Some(_) } => "piped_index_moved",
        Plan::Spool => "spooled",
    };
    // The spool's disk space, held until the job's directory goes.
    let mut spool_space = ctx.work.spool_space();
    metrics::counter!("mp3converter_converter_inputs_total", "how" => how).increment(1);
    tracing::debug!(job_id = %job.id, how, "feeding ffmpeg");
    let input = match plan {
        Plan::Pipe { moved } => {
            pipe = Some((stream, first, moved));
            Input::Pipe
        }
        Plan::Spool => {
            // Live, this lasts as long as the upload: the file is whole the
            // moment it is committed, and ffmpeg reads a local file.
            input::spool(stream, first, &input_path, &mut spool_space)
                .instrument(read_span.clone())
                .await
                .map_err(feed_failure)?;
            Input::File(&input_path)
        }
    };
    let title = mp3_name(&job.filename);
    let title = title.trim_end_matches(".mp3");
    let args = ffmpeg::args(&input, &output_path, &job.options, title);

    let ffmpeg_span = tracing::info_span!(
        "ffmpeg",
        otel.name = "ffmpeg to_mp3",
        process.executable.name = "ffmpeg",
        audio.codec = "libmp3lame",
        input.piped = matches!(input, Input::Pipe),
        input.duration_seconds = tracing::field::Empty,
        output.duration_seconds = tracing::field::Empty,
    );
    let mut ff = Ffmpeg::spawn(&args).map_err(Failure::Transient)?;
    let mut feeder = match pipe {
        Some((stream, first, moved)) => {
            let mut stdin = ff
                .take_stdin()
                .ok_or_else(|| Failure::Transient("ffmpeg has no stdin".into()))?;
            Some(tokio::spawn(
                async move { input::feed(stream, first, moved.as_ref(), &mut stdin).await }
                    .instrument(read_span),
            ))
        }
        None => {
            drop(ff.take_stdin()); // nothing to read there: EOF
            None
        }
    };
    let mut sink = Mp3Sink::new(&ctx.store.mp3_files, &output_path, s.max_output_bytes);

    let watched = watch(
        ctx,
        job,
        &mut ff,
        &mut feeder,
        &mut sink,
        declared.audio_duration,
    )
    .instrument(ffmpeg_span.clone())
    .await;
    if let Some(f) = feeder.take() {
        f.abort();
    }
    let facts = match watched {
        Ok(facts) => facts,
        Err(failure) => {
            ff.kill();
            while ff.next().await.is_some() {}
            let _ = ff.wait().await;
            sink.abort().await;
            return Err(failure);
        }
    };
    let status = ff.wait().await.map_err(Failure::Transient)?;
    let judged = judge(s, job, &facts, status, declared.audio_duration);
    if let Some(d) = facts.source_duration(declared.audio_duration) {
        ffmpeg_span.record("input.duration_seconds", d);
    }
    ffmpeg_span.record(
        "output.duration_seconds",
        facts.out_time.unwrap_or_default(),
    );
    let duration = match judged {
        Ok(d) => d,
        Err(f) => {
            sink.abort().await;
            return Err(f);
        }
    };

    let stored = sink
        .finish(
            &mp3_name(&job.filename),
            doc! {
                "owner_id": &job.owner_id,
                "video_id": job.id,
                "duration_seconds": duration,
            },
        )
        .instrument(tracing::info_span!(
            "gridfs.write",
            otel.name = "gridfs.write mp3s",
            db.system.name = "mongodb",
            db.collection.name = "mp3s.chunks",
            video_id = %job.id,
        ))
        .await;
    match stored {
        Ok(size) => Ok(Converted {
            id: sink.id(),
            size_bytes: size,
            duration_seconds: duration,
            notes: notes(&facts),
        }),
        Err(SinkError::Store(e)) if media_store::is_duplicate_key(&e) => {
            // Another converter stored this video's MP3 first (one per video):
            // theirs stands.
            sink.abort().await;
            let theirs = ctx
                .store
                .mp3_for(job.id)
                .await
                .map_err(|e| Failure::Transient(format!("finding the MP3: {e}")))?
                .ok_or_else(|| Failure::Transient("the other MP3 vanished".into()))?;
            tracing::info!(job_id = %job.id, "another converter stored the MP3 first");
            Ok(Converted::adopted(&theirs))
        }
        Err(e @ (SinkError::TooLarge(_) | SinkError::Empty)) => {
            sink.abort().await;
            Err(Failure::Permanent(e.to_string()))
        }
        Err(e) => {
            sink.abort().await;
            Err(Failure::Transient(e.to_string()))
        }
    }
}

/// The upload's follower, its first chunk, and how to feed it: piped if it
/// decodes front to back, else spooled as it arrives.
async fn open_live(
    job: &Job,
    connect: &crate::live::Connect,
    url: &str,
    settings: crate::live::Settings,
    read_span: &tracing::Span,
) -> Result<(input::Chunks, bytes::Bytes, Plan, input::Declared), Failure> {
    let mut follow = connect
        .follow(url, &job.id.to_hex(), settings)
        .await
        .map_err(|e| feed_failure(e.into()))?;
    let first = follow
        .next_chunk()
        .instrument(read_span.clone())
        .await
        .map_err(|e| feed_failure(e.into()))?
        .ok_or_else(|| Failure::Permanent("the uploaded file is empty".into()))?;
    let plan = input::plan_live(&first);
    Ok((
        input::Chunks::Live(follow),
        first,
        plan,
        input::Declared::default(),
    ))
}

/// The stored video's reader, its first chunk, and how to feed it.
async fn open_stored(
    ctx: &Context<'_>,
    job: &Job,
    read_span: &tracing::Span,
) -> Result<(input::Chunks, bytes::Bytes, Plan, input::Declared), Failure> {
    let file = ctx
        .store
        .videos
        .find_one(doc! { "_id": job.id })
        .await
        .map_err(|e| Failure::Transient(format!("finding the video: {e}")))?
        .ok_or_else(|| Failure::Permanent("the uploaded video is no longer stored".into()))?;
    let info = FileInfo::from(&file);
    read_span.record("bytes", info.length);
    let bucket = &ctx.store.video_files;
    let mut stream = bucket.stream(info.clone(), 0, READ_BATCH_CHUNKS);
    let first = stream
        .next_chunk()
        .instrument(read_span.clone())
        .await
        .map_err(read_failure)?
        .ok_or_else(|| Failure::Permanent("the uploaded file is empty".into()))?;
    let kept = media_store::gridfs::kept_mp4_index(&file);
    let (plan, declared) = input::plan(bucket, &info, &first, kept)
        .instrument(tracing::info_span!("plan input", video_id = %job.id))
        .await
        .map_err(read_failure)?;
    Ok((input::Chunks::Stored(stream), first, plan, declared))
}
/// What ffmpeg said about the input and the output.
#[derive(Debug, Default)]
struct Facts {
    /// Audio tracks, and whether there is a video.
    streams: Option<(usize, bool)>,
    container_duration: Option<f64>,
    out_time: Option<f64>,
    errors: Vec<String>,
}

impl Facts {
    fn source_duration(&self, declared: Option<f64>) -> Option<f64> {
        declared.or(self.container_duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds(Duration::from_secs(5 * 3600 + 60)), "5h01m");
        assert_eq!(seconds(Duration::from_secs(125)), "2m05s");
    }
}
