#![allow(unreachable_pub, clippy::unwrap_used)]

//! Black-box tests of auth-svc over gRPC, each against a fresh database on
//! the stack's real PostgreSQL (`scripts/stack up`).

mod helpers;

mod abuse;
mod create_user;
mod login;
mod operations;
mod revocation;
mod validate;
