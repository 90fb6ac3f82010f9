//! Test-only helpers (a dev-dependency of every service): the local stack's
//! connection settings, unique names so tests never share state, fresh
//! PostgreSQL databases, waiting for a condition, reading Mailpit, an OTLP
//! trace receiver, a shell sandbox for the commands emails show, users made
//! by the admin over auth-svc's gRPC, clips made with ffmpeg, and the
//! services' command lines for tests that run them in-process.
//!
//! Settings come from the same variables `scripts/stack env` prints, with the
//! stack's fixed ports as defaults, so `cargo test` works with or without
//! `eval "$(scripts/stack env)"`.

#![allow(clippy::unwrap_used, unreachable_pub)]

pub mod clips;
pub mod flags;
pub mod mailpit;
pub mod otlp;
pub mod pg;
pub mod prom;
pub mod proxy;
pub mod shell;
pub mod users;

use std::{future::Future, sync::Once, time::Duration};

/// Where the stack's services listen.
#[derive(Debug, Clone)]
pub struct Stack {
    pub database_url: String,
    pub amqp_url: String,
    pub mongodb_uri: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub mailpit_api_url: String,
}

impl Stack {
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Self {
            database_url: var(
                "DATABASE_URL",
                "postgres://mp3converter:mp3converter@127.0.0.1:54329/mp3converter",
            ),
            amqp_url: var(
                "AMQP_URL",
                "amqp://mp3converter:mp3converter@127.0.0.1:56729/%2f",
            ),
            mongodb_uri: var("MONGODB_URI", "mongodb://127.0.0.1:57017/"),
            smtp_host: var("SMTP_HOST", "127.0.0.1"),
            smtp_port: var("SMTP_PORT", "51025").parse().expect("SMTP_PORT"),
            mailpit_api_url: var("MAILPIT_API_URL", "http://127.0.0.1:58025"),
        }
    }

    /// Creates an empty database named after `prefix` and a random suffix, and
    /// returns its URL. Each test gets its own, so tests run in parallel.
    pub async fn fresh_database(&self, prefix: &str) -> String {
        let name = unique_name(prefix).replace('-', "_");
        let (client, conn) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .expect("connect to the stack's PostgreSQL (is `scripts/stack up` running?)");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        let mut url = url_without_db(&self.database_url);
        url.push('/');
        url.push_str(&name);
        url
    }
}

impl Stack {
    /// The URL of database `name` on the stack's PostgreSQL, created if it
    /// does not exist yet (replicas of one test share it).
    pub async fn database(&self, name: &str) -> String {
        let (client, conn) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .expect("connect to the stack's PostgreSQL (is `scripts/stack up` running?)");
        tokio::spawn(conn);
        let created = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await;
        if let Err(e) = created
            && e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
        {
            panic!("create database {name}: {e}");
        }
        format!("{}/{name}", url_without_db(&self.database_url))
    }

    /// Drops database `name` (a test's, once it is done with it).
    pub async fn drop_database(&self, name: &str) {
        let Ok((client, conn)) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls).await
        else {
            return;
        };
        tokio::spawn(conn);
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}

fn url_without_db(url: &str) -> String {
    // postgres://user:pw@host:port/db?params -> postgres://user:pw@host:port
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_owned(),
        None => url.to_owned(),
    }
}

/// Deletes a work queue with its dead-letter and retry queues (tests declare
/// their own, uniquely named). Best effort: cleanup must not fail a test.
pub async fn delete_work_queues(amqp_url: &str, queues: &[amqp_kit::WorkQueue]) {
    let url = svc_kit::config::Secret::new(amqp_url);
    let Ok(conn) = amqp_kit::connect(&url, "test-cleanup").await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    for q in queues {
        let retries =
            (1..=u32::try_from(q.retry_delays.len()).unwrap_or(0)).filter_map(|n| q.retry_queue(n));
        for name in [q.name.clone(), q.dead_letter_queue()]
            .into_iter()
            .chain(retries)
        {
            let _ = ch
                .queue_delete(name.as_str().into(), Default::default())
                .await;
        }
    }
}

/// `prefix-<12 random hex digits>`: a name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// Logs to stdout once per test binary when `TEST_LOG` is set; otherwise
/// stays quiet.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_is_split_at_the_path() {
        assert_eq!(
            url_without_db("postgres://u:p@h:1/db?sslmode=disable"),
            "postgres://u:p@h:1"
        );
        assert_eq!(url_without_db("postgres://u:p@h:1"), "postgres://u:p@h:1");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
        assert!(unique_name("db").starts_with("db-"));
    }
}
