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
        Some(Command::Dlq { of, action }) => {
            let queue = match of {
                config::DlqOf::Mp3 => &config.mp3_queue,
                config::DlqOf::Webhooks => &config.webhook_queue,
            };
            amqp_kit::dlq::run(action, &config.amqp_url, queue, describe_event)
                .await
                .map_err(anyhow::Error::msg)
        }
    }
}

/// A dead letter's payload in words.
fn describe_event(kind: Option<&str>, payload: &[u8]) -> String {
    use mp3converter_proto::{
        EventType,
        events::v1::{ConversionFailed, Mp3Ready, WebhookDue},
    };
    let decoded = match kind {
        Some(Mp3Ready::TYPE) => {
            <Mp3Ready as prost::Message>::decode(payload).map(|e| format!("{e:?}"))
        }
        Some(ConversionFailed::TYPE) => {
            <ConversionFailed as prost::Message>::decode(payload).map(|e| format!("{e:?}"))
        }
        Some(WebhookDue::TYPE) => {
            <WebhookDue as prost::Message>::decode(payload).map(|e| format!("{e:?}"))
        }
        other => return format!("unexpected type {other:?}: {} bytes", payload.len()),
    };
    decoded.unwrap_or_else(|e| format!("undecodable ({e}): {} bytes", payload.len()))
}
