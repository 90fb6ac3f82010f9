//! Settings, read from flags or environment variables (`gateway-svc --help`).

use std::{net::SocketAddr, time::Duration};
use svc_kit::config::{Secret, parse_duration, parse_size};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gateway-svc",
    version,
    args_override_self = true,
    about = "MediaService gRPC API and REST edge of the mp3converter mesh"
)]
pub struct Config {
    /// Address of the gRPC API (MediaService, health, reflection).
    #[arg(long, env = "GRPC_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: SocketAddr,

    /// Address of the REST edge.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9092")]
    pub admin_addr: SocketAddr,

    /// auth-svc's gRPC URL.
    #[arg(long, env = "AUTH_URL", default_value = "http://127.0.0.1:50051")]
    pub auth_url: String,

    /// Deadline of each call to auth-svc.
    #[arg(long, env = "AUTH_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    pub auth_timeout: Duration,

    /// How long a validated token is trusted without asking auth-svc again
    /// (never past its expiry). 0 disables the cache.
    #[arg(long, env = "AUTH_CACHE_TTL", value_parser = parse_duration, default_value = "30s")]
    pub auth_cache_ttl: Duration,

    /// Most tokens kept in the validation cache.
    #[arg(long, env = "AUTH_CACHE_SIZE", default_value_t = 10_000)]
    pub auth_cache_size: u64,

    /// MongoDB URL (GridFS and jobs).
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Secret,

    /// MongoDB database.
    #[arg(long, env = "MONGODB_DATABASE", default_value = "mp3converter")]
    pub mongodb_database: String,

    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Secret,

    /// Queue the conversion jobs go to.
    #[arg(long, env = "VIDEO_QUEUE", default_value = "video")]
    pub video_queue: String,

    #[command(flatten)]
    pub video_topology: amqp_kit::TopologyArgs,

    /// How long to wait for the broker's confirm of a publish.
    #[arg(long, env = "PUBLISH_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub publish_timeout: Duration,

    /// Largest video accepted (e.g. 2GiB, 500MiB).
    #[arg(long, env = "MAX_UPLOAD_SIZE", value_parser = parse_size, default_value = "2GiB")]
    pub max_upload_size: u64,

    /// How often to look for jobs whose event was never confirmed (a crash
    /// between recording the job and publishing it).
    #[arg(long, env = "SWEEP_INTERVAL", value_parser = parse_duration, default_value = "60s")]
    pub sweep_interval: Duration,

    /// How old such a job must be before its event is published again.
    #[arg(long, env = "SWEEP_AGE", value_parser = parse_duration, default_value = "2m")]
    pub sweep_age: Duration,

    /// How often readiness checks MongoDB and RabbitMQ.
    #[arg(long, env = "HEALTH_INTERVAL", value_parser = parse_duration, default_value = "2s")]
    pub health_interval: Duration,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "30s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub telemetry: svc_kit::telemetry::TelemetryArgs,
}
