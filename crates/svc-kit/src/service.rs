//! One way to start a service: [`serve`] runs it with telemetry until
//! SIGTERM/SIGINT, and [`Standard`] runs the tasks every service has beside
//! its work. A service's own `lib.rs`/`app.rs` keep only what is its own.

use crate::{admin, health::Health, shutdown, telemetry};
use std::future::Future;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// A built service: it runs until told to stop, then drains.
pub trait Service: Send + Sized + 'static {
    /// Its name in logs, traces and metrics.
    const NAME: &'static str;

    fn run_until(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How `main` runs a service: telemetry up, `build` it, run it until
/// SIGTERM/SIGINT, drained, telemetry flushed. A failure is logged once.
pub async fn serve<S, F, B>(telemetry: &telemetry::TelemetryArgs, build: F) -> anyhow::Result<()>
where
    S: Service,
    F: FnOnce() -> B,
    B: Future<Output = anyhow::Result<S>>,
{
    // Boxed: a service's whole life is one large future.
    telemetry::run(
        S::NAME,
        telemetry,
        Box::pin(async { build().await?.run_until(shutdown::on_signal()).await }),
    )
    .await
}

/// The tasks every service runs beside its work: the admin listener
/// (`/livez`, `/readyz`, `/metrics`), the readiness probe of its
/// dependencies, and readiness going NOT_SERVING as shutdown begins. They
/// stop when this is dropped.
#[derive(Debug)]
pub struct Standard {
    admin: JoinHandle<std::io::Result<()>>,
    probe: JoinHandle<()>,
}

impl Standard {
    pub fn start(
        admin: TcpListener,
        health: &Health,
        shutdown: &CancellationToken,
        probe: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let admin = tokio::spawn(admin::serve(
            admin,
            admin::router(health.clone()),
            shutdown.clone(),
        ));
        let probe = tokio::spawn(probe);
        health.drain_on(shutdown.clone());
        Self { admin, probe }
    }
}

impl Drop for Standard {
    fn drop(&mut self) {
        self.probe.abort();
        self.admin.abort();
    }
}
