//! Settings, read from flags or environment variables (`notify-svc --help`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};
use svc_kit::config::{Secret, parse_duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SmtpTls {
    /// Plain SMTP (local development only).
    None,
    /// STARTTLS upgrade (usually port 587).
    Starttls,
    /// Implicit TLS (usually port 465).
    Tls,
}

/// `notify-svc [serve]`, or `notify-svc dlq [--of …]` on the dead letters of
/// one of its queues (the command line the consuming services share).
#[derive(Debug, clap::Parser)]
#[command(
    name = "notify-svc",
    version,
    args_override_self = true,
    about = "Emails users when their MP3 is ready (consumes the mp3 queue)",
    mut_subcommand("serve", |c| c.about("Send emails (the default)")),
    mut_subcommand("dlq", |c| c.about(
        "Look at and replay dead letters: the emails' (mp3 queue) or the \
         webhook deliveries' (webhooks queue)"
    ))
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<amqp_kit::dlq::Command<DlqArgs>>,
    #[command(flatten)]
    pub config: Config,
}

/// What `dlq` asks besides its action.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DlqArgs {
    /// Whose dead letters.
    #[arg(long, value_enum, default_value_t = DlqOf::Mp3)]
    pub of: DlqOf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DlqOf {
    /// Outcome events whose email could not be sent (MP3_QUEUE).
    Mp3,
    /// Webhook deliveries that failed for good (WEBHOOK_QUEUE); a replay
    /// attempts them again.
    Webhooks,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9094")]
    pub admin_addr: SocketAddr,

    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Secret,

    /// Queue of Mp3Ready / ConversionFailed events.
    #[arg(long, env = "MP3_QUEUE", default_value = "mp3")]
    pub mp3_queue: String,

    /// Queue of UserNotified receipts (read by gateway-svc, which records on
    /// each job that its user was told).
    #[arg(long, env = "NOTIFIED_QUEUE", default_value = "notified")]
    pub notified_queue: String,

    /// How long to wait for the broker's confirm of a receipt.
    #[arg(long, env = "PUBLISH_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub publish_timeout: Duration,

    #[command(flatten)]
    pub topology: amqp_kit::TopologyArgs,

    /// Emails sent at once (each waits on the SMTP server).
    #[arg(long, env = "CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,

    /// PostgreSQL URL of the sent-log.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,

    /// How long to wait for the database before retrying the event later.
    #[arg(long, env = "DB_TIMEOUT", value_parser = parse_duration, default_value = "3s")]
    pub db_timeout: Duration,

    /// SMTP server host.
    #[arg(long, env = "SMTP_HOST", default_value = "127.0.0.1")]
    pub smtp_host: String,

    /// SMTP server port.
    #[arg(long, env = "SMTP_PORT", default_value_t = 587)]
    pub smtp_port: u16,

    /// Transport security.
    #[arg(long, env = "SMTP_TLS", value_enum, default_value = "starttls")]
    pub smtp_tls: SmtpTls,

    /// The CA the SMTP server's certificate must chain to (PEM); unset: the
    /// public web roots. Its name must match SMTP_HOST either way.
    #[arg(long, env = "SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,

    /// SMTP user name (no authentication if unset).
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,

    /// SMTP password. Prefer SMTP_PASSWORD_FILE (this one wins over it, and
    /// changing it needs a restart).
    #[arg(long, env = "SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<Secret>,

    /// File holding the SMTP password (a mounted Secret). Read again whenever
    /// the server refuses our credentials, so a rotated password takes effect
    /// without a restart.
    #[arg(long, env = "SMTP_PASSWORD_FILE")]
    pub smtp_password_file: Option<PathBuf>,

    /// Deadline of one SMTP conversation (connecting, logging in, sending one
    /// email). A failed or timed-out one is retried, unless the server refused
    /// the recipient for good.
    #[arg(long, env = "SMTP_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub smtp_timeout: Duration,

    /// The From: address.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "mp3converter <noreply@mp3converter.com>"
    )]
    pub mail_from: String,

    /// Put before every subject.
    #[arg(long, env = "SUBJECT_PREFIX", default_value = "[mp3converter]")]
    pub subject_prefix: String,

    /// Base URL of the REST edge, used in the emailed commands as it is (it
    /// is the operator's, so it is not quoted).
    #[arg(
        long,
        env = "DOWNLOAD_BASE_URL",
        default_value = "http://mp3converter.com"
    )]
    pub download_base_url: String,

    /// PostgreSQL URL of the media database, where users' webhook endpoints
    /// and their deliveries are (media_store::webhooks). Unset: webhooks are
    /// not delivered (their messages wait in WEBHOOK_QUEUE).
    #[arg(long, env = "MEDIA_DATABASE_URL", hide_env_values = true)]
    pub media_database_url: Option<Secret>,

    /// Queue of webhook deliveries due (WebhookDue).
    #[arg(long, env = "WEBHOOK_QUEUE", default_value = "webhooks")]
    pub webhook_queue: String,

    /// Delays before each retry of a webhook delivery that failed (no 2xx
    /// answer), comma-separated; their number is the number of retries, after
    /// which the delivery is failed and its message dead-lettered.
    #[arg(
        long,
        env = "WEBHOOK_RETRY_DELAYS",
        value_delimiter = ',',
        value_parser = parse_duration,
        default_value = "10s,1m,5m,30m,2h,8h"
    )]
    pub webhook_retry_delays: Vec<Duration>,

    /// Deadline of one webhook attempt (connecting, sending, the answer).
    #[arg(long, env = "WEBHOOK_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub webhook_timeout: Duration,

    /// Webhook attempts made at once.
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value_t = 8)]
    pub webhook_concurrency: u16,

    /// Where webhooks may be delivered (checked again at every attempt).
    #[command(flatten)]
    pub webhook_egress: media_store::webhooks::EgressArgs,

    /// How often readiness checks PostgreSQL and SMTP.
    #[arg(long, env = "HEALTH_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub health_interval: Duration,

    /// How long an email in progress may take after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub telemetry: svc_kit::telemetry::TelemetryArgs,
}
