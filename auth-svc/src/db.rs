//! The users table, through a deadpool-postgres pool.

use deadpool_postgres::Pool;
use std::time::Duration;
use svc_kit::config::Secret;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Serialises migrations across replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6d70_3363_6f6e_7631; // "mp3conv1"

#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// The database cannot be reached or did not answer in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("a user with that email already exists")]
    Duplicate,
    #[error("database error: {0}")]
    Other(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            return Self::Duplicate;
        }
        // No SQLSTATE means the failure was the connection itself; so are the
        // server's "shutting down" and "cannot connect now" states.
        match e.code() {
            None => Self::Unavailable(svc_kit::error::error_chain(&e)),
            Some(c)
                if *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CRASH_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
                    || c.code().starts_with("08") =>
            {
                Self::Unavailable(svc_kit::error::error_chain(&e))
            }
            Some(_) => Self::Other(svc_kit::error::error_chain(&e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct UserRow {
    pub(crate) id: Uuid,
    pub(crate) email: String,
    pub(crate) password_hash: String,
    pub(crate) admin: bool,
    pub(crate) created_at: std::time::SystemTime,
}

impl UserRow {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        Self {
            id: row.get("id"),
            email: row.get("email"),
            password_hash: row.get("password_hash"),
            admin: row.get("admin"),
            created_at: row.get("created_at"),
        }
    }
}

pub(crate) fn pool(url: &Secret, size: usize, timeout: Duration) -> anyhow::Result<Pool> {
    svc_kit::pg::pool(url, size, timeout, "auth-svc")
}

/// Applies the embedded migrations, one replica at a time.
pub(crate) async fn migrate(pool: &Pool) -> Result<(), DbError> {
    svc_kit::pg::migrate(pool, embedded::migrations::runner(), MIGRATION_LOCK)
        .await
        .map_err(|e| DbError::Other(format!("migrations failed: {e:#}")))
}

pub(crate) async fn ping(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

pub(crate) async fn find_by_email(pool: &Pool, email: &str) -> Result<Option<UserRow>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, email, password_hash, admin, created_at FROM users WHERE lower(email) = lower($1)",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&email])
        .await?
        .as_ref()
        .map(UserRow::from_row))
}

pub(crate) async fn insert_user(
    pool: &Pool,
    email: &str,
    password_hash: &str,
    admin: bool,
) -> Result<UserRow, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO users (id, email, password_hash, admin) VALUES ($1, $2, $3, $4) \
             RETURNING id, email, password_hash, admin, created_at",
        )
        .await?;
    let row = client
        .query_one(&stmt, &[&Uuid::new_v4(), &email, &password_hash, &admin])
        .await?;
    Ok(UserRow::from_row(&row))
}
