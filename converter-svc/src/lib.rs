//! converter-svc: consumes `VideoUploaded` from the `video` queue, converts
//! the video to MP3 with ffmpeg, stores it in GridFS and publishes `Mp3Ready`
//! (or `ConversionFailed`) to the `mp3` queue. Run as many as you like: they
//! compete for jobs, and a lease on the job keeps two from converting the
//! same video.

pub mod app;
pub mod config;
pub mod ffmpeg;
mod handler;
mod jobs;

/// The service as `main` runs it: until SIGTERM/SIGINT, then drained.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let telemetry = config.telemetry.clone();
    svc_kit::telemetry::run(
        "converter-svc",
        &telemetry,
        Box::pin(async {
            app::App::build(config)
                .await?
                .run_until(svc_kit::shutdown::on_signal())
                .await
        }),
    )
    .await
}
