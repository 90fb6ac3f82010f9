//! gateway-svc: the MediaService gRPC API and the REST edge in front of it.
//!
//! ```text
//! curl ──HTTP :8080──► rest (axum) ──gRPC (loopback)──► media (tonic) ──► GridFS, RabbitMQ
//!                        │ AuthLayer                      │ AuthLayer
//!                        └──────────────► auth-svc Validate ◄┘  (cached until exp)
//! ```

pub mod app;
pub mod auth;
pub mod config;
mod error;
mod media;
mod rest;
