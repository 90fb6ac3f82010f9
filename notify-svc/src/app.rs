//! Wiring: everything `main` and the tests start.

use crate::{
    config::Config,
    handler::Notifier,
    mail::Mailer,
    sent_log,
    webhook::{Deliverer, Egress},
};
use amqp_kit::{
    Publisher,
    consumer::{self, ConsumerConfig},
};
use std::{net::SocketAddr, time::Duration};
use svc_kit::{health::Health, service::Standard};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct App {
    config: Config,
    admin_listener: TcpListener,
    health: Health,
    notifier: Notifier,
    /// `None` without a media database (MEDIA_DATABASE_URL).
    deliverer: Option<Deliverer>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("admin_addr", &self.admin_listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = svc_kit::pg::pool(&config.database_url, 4, config.db_timeout, "notify-svc")?;
        svc_kit::pg::wait_for(&pool, Duration::from_secs(60)).await?;
        sent_log::migrate(&pool).await?;
        let mailer = Mailer::new(&config)?;
        let notified_queue = config.notified_queue.clone();
        let receipts = Publisher::with_topology(
            config.amqp_url.clone(),
            "notify-svc-receipts",
            config.publish_timeout,
            vec![config.topology.work_queue(&config.notified_queue)],
        );
        let deliverer = match &config.media_database_url {
            Some(url) => Some(deliverer(&config, url).await?),
            None => {
                tracing::warn!("MEDIA_DATABASE_URL is not set: webhooks are not delivered");
                None
            }
        };
        let (health, _grpc_health) = Health::new(&["rabbitmq", "postgres", "smtp"]).await;
        let admin_listener = svc_kit::grpc::bind(config.admin_addr).await?;
        tracing::info!(admin = %admin_listener.local_addr()?, "notify-svc listening");
        Ok(Self {
            config,
            admin_listener,
            health,
            notifier: Notifier {
                pool,
                mailer,
                receipts,
                notified_queue,
            },
            deliverer,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin_addr)
    }

    pub async fn run_until(self, token: CancellationToken) -> anyhow::Result<()> {
        let standard = Standard::start(
            self.admin_listener,
            &self.health,
            &token,
            // Readiness follows PostgreSQL and the SMTP server (RabbitMQ is
            // reported by the consumer loop).
            self.health
                .probes(
                    self.config.health_interval,
                    self.config.health_interval.max(Duration::from_secs(5)),
                )
                .check("postgres", self.notifier.pool.clone(), |pool| async move {
                    pool.get()
                        .await
                        .map_err(drop)?
                        .simple_query("SELECT 1")
                        .await
                        .map_err(drop)
                })
                .check("smtp", self.notifier.mailer.clone(), |mailer| async move {
                    mailer.reachable().await.then_some(()).ok_or(())
                })
                .run(token.clone()),
        );
        let cfg = ConsumerConfig {
            url: self.config.amqp_url.clone(),
            name: "notify-svc".into(),
            queue: self.config.topology.work_queue(&self.config.mp3_queue),
            also_declare: vec![self.config.topology.work_queue(&self.config.notified_queue)],
            concurrency: self.config.concurrency,
            grace: self.config.shutdown_grace,
        };
        let webhooks = self.deliverer.map(|deliverer| {
            let cfg = ConsumerConfig {
                url: self.config.amqp_url.clone(),
                name: "notify-svc-webhooks".into(),
                queue: amqp_kit::WorkQueue {
                    retry_delays: self.config.webhook_retry_delays.clone(),
                    ..self.config.topology.work_queue(&self.config.webhook_queue)
                },
                also_declare: Vec::new(),
                concurrency: self.config.webhook_concurrency,
                grace: self.config.shutdown_grace,
            };
            tokio::spawn(consumer::run(
                cfg,
                deliverer,
                self.health.clone(),
                token.clone(),
            ))
        });
        consumer::run(cfg, self.notifier, self.health.clone(), token).await;
        if let Some(w) = webhooks {
            let _ = w.await;
        }
        drop(standard);
        tracing::info!("notify-svc stopped");
        Ok(())
    }
}

/// The webhook deliverer: the media database (its migrations are the
/// jobs'; whoever starts first applies them) and the guarded HTTP client.
async fn deliverer(config: &Config, url: &svc_kit::config::Secret) -> anyhow::Result<Deliverer> {
    let jobs = media_store::Jobs::connect(
        &media_store::DatabaseArgs {
            database_url: url.clone(),
            db_pool_size: usize::from(config.webhook_concurrency.max(1)) + 1,
            db_timeout: config.db_timeout,
        },
        "notify-svc",
        // notify-svc moves no job and writes no event: it only reads and
        // settles deliveries, so no route is ever used.
        media_store::Routes {
            video_queue: String::new(),
            mp3_queue: config.mp3_queue.clone(),
            webhook_queue: config.webhook_queue.clone(),
            delete_sources: false,
        },
    )
    .await?;
    Ok(Deliverer {
        jobs,
        egress: Egress::new(config.webhook_egress.clone(), config.webhook_timeout)?,
        download_base_url: config.download_base_url.clone(),
    })
}

impl svc_kit::service::Service for App {
    const NAME: &'static str = "notify-svc";

    fn run_until(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        App::run_until(self, shutdown)
    }
}
