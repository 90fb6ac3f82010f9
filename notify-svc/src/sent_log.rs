//! The sent-log: which events have been emailed. Claiming an event and
//! sending its email happen in one transaction, so a redelivery (or a second
//! instance holding the same event) finds the row and sends nothing, and a
//! failed send rolls the claim back for the retry.

use deadpool_postgres::Pool;

mod embedded {
    refinery::embed_migrations!("migrations");
}

const MIGRATION_LOCK: i64 = 0x6d70_3363_6f6e_7632; // "mp3conv2"

pub(crate) async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    svc_kit::pg::migrate(pool, embedded::migrations::runner(), MIGRATION_LOCK).await
}

/// What happened to an event's email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Sent now.
    Sent,
    /// Sent (or refused for good) before: nothing done.
    AlreadyDone,
    /// The SMTP server refused the recipient for good (e.g. no such mailbox).
    Rejected,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("sent-log unavailable: {0}")]
    Database(String),
    #[error("SMTP: {0}")]
    Transient(String),
}

/// Result of trying to send.
#[derive(Debug)]
pub(crate) enum SmtpResult {
    Accepted,
    /// The server refused the recipient for good: recorded, never retried.
    Permanent(String),
    /// Anything else (our credentials, the relay, the server, the network):
    /// rolled back, to be retried.
    Transient(String),
}

/// Claims `event_id` and runs `send` inside the same transaction.
pub(crate) async fn send_once<F, Fut>(
    pool: &Pool,
    event_id: &str,
    kind: &str,
    recipient: &str,
    send: F,
) -> Result<Delivered, SendError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = SmtpResult>,
{
    let db = |e: &dyn std::fmt::Display| SendError::Database(e.to_string());
    let mut client = pool.get().await.map_err(|e| db(&e))?;
    let tx = client.transaction().await.map_err(|e| db(&e))?;
    // The row lock makes a concurrent holder of the same event wait here
    // until this transaction ends, then see the row (or take over).
    let claimed = tx
        .execute(
            "INSERT INTO sent_emails (event_id, kind, recipient, outcome) VALUES ($1, $2, $3, 'sent') \
             ON CONFLICT (event_id) DO NOTHING",
            &[&event_id, &kind, &recipient],
        )
        .await
        .map_err(|e| db(&e))?;
    if claimed == 0 {
        tx.rollback().await.map_err(|e| db(&e))?;
        return Ok(Delivered::AlreadyDone);
    }
    match send().await {
        SmtpResult::Accepted => {
            // If this commit fails after the server accepted the mail, the
            // retry sends it again: at-least-once, with the same Message-ID.
            tx.commit().await.map_err(|e| db(&e))?;
            Ok(Delivered::Sent)
        }
        SmtpResult::Permanent(detail) => {
            tx.execute(
                "UPDATE sent_emails SET outcome = 'rejected', detail = $2 WHERE event_id = $1",
                &[&event_id, &detail],
            )
            .await
            .map_err(|e| db(&e))?;
            tx.commit().await.map_err(|e| db(&e))?;
            Ok(Delivered::Rejected)
        }
        SmtpResult::Transient(detail) => {
            tx.rollback().await.map_err(|e| db(&e))?;
            Err(SendError::Transient(detail))
        }
    }
}
