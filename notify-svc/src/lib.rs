//! notify-svc: consumes `Mp3Ready` and `ConversionFailed` from the `mp3`
//! queue and emails the owner, once per event.

pub mod app;
mod classify;
pub mod config;
mod handler;
mod mail;
mod render;
mod sent_log;
mod smtp;
mod webhook;

use amqp_kit::dlq::{Command, DeadLetters, describe};
use config::{DlqArgs, DlqOf};
use mp3converter_proto::events::v1::{ConversionFailed, Mp3Ready, WebhookDue};

/// The service as `main` runs it: until SIGTERM/SIGINT, then drained; or one
/// of its operator subcommands.
pub async fn run(cli: config::Cli) -> anyhow::Result<()> {
    let telemetry = cli.config.telemetry.clone();
    Command::run(
        cli.command,
        cli.config,
        |config| svc_kit::service::serve(&telemetry, || app::App::build(config)),
        // The mp3 queue's dead letters are outcomes whose email could not be
        // sent; the webhooks queue's, deliveries that failed for good.
        |config, DlqArgs { of }| DeadLetters {
            url: &config.amqp_url,
            queue: match of {
                DlqOf::Mp3 => &config.mp3_queue,
                DlqOf::Webhooks => &config.webhook_queue,
            },
            describe: describe::<(Mp3Ready, ConversionFailed, WebhookDue)>,
        },
    )
    .await
}
