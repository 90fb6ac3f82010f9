//! Plumbing shared by every service of the mesh, and nothing else: no business
//! logic lives here.
//!
//! - [`config`]: clap arguments read from the environment (`--help` lists
//!   them), and [`config::Secret`] for values that must never be logged.
//! - [`telemetry`]: one `tracing` init per process (text locally, JSON in the
//!   cluster, trace ids on every line; OTLP export when configured).
//! - [`observe`]: server/client spans with W3C trace-context propagation, and
//!   request metrics, as tower layers.
//! - [`shutdown`]: SIGTERM/SIGINT as a future and as a cancellation token.
//! - [`health`]: readiness of a service's dependencies, reported over
//!   grpc.health.v1 and over HTTP.
//! - [`admin`]: the HTTP listener for `/livez`, `/readyz` and `/metrics`.
//! - [`service`]: how every service starts and runs ([`service::serve`]),
//!   and the tasks each runs beside its work ([`service::Standard`]).
//! - [`grpc`]: reflection services and serving helpers.
//! - [`serve`]: serving HTTP with the listener limits of [`limits`]
//!   (timeouts, connection and request limits).
//! - [`tls`]: mutual TLS for the gRPC hops, reloaded from disk.
//! - [`runtime`]: how a service's `main` starts (allocator tuned, Tokio
//!   runtime).
//! - [`email`]: the one grammar of an email address.
//! - [`error`]: the one mapping between gRPC codes and HTTP statuses, and the
//!   JSON error body.

pub mod accept;
pub mod admin;
pub mod config;
pub mod email;
pub mod error;
pub mod grpc;
pub mod health;
pub mod limits;
pub mod observe;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod runtime;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
