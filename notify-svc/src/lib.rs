//! notify-svc: consumes `Mp3Ready` and `ConversionFailed` from the `mp3`
//! queue and emails the owner, once per event.

pub mod app;
pub mod config;
mod handler;
mod mail;
mod sent_log;

/// The service as `main` runs it: until SIGTERM/SIGINT, then drained.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let telemetry = config.telemetry.clone();
    svc_kit::telemetry::run(
        "notify-svc",
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
