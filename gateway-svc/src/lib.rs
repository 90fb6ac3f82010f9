//! gateway-svc: the MediaService gRPC API and the REST edge in front of it.
//!
//! ```text
//! curl ──HTTP :8080──► rest (axum) ──gRPC (in-process)──► media (tonic) ──► GridFS, RabbitMQ
//!                        │ AuthLayer                      │ AuthLayer
//!                        └──────────────► auth-svc Validate ◄┘  (cached until exp)
//! ```

pub mod app;
pub mod auth;
pub mod config;
mod error;
mod follow;
mod janitor;
mod media;
mod names;
mod quota;
mod receipts;
mod rest;
mod watch;
mod webhooks;

/// The service as `main` runs it: until SIGTERM/SIGINT, then drained.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let telemetry = config.telemetry.clone();
    svc_kit::service::serve(&telemetry, || app::App::build(config)).await
}
