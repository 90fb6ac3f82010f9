//! The users and revoked_tokens tables, through a deadpool-postgres pool.
//! Every query is a cached prepared statement.

use deadpool_postgres::Pool;
use std::time::{Duration, SystemTime};
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
    pub(crate) disabled: bool,
    pub(crate) token_version: i32,
}

const USER_COLUMNS: &str = "id, email, password_hash, admin, created_at, disabled, token_version";

impl UserRow {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        Self {
            id: row.get("id"),
            email: row.get("email"),
            password_hash: row.get("password_hash"),
            admin: row.get("admin"),
            created_at: row.get("created_at"),
            disabled: row.get("disabled"),
            token_version: row.get("token_version"),
        }
    }
}

/// Which user an admin or an operator means.
#[derive(Debug, Clone)]
pub(crate) enum UserKey<'a> {
    Id(Uuid),
    Email(&'a str),
}

/// What the database says about a token's user (and the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenState {
    pub(crate) disabled: bool,
    pub(crate) token_version: i32,
    /// Its `jti` was revoked by Logout.
    pub(crate) revoked: bool,
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
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower($1)"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&email])
        .await?
        .as_ref()
        .map(UserRow::from_row))
}

pub(crate) async fn find_by_id(pool: &Pool, id: Uuid) -> Result<Option<UserRow>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&id])
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
        .prepare_cached(&format!(
            "INSERT INTO users (id, email, password_hash, admin) VALUES ($1, $2, $3, $4) \
             RETURNING {USER_COLUMNS}"
        ))
        .await?;
    let row = client
        .query_one(&stmt, &[&Uuid::new_v4(), &email, &password_hash, &admin])
        .await?;
    Ok(UserRow::from_row(&row))
}

/// Validate's one query: one primary-key lookup on each table, in one round
/// trip. `None`: the user no longer exists.
pub(crate) async fn token_state(
    pool: &Pool,
    user_id: Uuid,
    jti: Option<Uuid>,
) -> Result<Option<TokenState>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT disabled, token_version, \
                    EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $2) AS revoked \
             FROM users WHERE id = $1",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&user_id, &jti])
        .await?
        .map(|row| TokenState {
            disabled: row.get("disabled"),
            token_version: row.get("token_version"),
            revoked: row.get("revoked"),
        }))
}

/// Revokes one token until `expires_at` (after which it is refused anyway).
pub(crate) async fn revoke_token(
    pool: &Pool,
    jti: Uuid,
    user_id: Uuid,
    expires_at: SystemTime,
) -> Result<(), DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (jti) DO NOTHING",
        )
        .await?;
    client
        .execute(&stmt, &[&jti, &user_id, &expires_at])
        .await?;
    Ok(())
}

/// Ends every token the user holds. `false`: no such user.
pub(crate) async fn bump_token_version(pool: &Pool, user_id: Uuid) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("UPDATE users SET token_version = token_version + 1 WHERE id = $1")
        .await?;
    Ok(client.execute(&stmt, &[&user_id]).await? == 1)
}

/// Sets a new password hash and ends every earlier token, if the user's
/// tokens are still at `version` (else another change or a disable came
/// first: `None`).
pub(crate) async fn change_password(
    pool: &Pool,
    user_id: Uuid,
    password_hash: &str,
    version: i32,
) -> Result<Option<UserRow>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE users SET password_hash = $2, token_version = token_version + 1 \
             WHERE id = $1 AND token_version = $3 AND NOT disabled RETURNING {USER_COLUMNS}"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&user_id, &password_hash, &version])
        .await?
        .as_ref()
        .map(UserRow::from_row))
}

/// Disables or enables a user. Disabling also ends every token the user
/// holds, so enabling later does not bring them back. `None`: no such user.
pub(crate) async fn set_disabled(
    pool: &Pool,
    user: UserKey<'_>,
    disabled: bool,
) -> Result<Option<UserRow>, DbError> {
    let client = pool.get().await?;
    let (filter, key): (_, &(dyn tokio_postgres::types::ToSql + Sync)) = match &user {
        UserKey::Id(id) => ("id = $1", id),
        UserKey::Email(email) => ("lower(email) = lower($1)", email),
    };
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE users SET disabled = $2, \
                    token_version = token_version + CASE WHEN $2 AND NOT disabled THEN 1 ELSE 0 END \
             WHERE {filter} RETURNING {USER_COLUMNS}"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[key, &disabled])
        .await?
        .as_ref()
        .map(UserRow::from_row))
}

/// Deletes revocations of tokens that have expired anyway; returns how many.
pub(crate) async fn delete_expired_revocations(pool: &Pool) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("DELETE FROM revoked_tokens WHERE expires_at < now()")
        .await?;
    Ok(client.execute(&stmt, &[]).await?)
}
