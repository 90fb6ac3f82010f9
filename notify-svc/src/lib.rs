//! notify-svc. Emails users when their MP3 is ready (not implemented yet: serves health only).

use std::{net::SocketAddr, time::Duration};
use svc_kit::{config::parse_duration, health::Health};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "notify-svc",
    version,
    about = "Emails users when their MP3 is ready (not implemented yet: serves health only)"
)]
pub struct Config {
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9094")]
    pub admin_addr: SocketAddr,

    /// How long in-flight work may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub telemetry: svc_kit::telemetry::TelemetryArgs,
}

#[derive(Debug)]
pub struct App {
    admin_listener: TcpListener,
    health: Health,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (health, _grpc_health) = Health::new(&[]).await;
        let admin_listener = svc_kit::grpc::bind(config.admin_addr).await?;
        tracing::info!(admin = %admin_listener.local_addr()?, "notify-svc listening");
        Ok(Self {
            admin_listener,
            health,
        })
    }

    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.admin_listener.local_addr()?)
    }

    pub async fn run_until(self, token: CancellationToken) -> anyhow::Result<()> {
        svc_kit::admin::serve(
            self.admin_listener,
            svc_kit::admin::router(self.health),
            token,
        )
        .await?;
        Ok(())
    }
}
