#![allow(unreachable_pub, clippy::unwrap_used)]

//! Black-box tests of gateway-svc through REST and gRPC, with auth-svc
//! in-process and the stack's real PostgreSQL, RabbitMQ and GridFS server.

mod helpers;

mod auth;
mod jobs;
mod lifecycle;
mod limits;
mod openapi;
mod probes;
mod resumable;
mod revocation;
mod transfer;
