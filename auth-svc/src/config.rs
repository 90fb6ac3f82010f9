//! Settings, read from flags or environment variables (`auth-svc --help`).

use clap::{Args, Parser, Subcommand};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use svc_kit::config::{Secret, parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "auth-svc",
    version,
    args_override_self = true,
    about = "Users, login and token validation for the mp3converter mesh"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (the default).
    Serve,
    /// Manage users directly in the database (how operators create the first
    /// accounts).
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. The password is read from standard input.
    Add(AddUserArgs),
}

#[derive(Debug, Args)]
pub struct AddUserArgs {
    #[arg(long)]
    pub email: String,
    /// Read the password from the first line of standard input.
    #[arg(long, required = true)]
    pub password_stdin: bool,
    /// Give the user the admin role.
    #[arg(long)]
    pub admin: bool,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the gRPC API.
    #[arg(long, env = "GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9091")]
    pub admin_addr: SocketAddr,

    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/auth.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,

    /// Connections in the pool.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// How long to wait for a connection before answering UNAVAILABLE.
    #[arg(long, env = "DB_TIMEOUT", value_parser = parse_duration, default_value = "3s")]
    pub db_timeout: Duration,

    /// How often readiness checks the database.
    #[arg(long, env = "DB_HEALTH_INTERVAL", value_parser = parse_duration, default_value = "2s")]
    pub db_health_interval: Duration,

    /// How long start-up waits for the database before giving up.
    #[arg(long, env = "DB_STARTUP_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub db_startup_timeout: Duration,

    /// HS256 signing secret, at least 32 bytes. Prefer JWT_SECRET_FILE.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// File holding the signing secret (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// The tokens' `iss` claim.
    #[arg(long, env = "JWT_ISSUER", default_value = "mp3converter-auth")]
    pub jwt_issuer: String,

    /// The tokens' `aud` claim.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "mp3converter")]
    pub jwt_audience: String,

    /// Token lifetime.
    #[arg(long, env = "TOKEN_TTL", value_parser = parse_duration, default_value = "24h")]
    pub token_ttl: Duration,

    /// Clock skew tolerated when checking `exp`.
    #[arg(long, env = "JWT_LEEWAY", value_parser = parse_duration, default_value = "10s")]
    pub jwt_leeway: Duration,

    /// Argon2id memory cost in KiB (OWASP: at least 19456).
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = 19456)]
    pub argon2_memory_kib: u32,

    /// Argon2id iterations.
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Argon2id parallelism.
    #[arg(long, env = "ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,

    /// Password hashes computed at once; more logins wait. Bounds the memory
    /// and CPU a login flood can take.
    #[arg(long, env = "ARGON2_MAX_CONCURRENT", default_value_t = 4)]
    pub argon2_max_concurrent: usize,

    /// Email of an admin created at start if no user has it (like the
    /// tutorial's init.sql, but hashed).
    #[arg(long, env = "ADMIN_EMAIL")]
    pub admin_email: Option<String>,

    /// That admin's password. Prefer ADMIN_PASSWORD_FILE.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,

    /// File holding that admin's password.
    #[arg(long, env = "ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,

    /// How long in-flight calls may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub telemetry: svc_kit::telemetry::TelemetryArgs,
}
