//! The built [`App`] running: the janitor, the outbox relay, the watchers'
//! and receipts' consumers and readiness probes beside the three servers,
//! until the token; then the drain.

use super::{App, STREAMING};
use crate::{
    janitor::{self, Janitor},
    receipts::Receipts,
};
use amqp_kit::consumer::ConsumerConfig;
use std::time::Duration;
use svc_kit::{
    limits::{BodyIdleTimeoutLayer, InFlightLimitLayer, Protocol},
    service::Standard,
};
use tokio_util::sync::CancellationToken;

impl App {
    fn janitor(&self) -> Janitor {
        let j = &self.config.janitor;
        let instance = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into()),
            uuid::Uuid::new_v4().simple()
        );
        Janitor {
            media: self.media.clone(),
            lease: self
                .jobs
                .lease("janitor", &instance, j.janitor_interval * 3),
            settings: janitor::Settings {
                interval: j.janitor_interval,
                stuck_after: j.stuck_after,
                max_republish: j.max_republish,
                max_job_age: j.max_job_age,
                upload_stale: j.upload_stale_after,
                orphan_age: j.orphan_age,
                orphan_interval: j.orphan_interval,
                tombstone_age: j.tombstone_age,
                delete_source: j.delete_source,
                unnotified_after: j.unnotified_after,
                max_reannounce: j.max_reannounce,
            },
        }
    }

    pub async fn run_until(self, token: CancellationToken) -> anyhow::Result<()> {
        let janitor = tokio::spawn(self.janitor().run(token.clone()));
        let relay = tokio::spawn(
            media_store::outbox::Relay::new(&self.jobs, self.publisher.clone()).run(token.clone()),
        );
        let standard = Standard::start(
            self.admin_listener,
            &self.health,
            &token,
            // Each check must answer within a second, so a dead
            // dependency shows within about two.
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
                .check("rabbitmq", self.publisher.clone(), |p| async move {
                    p.check().await
                })
                .run(token.clone()),
        );
        let watch_listener = {
            let hub = self.media.hub.clone();
            tokio::spawn(amqp_kit::broadcast::listen(
                self.config.amqp_url.clone(),
                "gateway-svc-watch".into(),
                self.config.job_events_exchange.clone(),
                token.clone(),
                move |heard| hub.heard(heard),
            ))
        };
        let receipts = tokio::spawn(amqp_kit::consumer::run(
            ConsumerConfig {
                url: self.config.amqp_url.clone(),
                name: "gateway-svc-receipts".into(),
                queue: self
                    .config
                    .video_topology
                    .work_queue(&self.config.notified_queue),
                also_declare: Vec::new(),
                concurrency: 4,
                grace: self.config.shutdown_grace,
            },
            Receipts {
                jobs: self.jobs.clone(),
            },
            self.health.clone(),
            token.clone(),
        ));
        let limits = &self.config.listener;
        let rest = self
            .rest
            .layer(BodyIdleTimeoutLayer::new(
                limits.body_idle_timeout,
                Protocol::Http,
            ))
            .layer(InFlightLimitLayer::new(
                limits.max_requests_in_flight,
                Protocol::Http,
            ));
        if let Some(tls) = &self.tls {
            tls.spawn_reloader(self.background.clone());
        }
        let http = svc_kit::serve::http(
            self.http_listener,
            rest,
            limits,
            self.edge_tls.clone(),
            "rest",
            token.clone(),
        );
        let grpc = svc_kit::grpc::serve_with(
            self.routes,
            self.grpc_listener,
            limits,
            STREAMING,
            self.tls.as_ref(),
            token.clone(),
        );
        // Converters only: under mTLS the follow listener admits their
        // identity, not the users' clients.
        let follow_tls = self
            .tls
            .as_ref()
            .map(|t| t.admitting(&self.config.follow_allowed_clients));
        let follow = svc_kit::grpc::serve_with(
            self.follow_routes,
            self.follow_listener,
            limits,
            STREAMING,
            follow_tls.as_ref(),
            token.clone(),
        );
        let served = svc_kit::shutdown::drain_within(
            &token,
            self.config.shutdown_grace,
            Box::pin(async {
                tokio::try_join!(
                    async { http.await.map_err(anyhow::Error::from) },
                    grpc,
                    follow
                )
            }),
        )
        .await;
        // Uploads still running past the grace period are aborted, so their
        // chunks are removed now rather than orphaned by the exit.
        self.media.abort_uploads.cancel();
        self.media.uploads.close();
        if tokio::time::timeout(Duration::from_secs(5), self.media.uploads.wait())
            .await
            .is_err()
        {
            tracing::warn!("uploads did not abort in time; the janitor will clean up after them");
        }
        drop(standard);
        watch_listener.abort();
        let _ = janitor.await;
        let _ = receipts.await;
        // Events of the last transitions go out before we stop (the next
        // relay, here or elsewhere, would send them anyway).
        let _ = relay.await;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            media_store::outbox::Relay::new(&self.jobs, self.publisher.clone()).drain(),
        )
        .await;
        self.background.cancel();
        if let Some(res) = served {
            res.map(drop)?;
        }
        tracing::info!("gateway-svc stopped");
        Ok(())
    }
}

impl svc_kit::service::Service for App {
    const NAME: &'static str = "gateway-svc";

    fn run_until(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        App::run_until(self, shutdown)
    }
}
