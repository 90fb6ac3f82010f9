//! Settings, read from flags or environment variables (`converter-svc --help`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};
use svc_kit::config::{Secret, parse_duration};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "converter-svc",
    version,
    args_override_self = true,
    about = "Converts uploaded videos to MP3 (consumes the video queue)"
)]
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

    #[command(flatten)]
    pub topology: amqp_kit::TopologyArgs,

    /// Jobs fetched ahead per instance. 1: a conversion keeps a core busy, so
    /// a second prefetched job would only wait here instead of going to an
    /// idle instance.
    #[arg(long, env = "PREFETCH", default_value_t = 1)]
    pub prefetch: u16,

    /// MongoDB URL (GridFS and jobs).
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Secret,

    /// MongoDB database.
    #[arg(long, env = "MONGODB_DATABASE", default_value = "mp3converter")]
    pub mongodb_database: String,

    /// LAME VBR quality, 0 (best) to 9 (smallest).
    #[arg(long, env = "MP3_QUALITY", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub mp3_quality: u8,

    /// Longest a single ffmpeg run may take.
    #[arg(long, env = "JOB_TIMEOUT", value_parser = parse_duration, default_value = "30m")]
    pub job_timeout: Duration,

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

    /// Where videos are spooled for ffmpeg (an emptyDir in Kubernetes).
    #[arg(long, env = "WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// How often readiness checks MongoDB.
    #[arg(long, env = "HEALTH_INTERVAL", value_parser = parse_duration, default_value = "2s")]
    pub health_interval: Duration,

    /// How long a conversion in progress may go on after SIGTERM before it is
    /// abandoned (ffmpeg killed, job requeued).
    #[arg(long, env = "SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "20s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub telemetry: svc_kit::telemetry::TelemetryArgs,
}
