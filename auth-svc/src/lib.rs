//! auth-svc: users in PostgreSQL, Login that returns a JWT, Validate for the
//! gateway, CreateUser for admins.

pub mod app;
pub mod cli;
pub mod config;
mod db;
mod domain;
mod error;
mod grpc;
mod password;
pub mod token;
