//! converter-svc: consumes `VideoUploaded` from the `video` queue, streams
//! the video from GridFS through ffmpeg into an MP3 stored in GridFS, and
//! publishes `Mp3Ready` (or `ConversionFailed`) to the `mp3` queue. Run as
//! many as you like: they compete for jobs, and a lease on the job keeps two
//! from converting the same video.

pub mod app;
pub mod config;
mod convert;
pub mod ffmpeg;
mod handler;
mod input;
mod lease;
mod live;
mod observe;
mod output;
mod sweeper;
mod workdir;

use config::{Cli, Command};

/// The service as `main` runs it: until SIGTERM/SIGINT, then drained; or one
/// of its operator subcommands.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command {
        None | Some(Command::Serve) => {
            let telemetry = config.telemetry.clone();
            svc_kit::service::serve(&telemetry, || app::App::build(config)).await
        }
        Some(Command::Dlq { action }) => amqp_kit::dlq::run(
            action,
            &config.amqp_url,
            &config.video_queue,
            describe_event,
        )
        .await
        .map_err(anyhow::Error::msg),
    }
}

/// A dead letter's payload in words.
fn describe_event(kind: Option<&str>, payload: &[u8]) -> String {
    use mp3converter_proto::{EventType, events::v1::VideoUploaded};
    match kind {
        Some(VideoUploaded::TYPE) | None => {
            match <VideoUploaded as prost::Message>::decode(payload) {
                Ok(e) => format!("{e:?}"),
                Err(err) => format!("undecodable ({err}): {} bytes", payload.len()),
            }
        }
        Some(other) => format!("unexpected type {other}: {} bytes", payload.len()),
    }
}
