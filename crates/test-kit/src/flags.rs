//! Command lines for the services run in-process by tests (e2e's mesh,
//! gateway-svc's API tests, auth-bench): every listener on `127.0.0.1:0`,
//! the stack's stores. Each caller adds what is its own after these; e2e,
//! the gateway's tests and auth-bench each wrote these lists out.

use crate::Stack;

/// Any free port on loopback.
const ANY: &str = "127.0.0.1:0";

/// `program`, then each flag and its value.
pub fn command_line(program: &str, flags: &[(&str, &str)]) -> Vec<String> {
    std::iter::once(program)
        .chain(flags.iter().flat_map(|(f, v)| [*f, *v]))
        .map(str::to_owned)
        .collect()
}

/// auth-svc: its users in `database_url`, signing with `jwt_secret`,
/// `admin` (email, password) made at start.
pub fn auth_svc(database_url: &str, jwt_secret: &str, admin: (&str, &str)) -> Vec<String> {
    command_line(
        "auth-svc",
        &[
            ("--grpc-addr", ANY),
            ("--admin-addr", ANY),
            ("--database-url", database_url),
            ("--jwt-secret", jwt_secret),
            ("--admin-email", admin.0),
            ("--admin-password", admin.1),
        ],
    )
}

/// Where a gateway stores and announces uploads.
#[derive(Debug, Clone, Copy)]
pub struct GatewayStores<'a> {
    /// The GridFS database on the stack's server.
    pub mongodb_database: &'a str,
    /// The jobs' PostgreSQL database.
    pub database_url: &'a str,
    pub video_queue: &'a str,
    pub notified_queue: &'a str,
}

/// gateway-svc asking auth-svc at `auth_url`, on the stack's GridFS server
/// and RabbitMQ.
pub fn gateway_svc(auth_url: &str, stack: &Stack, stores: GatewayStores<'_>) -> Vec<String> {
    command_line(
        "gateway-svc",
        &[
            ("--grpc-addr", ANY),
            ("--follow-addr", ANY),
            ("--http-addr", ANY),
            ("--admin-addr", ANY),
            ("--auth-url", auth_url),
            ("--mongodb-uri", &stack.mongodb_uri),
            ("--mongodb-database", stores.mongodb_database),
            ("--database-url", stores.database_url),
            ("--amqp-url", &stack.amqp_url),
            ("--video-queue", stores.video_queue),
            ("--notified-queue", stores.notified_queue),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_is_the_program_then_each_flag_and_value() {
        assert_eq!(
            command_line("x", &[("--a", "1"), ("--b", "two")]),
            ["x", "--a", "1", "--b", "two"]
        );
        let auth = auth_svc("postgres://db", "secret", ("a@b.c", "pw"));
        assert_eq!(auth[0], "auth-svc");
        assert!(auth.windows(2).any(|w| w == ["--admin-email", "a@b.c"]));
    }
}
