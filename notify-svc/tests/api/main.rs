#![allow(unreachable_pub, clippy::unwrap_used)]

//! notify-svc against the stack's RabbitMQ, PostgreSQL and Mailpit (read
//! through its HTTP API), and against private Mailpits where a test needs
//! one configured its own way.

mod helpers;
mod private_mailpit;

mod content;
mod emails;
mod smtp_failures;
