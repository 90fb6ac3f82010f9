//! PostgreSQL plumbing: a deadpool pool that fails fast when the database is
//! down, and migrations applied by one replica at a time.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::{str::FromStr, time::Duration};
use tokio_postgres::NoTls;

use crate::config::Secret;

/// A pool whose calls fail within `timeout` while the database is down
/// (deadpool waits forever by default), and whose connections are checked
/// before reuse: after a database restart, `Fast` recycling hands out dead
/// ones.
pub fn pool(url: &Secret, size: usize, timeout: Duration, app_name: &str) -> anyhow::Result<Pool> {
    let mut pg = tokio_postgres::Config::from_str(url.expose())
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))?;
    pg.connect_timeout(timeout);
    if pg.get_application_name().is_none() {
        pg.application_name(app_name);
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()?)
}

/// Applies `runner`'s migrations under a session advisory lock keyed by
/// `lock_id`, so replicas starting together do not race.
pub async fn migrate(pool: &Pool, runner: refinery::Runner, lock_id: i64) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&lock_id])
        .await?;
    let res = runner.run_async(&mut **client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&lock_id])
        .await?;
    for m in res?.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}

/// Waits until the database answers, or fails after `timeout`.
pub async fn wait_for(pool: &Pool, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let res = async {
            let c = pool.get().await?;
            c.simple_query("SELECT 1").await?;
            anyhow::Ok(())
        }
        .await;
        match res {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "waiting for the database");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => anyhow::bail!("database not reachable within {timeout:?}: {e}"),
        }
    }
}
