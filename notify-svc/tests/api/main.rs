#![allow(unreachable_pub, clippy::unwrap_used)]

//! notify-svc against the stack's RabbitMQ, PostgreSQL and Mailpit (read
//! through its HTTP API).

mod helpers;

mod emails;
