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

use amqp_kit::dlq::{Command, DeadLetters, OneQueue, describe};
use mp3converter_proto::events::v1::VideoUploaded;

/// The service as `main` runs it: until SIGTERM/SIGINT, then drained; or one
/// of its operator subcommands.
pub async fn run(cli: config::Cli) -> anyhow::Result<()> {
    let telemetry = cli.config.telemetry.clone();
    Command::run(
        cli.command,
        cli.config,
        |config| svc_kit::service::serve(&telemetry, || app::App::build(config)),
        // Dead letters are VideoUploaded events of the video queue.
        |config, OneQueue {}| DeadLetters {
            url: &config.amqp_url,
            queue: &config.video_queue,
            describe: describe::<(VideoUploaded,)>,
        },
    )
    .await
}
