//! Wiring: everything `main` and the tests start.

use crate::{
    config::Config, convert::Settings, handler::Converter, sweeper::Sweeper, workdir::WorkDir,
};
use amqp_kit::{
    Publisher,
    broadcast::Broadcaster,
    consumer::{self, ConsumerConfig},
};
use media_store::{Jobs, Store};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use svc_kit::{health::Health, service::Standard};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct App {
    config: Config,
    admin_listener: TcpListener,
    health: Health,
    store: Store,
    jobs: Jobs,
    publisher: Publisher,
    converter: Converter,
    sweeps: tokio::sync::mpsc::Receiver<media_store::mongodb::bson::oid::ObjectId>,
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
        let store = Store::new(
            &config.mongodb_uri,
            &config.mongodb_database,
            "converter-svc",
            media_store::Timeouts::default(),
        )
        .await?;
        let instance = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "converter".into()),
            uuid::Uuid::new_v4().simple()
        );
        store.ensure_indexes().await?;
        let jobs = Jobs::connect(
            &config.jobs_db,
            "converter-svc",
            media_store::Routes {
                video_queue: config.video_queue.clone(),
                mp3_queue: config.mp3_queue.clone(),
                webhook_queue: config.webhook_queue.clone(),
                delete_sources: config.delete_source,
            },
        )
        .await?;
        let work_root = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        let (work, stale) = WorkDir::create(&work_root, &instance, config.max_spool_bytes)?;
        let tls = config.tls.load()?;
        if stale > 0 {
            tracing::info!(stale, "removed work directories of converters that died");
        }
        let publisher = Publisher::with_topology(
            config.amqp_url.clone(),
            "converter-svc",
            Duration::from_secs(10),
            vec![
                config.topology.work_queue(&config.mp3_queue),
                config.topology.outlet(&config.webhook_queue),
            ],
        );
        let (sweeper, sweeps) = Sweeper::new();
        let converter = Converter {
            store: store.clone(),
            jobs: jobs.clone(),
            instance,
            lease_ttl: config.lease_ttl,
            job_events: Broadcaster::start(
                config.amqp_url.clone(),
                "converter-svc-events",
                config.job_events_exchange.clone(),
            ),
            settings: Settings {
                job_timeout: config.job_timeout,
                max_input_duration: config.max_input_duration,
                max_output_bytes: config.max_output_size,
                tolerance: config.duration_tolerance,
                allow_audio_only: config.allow_audio_only,
                progress_interval: config.progress_interval,
            },
            work: Arc::new(work),
            retention: (!config.mp3_retention.is_zero()).then_some(config.mp3_retention),
            delete_source: config.delete_source,
            sweeper,
            active: Arc::default(),
            live: crate::live::Settings {
                poll: Duration::from_millis(100),
                stall: config.live_stall,
                commit_wait: Duration::from_secs(15),
            },
            connect: crate::live::Connect::new(tls.clone()),
        };
        let (health, _grpc_health) = Health::new(&["rabbitmq", "mongodb", "postgresql"]).await;
        let admin_listener = svc_kit::grpc::bind(config.admin_addr).await?;
        tracing::info!(admin = %admin_listener.local_addr()?, "converter-svc listening");
        Ok(Self {
            config,
            admin_listener,
            health,
            store,
            jobs,
            publisher,
            converter,
            sweeps,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin_addr)
    }

    /// Consumes until `token` is cancelled; a conversion in progress then has
    /// the grace period to finish before it is abandoned and requeued.
    pub async fn run_until(self, token: CancellationToken) -> anyhow::Result<()> {
        let relay = tokio::spawn(
            media_store::outbox::Relay::new(&self.jobs, self.publisher.clone()).run(token.clone()),
        );
        self.converter.connect.reload_until(token.clone());
        let standard = Standard::start(
            self.admin_listener,
            &self.health,
            &token,
            // Readiness follows GridFS and the job database (RabbitMQ is
            // reported by the consumer loop).
            self.health
                .probes(self.config.health_interval, Duration::from_secs(1))
                .check(
                    "mongodb",
                    self.store.clone(),
                    |s| async move { s.ping().await },
                )
                .check("postgresql", self.jobs.clone(), |j| async move {
                    j.ping().await
                })
                .run(token.clone()),
        );
        let cfg = ConsumerConfig {
            url: self.config.amqp_url.clone(),
            name: "converter-svc".into(),
            queue: self.config.topology.work_queue(&self.config.video_queue),
            also_declare: vec![
                self.config.topology.work_queue(&self.config.mp3_queue),
                self.config.topology.outlet(&self.config.webhook_queue),
            ],
            concurrency: self.config.concurrency,
            grace: self.config.shutdown_grace,
        };
        let sweeper = tokio::spawn(crate::sweeper::run(
            self.store.clone(),
            self.jobs.clone(),
            self.sweeps,
        ));
        let live = (self.config.live_concurrency > 0).then(|| {
            let cfg = ConsumerConfig {
                name: "converter-svc-live".into(),
                queue: crate::live::queue(&self.config),
                also_declare: Vec::new(),
                concurrency: self.config.live_concurrency,
                ..cfg.clone()
            };
            // Its own readiness: a hint queue it cannot reach makes the
            // instance no less able to convert.
            let converter = crate::handler::Live(self.converter.clone());
            let token = token.clone();
            tokio::spawn(async move {
                let (health, _) = Health::new(&["rabbitmq"]).await;
                consumer::run(cfg, converter, health, token).await;
            })
        });
        consumer::run(cfg, self.converter, self.health.clone(), token).await;
        if let Some(live) = live {
            let _ = live.await;
        }
        // The consumer has dropped every handle: the sweeper ends once the
        // sources already queued are deleted, or is left to the janitor.
        if tokio::time::timeout(self.config.shutdown_grace, sweeper)
            .await
            .is_err()
        {
            tracing::info!("sources still queued for deletion are left to the janitor");
        }
        // The outcomes of the last conversions go out before we stop (any
        // relay would send them later anyway).
        let _ = relay.await;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            media_store::outbox::Relay::new(&self.jobs, self.publisher.clone()).drain(),
        )
        .await;
        drop(standard);
        tracing::info!("converter-svc stopped");
        Ok(())
    }
}

impl svc_kit::service::Service for App {
    const NAME: &'static str = "converter-svc";

    fn run_until(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        App::run_until(self, shutdown)
    }
}
