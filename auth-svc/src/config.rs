//! Settings, read from flags or environment variables (`auth-svc --help`).

use crate::ratelimit::{Rate, TrustedProxies};
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
    /// accounts, and lock one out without an admin token).
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. The password is read from standard input.
    Add(AddUserArgs),
    /// Disable a user: their tokens stop validating at once (USER_DISABLED)
    /// and their logins are refused like a wrong password.
    Disable(UserRef),
    /// Enable a disabled user again. Tokens from before the disable stay
    /// revoked: the user logs in again.
    Enable(UserRef),
}

#[derive(Debug, Args)]
pub struct UserRef {
    #[arg(long)]
    pub email: String,
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

    #[command(flatten)]
    pub listener: svc_kit::limits::ListenerArgs,

    #[command(flatten)]
    pub tls: svc_kit::tls::TlsArgs,

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

    /// Token lifetime. Tokens can be revoked (Logout, ChangePassword,
    /// disable), but a leaked one that nobody revokes works until it
    /// expires; one hour bounds that while a web session re-logs in at most
    /// hourly.
    #[arg(long, env = "TOKEN_TTL", value_parser = parse_duration, default_value = "1h")]
    pub token_ttl: Duration,

    /// Clock skew tolerated when checking `exp`, `nbf` and `iat`.
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
    /// (ARGON2_MEMORY_KIB each) and CPU a login flood can take. A hash keeps
    /// its slot until it ends, even if its caller has gone.
    #[arg(long, env = "ARGON2_MAX_CONCURRENT", default_value_t = 4)]
    pub argon2_max_concurrent: usize,

    /// Logins that may wait for a hashing slot; more are answered
    /// UNAVAILABLE ("busy, retry") at once. The default is about what four
    /// slots clear within ARGON2_QUEUE_TIMEOUT on two cores: a longer queue
    /// would only time out.
    #[arg(long, env = "ARGON2_MAX_WAITING", default_value_t = 64)]
    pub argon2_max_waiting: usize,

    /// How long a login waits for a hashing slot before it is answered
    /// UNAVAILABLE ("busy, retry").
    #[arg(long, env = "ARGON2_QUEUE_TIMEOUT", value_parser = parse_duration, default_value = "1s")]
    pub argon2_queue_timeout: Duration,

    /// Failed logins per client address, over every account: N/PERIOD is a
    /// burst of N refilled at N per PERIOD; `off` disables. Over it:
    /// RESOURCE_EXHAUSTED with the delay in a google.rpc.RetryInfo. Ten a
    /// minute is far more than a person mistyping needs, and a sliver of
    /// what the hashing slots serve, so one address cannot crowd out the
    /// others. Successful logins do not count.
    #[arg(long, env = "LOGIN_LIMIT_PER_ADDR", default_value = "10/1m")]
    pub login_limit_per_addr: Rate,

    /// Failed logins per account from one client address (the tight
    /// limit); same format. A successful login from that address resets it.
    /// Keyed on the pair, so guesses from elsewhere cannot lock the owner
    /// out; someone mistyping waits at most 12 s.
    #[arg(long, env = "LOGIN_LIMIT_PER_ACCOUNT_ADDR", default_value = "5/1m")]
    pub login_limit_per_account_addr: Rate,

    /// Failed logins per account (the normalised email, known or not) from
    /// all addresses together: a ceiling on guessing from many addresses,
    /// loose enough that locking an owner out takes a sustained effort (50
    /// failures, then one more every 72 s). Successful logins do not count.
    #[arg(long, env = "LOGIN_LIMIT_PER_ACCOUNT", default_value = "50/1h")]
    pub login_limit_per_account: Rate,

    /// How long a login refused by a rate limit is held before it is
    /// answered (never past its retry delay; 0: at once). A client that
    /// floods without waiting then gets one answer per call in flight per
    /// delay instead of thousands a second. Keep it under the callers'
    /// deadline (the gateway's AUTH_TIMEOUT, 2 s).
    #[arg(long, env = "LOGIN_REFUSAL_DELAY", value_parser = parse_duration, default_value = "1s")]
    pub login_refusal_delay: Duration,

    /// Over plaintext, the peers whose `x-client-addr` metadata names the
    /// client a login is counted against (the gateway's REST edge logs in
    /// for its users): comma-separated CIDRs or addresses, `none` for no
    /// one. Others, and a trusted peer naming no client, are counted by
    /// their own address. In Kubernetes: the pods' CIDRs (a NetworkPolicy
    /// lets only the gateway reach auth-svc).
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "127.0.0.0/8,::1/128")]
    pub trusted_proxies: TrustedProxies,

    /// Over mutual TLS, the client identities (DNS names their certificates
    /// prove) whose `x-client-addr` is trusted instead: an address is
    /// nothing there, anyone on the network may have it.
    #[arg(
        long,
        env = "TRUSTED_PROXY_IDENTITIES",
        value_delimiter = ',',
        default_value = "gateway-svc"
    )]
    pub trusted_proxy_identities: Vec<String>,

    /// How often idle rate-limit entries are dropped and revoked token ids
    /// past their expiry deleted.
    #[arg(long, env = "HOUSEKEEPING_INTERVAL", value_parser = parse_duration, default_value = "1m")]
    pub housekeeping_interval: Duration,

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
