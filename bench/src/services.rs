//! The settings the benches give the services they start as processes
//! (environment variables): auth-svc with the benches' admin, a gateway's
//! listeners, the stores and queues a mesh shares, notify-svc's SMTP. Each
//! bench spelled these out again; what is its own stays in the bench.

use crate::{Proc, free_port};
use test_kit::Stack;

/// A process's environment, `(variable, value)`; where a variable comes
/// twice the later value is the one the process sees (`Command::envs`).
pub type Vars = Vec<(&'static str, String)>;

/// The admin auth-svc makes at start in the benches: (email, password).
pub const ADMIN: (&str, &str) = ("bench@example.com", "bench password");

/// The benches' JWT secret.
pub const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret";

/// `127.0.0.1:<a free port>`.
pub fn local_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// auth-svc on `grpc_addr` (its admin port free), its users in
/// `database_url`, signing with `jwt_secret`, `admin` made at start.
pub fn auth_vars(
    grpc_addr: &str,
    database_url: String,
    jwt_secret: &str,
    admin: (&str, &str),
) -> Vars {
    vec![
        ("GRPC_ADDR", grpc_addr.to_owned()),
        ("ADMIN_ADDR", local_addr()),
        ("DATABASE_URL", database_url),
        ("JWT_SECRET", jwt_secret.to_owned()),
        ("ADMIN_EMAIL", admin.0.to_owned()),
        ("ADMIN_PASSWORD", admin.1.to_owned()),
    ]
}

/// auth-svc as the benches run it ([`ADMIN`], [`JWT_SECRET`]) on a fresh
/// database named after `db_prefix`: the process and its gRPC address.
pub async fn start_auth(stack: &Stack, db_prefix: &str) -> anyhow::Result<(Proc, String)> {
    let db = stack.fresh_database(db_prefix).await;
    let addr = local_addr();
    let auth = Proc::start("auth-svc", &auth_vars(&addr, db, JWT_SECRET, ADMIN))?;
    Ok((auth, addr))
}

/// A gateway's listeners, each on a free port of 127.0.0.1 (follow-ups on
/// one more).
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    pub grpc: u16,
    pub http: u16,
    pub admin: u16,
}

impl Listeners {
    pub fn new() -> Self {
        Self {
            grpc: free_port(),
            http: free_port(),
            admin: free_port(),
        }
    }

    /// The gateway's address settings, with the auth-svc it asks.
    pub fn gateway_vars(&self, auth_addr: &str) -> Vars {
        vec![
            ("GRPC_ADDR", format!("127.0.0.1:{}", self.grpc)),
            ("HTTP_ADDR", format!("127.0.0.1:{}", self.http)),
            ("FOLLOW_ADDR", local_addr()),
            ("ADMIN_ADDR", format!("127.0.0.1:{}", self.admin)),
            ("AUTH_URL", format!("http://{auth_addr}")),
        ]
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Self::new()
    }
}

/// The stores the gateways and converters of a mesh share: the stack's
/// GridFS server (database `mongodb_database`), the jobs at `database_url`,
/// the stack's RabbitMQ.
pub fn store_vars(stack: &Stack, mongodb_database: &str, database_url: &str) -> Vars {
    vec![
        ("MONGODB_URI", stack.mongodb_uri.clone()),
        ("MONGODB_DATABASE", mongodb_database.to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("AMQP_URL", stack.amqp_url.clone()),
    ]
}

/// notify-svc emailing through the stack's Mailpit, without TLS.
pub fn smtp_vars(stack: &Stack) -> Vars {
    vec![
        ("SMTP_HOST", stack.smtp_host.clone()),
        ("SMTP_PORT", stack.smtp_port.to_string()),
        ("SMTP_TLS", "none".into()),
    ]
}
