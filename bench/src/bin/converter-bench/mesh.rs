//! Two converters and notify-svc, as deployed, emailing through Mailpit.

use crate::{env::Env, topology};
use bench::{Proc, services};
use std::time::{Duration, Instant};

impl Env<'_> {
    /// notify-svc on the mp3 queue, emailing through Mailpit, with its own
    /// receipts queue (nobody consumes it here: delete it after).
    pub(crate) async fn notify(&self) -> anyhow::Result<(Proc, String)> {
        let notify_db = self.stack.fresh_database("benchnotify").await;
        let notified_queue = test_kit::unique_name("notified-bench");
        let mut env = vec![
            ("ADMIN_ADDR", services::local_addr()),
            ("AMQP_URL", self.stack.amqp_url.clone()),
            ("MP3_QUEUE", self.mp3_queue.clone()),
            ("NOTIFIED_QUEUE", notified_queue.clone()),
            ("DATABASE_URL", notify_db),
        ];
        env.extend(services::smtp_vars(&self.stack));
        let notify = Proc::start("notify-svc", &env)?;
        Ok((notify, notified_queue))
    }
}

/// Two converters (default concurrency) and notify-svc, as deployed.
pub(crate) struct Mesh {
    pub(crate) converters: Vec<Proc>,
    pub(crate) notify: Proc,
    pub(crate) notified_queue: String,
}

impl Env<'_> {
    pub(crate) async fn mesh(&self) -> anyhow::Result<Mesh> {
        let (notify, notified_queue) = self.notify().await?;
        let converters = (0..2)
            .map(|_| self.converter(2))
            .collect::<Result<_, _>>()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(Mesh {
            converters,
            notify,
            notified_queue,
        })
    }

    /// Waits until `owner` has `n` emails in Mailpit.
    pub(crate) async fn emails(&self, owner: &str, n: usize) -> anyhow::Result<()> {
        let mailpit = test_kit::mailpit::Mailpit::new(&self.stack.mailpit_api_url);
        let t = Instant::now();
        loop {
            let got = mailpit
                .messages_to(owner)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if got >= n {
                return Ok(());
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(600),
                "only {got} of {n} emails"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the mesh once its sweepers have deleted every source.
    pub(crate) async fn stop(&self, mesh: Mesh) -> anyhow::Result<()> {
        self.sources_gone(Duration::from_secs(300)).await?;
        drop((mesh.converters, mesh.notify));
        test_kit::delete_work_queues(
            &self.stack.amqp_url,
            &[topology().work_queue(&mesh.notified_queue)],
        )
        .await;
        Ok(())
    }
}
