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
    /// (never past its expiry): the longest a token revoked elsewhere (another
    /// replica, auth-svc directly) keeps working here. Revocations through
    /// this replica take effect at once. 0 disables the cache.
    #[arg(long, env = "AUTH_CACHE_TTL", value_parser = parse_duration, default_value = "5s")]
    pub auth_cache_ttl: Duration,

    /// A request header that carries the client's address (e.g. `x-real-ip`
    /// set by the ingress); unset: the TCP peer's address. Passed to
    /// auth-svc for its per-address login limits. Set it only behind a proxy
    /// that overwrites it.
    #[arg(long, env = "CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,

    /// Most tokens kept in the validation cache.
    #[arg(long, env = "AUTH_CACHE_SIZE", default_value_t = 10_000)]
    pub auth_cache_size: u64,

    /// MongoDB URL (GridFS: videos and MP3s).
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Secret,

    /// The jobs (PostgreSQL).
    #[command(flatten)]
    pub jobs_db: media_store::DatabaseArgs,

    /// MongoDB database.
    #[arg(long, env = "MONGODB_DATABASE", default_value = "mp3converter")]
    pub mongodb_database: String,

    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Secret,

    /// Queue the conversion jobs go to.
    #[arg(long, env = "VIDEO_QUEUE", default_value = "video")]
    pub video_queue: String,

    /// Announce each upload as it begins (`UploadStarted`), so a converter
    /// can convert the video while it arrives.
    #[arg(long, env = "LIVE_CONVERSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub live_conversion: bool,

    /// Queue of those announcements [default: <VIDEO_QUEUE>.live].
    #[arg(long, env = "LIVE_QUEUE")]
    pub live_queue: Option<String>,

    /// Address of the internal listener converters follow uploads on as
    /// they arrive (UploadFollowService); under mTLS it admits only
    /// FOLLOW_ALLOWED_CLIENTS. Not for users: keep it off the ingress.
    #[arg(long, env = "FOLLOW_ADDR", default_value = "127.0.0.1:50053")]
    pub follow_addr: SocketAddr,

    /// The URL converters reach FOLLOW_ADDR of this replica at (in
    /// Kubernetes, the pod's own address) [default: FOLLOW_ADDR as bound].
    #[arg(long, env = "FOLLOW_URL")]
    pub follow_url: Option<String>,

    /// Identities (certificate names) the follow listener admits under mTLS.
    #[arg(
        long,
        env = "FOLLOW_ALLOWED_CLIENTS",
        value_delimiter = ',',
        default_value = "converter-svc"
    )]
    pub follow_allowed_clients: Vec<String>,

    /// Bytes of one upload kept for the converter following it; one that
    /// falls further behind converts from storage instead.
    #[arg(long, env = "FOLLOW_WINDOW", value_parser = parse_size, default_value = "16MiB")]
    pub follow_window: u64,

    /// Bytes all uploads keep for their followers together.
    #[arg(long, env = "FOLLOW_MEMORY", value_parser = parse_size, default_value = "256MiB")]
    pub follow_memory: u64,

    /// Queue of conversion outcomes (the janitor announces jobs it fails).
    #[arg(long, env = "MP3_QUEUE", default_value = "mp3")]
    pub mp3_queue: String,

    /// Queue of webhook deliveries due (WebhookDue, read by notify-svc).
    #[arg(long, env = "WEBHOOK_QUEUE", default_value = "webhooks")]
    pub webhook_queue: String,

    /// Queue of notify-svc's UserNotified receipts: each marks its job's
    /// user as told.
    #[arg(long, env = "NOTIFIED_QUEUE", default_value = "notified")]
    pub notified_queue: String,

    /// Fanout exchange of job changes (progress, state) for live watchers;
    /// every replica listens to it.
    #[arg(long, env = "JOB_EVENTS_EXCHANGE", default_value = "job-events")]
    pub job_events_exchange: String,

    #[command(flatten)]
    pub video_topology: amqp_kit::TopologyArgs,

    /// How long to wait for the broker's confirm of a publish.
    #[arg(long, env = "PUBLISH_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub publish_timeout: Duration,

    /// Largest video accepted (e.g. 2GiB, 500MiB).
    #[arg(long, env = "MAX_UPLOAD_SIZE", value_parser = parse_size, default_value = "2GiB")]
    pub max_upload_size: u64,

    /// A resumable upload (tus, CreateUpload) not continued for this long is
    /// removed with its bytes (`Upload-Expires`).
    #[arg(long, env = "UPLOAD_EXPIRES", value_parser = parse_duration, default_value = "24h")]
    pub upload_expires: Duration,

    /// How long a resumable upload stays locked to an append whose gateway
    /// died mid-way (renewed every third of it while the append works).
    #[arg(long, env = "UPLOAD_WRITER_LEASE", value_parser = parse_duration, default_value = "30s")]
    pub upload_writer_lease: Duration,

    /// Uploads at once per user.
    #[arg(long, env = "MAX_UPLOADS_PER_USER", default_value_t = 3)]
    pub max_uploads_per_user: u64,

    /// Jobs waiting for (or in) conversion per user.
    #[arg(long, env = "MAX_WAITING_JOBS_PER_USER", default_value_t = 20)]
    pub max_waiting_jobs_per_user: u64,

    /// Bytes stored per user (videos not yet deleted, and MP3s).
    #[arg(long, env = "MAX_STORED_PER_USER", value_parser = parse_size, default_value = "10GiB")]
    pub max_stored_per_user: u64,

    /// Longest part of a video converted (after trimming), as `/limits`
    /// tells clients; converter-svc enforces its own `MAX_INPUT_DURATION`,
    /// so set both from one value.
    #[arg(long, env = "MAX_INPUT_DURATION", value_parser = parse_duration, default_value = "4h")]
    pub max_input_duration: Duration,

    /// Live watchers (WatchJobs, /jobs/events) per user on one replica.
    #[arg(long, env = "MAX_WATCHERS_PER_USER", default_value_t = 8)]
    pub max_watchers_per_user: usize,

    /// Webhook endpoints a user may register.
    #[arg(long, env = "MAX_WEBHOOKS_PER_USER", default_value_t = 10)]
    pub max_webhooks_per_user: u32,

    /// Where webhook endpoints may be (checked at registration).
    #[command(flatten)]
    pub webhook_egress: media_store::webhooks::EgressArgs,

    /// A download whose client reads nothing for this long is dropped.
    #[arg(long, env = "DOWNLOAD_STALL_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub download_stall_timeout: Duration,

    #[command(flatten)]
    pub janitor: JanitorArgs,

    #[command(flatten)]
    pub listener: svc_kit::limits::ListenerArgs,

    /// mTLS of the gRPC API and of the calls to auth-svc (`AUTH_URL` must
    /// then be https://).
    #[command(flatten)]
    pub tls: svc_kit::tls::TlsArgs,

    /// Serve the REST edge over HTTPS with this certificate chain (PEM), for
    /// deployments without an ingress; with HTTP_TLS_KEY_FILE. Re-read every
    /// TLS_RELOAD_INTERVAL while it changes.
    #[arg(long, env = "HTTP_TLS_CERT_FILE", requires = "http_tls_key_file")]
    pub http_tls_cert_file: Option<std::path::PathBuf>,

    /// The private key of HTTP_TLS_CERT_FILE (PEM).
    #[arg(long, env = "HTTP_TLS_KEY_FILE", requires = "http_tls_cert_file")]
    pub http_tls_key_file: Option<std::path::PathBuf>,

    /// How often readiness checks MongoDB, PostgreSQL and RabbitMQ.
    #[arg(long, env = "HEALTH_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub health_interval: Duration,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "30s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub telemetry: svc_kit::telemetry::TelemetryArgs,
}

/// The janitor's settings (see `janitor.rs`): one replica at a time drives
/// stuck jobs on, removes what is abandoned and applies retention.
#[derive(Debug, Clone, clap::Args)]
pub struct JanitorArgs {
    /// How often the janitor works (one replica at a time).
    #[arg(long, env = "JANITOR_INTERVAL", value_parser = parse_duration, default_value = "30s")]
    pub janitor_interval: Duration,

    /// How long a queued or converting job without a live lease may sit
    /// unchanged before it counts as stuck (its message lost).
    #[arg(long, env = "STUCK_AFTER", value_parser = parse_duration, default_value = "10m")]
    pub stuck_after: Duration,

    /// Re-publishes of a stuck job before it is failed.
    #[arg(long, env = "MAX_REPUBLISH", default_value_t = 3)]
    pub max_republish: u32,

    /// How long after its outcome was announced a job may go without
    /// notify-svc's receipt before the janitor announces it again (same event
    /// id: at most one email). Longer than notify's retries of one email.
    #[arg(long, env = "UNNOTIFIED_AFTER", value_parser = parse_duration, default_value = "15m")]
    pub unnotified_after: Duration,

    /// Announcements again without a receipt before the janitor gives up on
    /// telling the user (counted, for an alert).
    #[arg(long, env = "MAX_REANNOUNCE", default_value_t = 3)]
    pub max_reannounce: u32,

    /// Age past which a job not yet done is failed and the user told.
    #[arg(long, env = "MAX_JOB_AGE", value_parser = parse_duration, default_value = "24h")]
    pub max_job_age: Duration,

    /// An upload whose heartbeat stopped this long ago is removed.
    #[arg(long, env = "UPLOAD_STALE_AFTER", value_parser = parse_duration, default_value = "5m")]
    pub upload_stale_after: Duration,

    /// GridFS chunks without a files document, and files without a job,
    /// are removed once this old (longer than any upload pauses).
    #[arg(long, env = "ORPHAN_AGE", value_parser = parse_duration, default_value = "15m")]
    pub orphan_age: Duration,

    /// How often orphans are looked for (a scan of the GridFS collections).
    #[arg(long, env = "ORPHAN_INTERVAL", value_parser = parse_duration, default_value = "10m")]
    pub orphan_interval: Duration,

    /// How long a deleted job's tombstone is kept (a repeated delete is
    /// recognised meanwhile).
    #[arg(long, env = "TOMBSTONE_AGE", value_parser = parse_duration, default_value = "24h")]
    pub tombstone_age: Duration,

    /// Delete the uploaded video once its job is done or failed (the
    /// converter does; the janitor catches what it could not).
    #[arg(long, env = "DELETE_SOURCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub delete_source: bool,
}
