//! Settings, read from flags or environment variables (`converter-svc --help`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};
use svc_kit::config::{Secret, parse_duration, parse_size};

/// `converter-svc [serve]`, or `converter-svc dlq` on the video queue's
/// dead letters (the command line the consuming services share).
#[derive(Debug, clap::Parser)]
#[command(
    name = "converter-svc",
    version,
    args_override_self = true,
    about = "Converts uploaded videos to MP3 (consumes the video queue)",
    mut_subcommand("serve", |c| c.about("Convert videos (the default)")),
    mut_subcommand("dlq", |c| c.about("Look at and replay the dead letters of the video queue"))
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<amqp_kit::dlq::Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9093")]
    pub admin_addr: SocketAddr,

    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Secret,

    /// Queue of conversion jobs.
    #[arg(long, env = "VIDEO_QUEUE", default_value = "video")]
    pub video_queue: String,

    /// Queue for Mp3Ready / ConversionFailed.
    #[arg(long, env = "MP3_QUEUE", default_value = "mp3")]
    pub mp3_queue: String,

    /// Queue of webhook deliveries due (WebhookDue, read by notify-svc).
    #[arg(long, env = "WEBHOOK_QUEUE", default_value = "webhooks")]
    pub webhook_queue: String,

    /// Queue of `UploadStarted` hints, for converting videos while they are
    /// uploaded [default: <VIDEO_QUEUE>.live].
    #[arg(long, env = "LIVE_QUEUE")]
    pub live_queue: Option<String>,

    /// Uploads converted as they arrive, at once per instance (on top of
    /// CONCURRENCY; such a conversion mostly waits for the upload). 0 turns
    /// it off: every video is then converted after its upload.
    #[arg(long, env = "LIVE_CONCURRENCY", default_value_t = 2)]
    pub live_concurrency: u16,

    /// A live conversion whose upload sends nothing for this long is given
    /// up (the video is then converted after its upload, if it completes).
    #[arg(long, env = "LIVE_STALL", value_parser = parse_duration, default_value = "30s")]
    pub live_stall: Duration,

    #[command(flatten)]
    pub topology: amqp_kit::TopologyArgs,

    /// Conversions at once per instance (and so jobs taken from the queue).
    /// A conversion keeps about one core busy (audio decoding and MP3
    /// encoding are single-threaded), and waits on GridFS in between.
    #[arg(long, env = "CONCURRENCY", default_value_t = 2)]
    pub concurrency: u16,

    /// MongoDB URL (GridFS: videos and MP3s).
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Secret,

    /// The jobs (PostgreSQL).
    #[command(flatten)]
    pub jobs_db: media_store::DatabaseArgs,

    /// MongoDB database.
    #[arg(long, env = "MONGODB_DATABASE", default_value = "mp3converter")]
    pub mongodb_database: String,

    /// Longest a single conversion may take (ffmpeg is killed after it and
    /// the job fails).
    #[arg(long, env = "JOB_TIMEOUT", value_parser = parse_duration, default_value = "30m")]
    pub job_timeout: Duration,

    /// Longest input accepted (its declared duration, or what ffmpeg has
    /// decoded so far when it declares none).
    #[arg(long, env = "MAX_INPUT_DURATION", value_parser = parse_duration, default_value = "4h")]
    pub max_input_duration: Duration,

    /// Largest MP3 written; ffmpeg is stopped beyond it. The default holds
    /// 4 h at 320 kb/s.
    #[arg(long, env = "MAX_OUTPUT_SIZE", value_parser = parse_size, default_value = "600MiB")]
    pub max_output_size: u64,

    /// How often at most a job's progress is recorded and announced.
    #[arg(long, env = "PROGRESS_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub progress_interval: Duration,

    /// How long an MP3 is kept after its conversion; then it and its job are
    /// deleted (gateway-svc's janitor). 0 keeps them forever.
    #[arg(long, env = "MP3_RETENTION", value_parser = parse_duration, default_value = "168h")]
    pub mp3_retention: Duration,

    /// Delete the uploaded video once its MP3 is stored or its conversion
    /// failed.
    #[arg(long, env = "DELETE_SOURCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub delete_source: bool,

    /// Fanout exchange for job changes (progress, state), read by every
    /// gateway replica for live watchers.
    #[arg(long, env = "JOB_EVENTS_EXCHANGE", default_value = "job-events")]
    pub job_events_exchange: String,

    /// How far the MP3's duration may differ from the input's before the
    /// output is judged truncated.
    #[arg(long, env = "DURATION_TOLERANCE", value_parser = parse_duration, default_value = "500ms")]
    pub duration_tolerance: Duration,

    /// Accept files with audio but no video stream (e.g. .m4a).
    #[arg(long, env = "ALLOW_AUDIO_ONLY", default_value_t = false)]
    pub allow_audio_only: bool,

    /// How long a job's lease lasts without renewal; another instance may take
    /// the job over after that (e.g. when this one was killed).
    #[arg(long, env = "LEASE_TTL", value_parser = parse_duration, default_value = "30s")]
    pub lease_ttl: Duration,

    /// Scratch space: the MP3 as ffmpeg writes it, and videos in containers
    /// ffmpeg cannot read from a pipe (an emptyDir in Kubernetes).
    #[arg(long, env = "WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// Disk space the videos spooled into WORK_DIR may take together; an
    /// upload followed live that would pass it is converted from storage
    /// after its upload instead, a stored one is retried later.
    #[arg(long, env = "MAX_SPOOL_BYTES", value_parser = parse_size, default_value = "4GiB")]
    pub max_spool_bytes: u64,

    /// mTLS to the gateways' follow listeners (converting uploads as they
    /// arrive): this converter's certificate, and the CA the gateway's must
    /// chain to.
    #[command(flatten)]
    pub tls: svc_kit::tls::TlsArgs,

    /// How often readiness checks MongoDB.
    #[arg(long, env = "HEALTH_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub health_interval: Duration,

    /// How long a conversion in progress may go on after SIGTERM before it is
    /// abandoned (ffmpeg killed, job requeued).
    #[arg(long, env = "SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "20s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub telemetry: svc_kit::telemetry::TelemetryArgs,
}
