//! Helpers shared by the end-to-end tests (`tests/`): sample videos, users,
//! reading the email, here; the REST client with the tutorial's request
//! shapes and paced gRPC uploads in `rest`, the stack's TLS side in `tls`, the
//! four services in-process in `mesh`.

#![allow(clippy::unwrap_used, unreachable_pub)]

use clap::Parser;
use std::{net::SocketAddr, path::Path, time::Duration};
use test_kit::{Stack, flags, mailpit::Mailpit, unique_name, users::Admin};
use tokio_util::sync::CancellationToken;
use tonic::Request;

mod mesh;
mod rest;
mod tls;

pub use mesh::Mesh;
pub use rest::{Rest, fid_in, grpc_upload_paced};
pub use tls::{TlsStack, tls_channel};

pub const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-e2e!";
pub const ADMIN: (&str, &str) = ("admin@e2e.test", "admin password 1");

/// Short retry delays, so retried messages come back within a test.
pub const RETRY_DELAYS: &str = "500ms,1s,2s";

/// How long a test waits for the journey's asynchronous steps.
pub const T: std::time::Duration = std::time::Duration::from_secs(90);

/// The text of the one email sent to `to` (waits for it, then checks that
/// no second one follows).
pub async fn only_email(mailpit: &test_kit::mailpit::Mailpit, to: &str) -> String {
    let msgs = test_kit::wait_until(&format!("an email to {to}"), T, || async {
        let m = mailpit.messages_to(to).await.ok()?;
        (!m.is_empty()).then_some(m)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        mailpit.messages_to(to).await.unwrap().len(),
        1,
        "exactly one email"
    );
    mailpit.message(&msgs[0].id).await.unwrap().text
}

/// Deletes a test's work queues (`video`, `mp3`, `notified`, with their retry
/// and dead-letter queues), declared with [`RETRY_DELAYS`].
pub async fn delete_queues(amqp_url: &str, queues: &[&str]) {
    let topo = amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: RETRY_DELAYS
            .split(',')
            .map(|d| svc_kit::config::parse_duration(d).unwrap())
            .collect(),
    };
    // Each queue's hint queue too (uploads announced on `<video>.live`).
    let hints = queues.iter().map(|q| topo.hint_queue(&format!("{q}.live")));
    test_kit::delete_work_queues(
        amqp_url,
        &queues
            .iter()
            .map(|q| topo.work_queue(q))
            .chain(hints)
            .collect::<Vec<_>>(),
    )
    .await;
}

/// A 4-second H.264 + AAC clip.
pub const SAMPLE: &str = "-f lavfi -i testsrc=duration=4:size=160x120:rate=10 -f lavfi -i sine=frequency=440:duration=4 -shortest -c:v libx264 -pix_fmt yuv420p -c:a aac";

/// Makes `dir/name` with ffmpeg.
pub fn sample(dir: &Path, name: &str, ffmpeg_args: &str) -> std::path::PathBuf {
    test_kit::clips::generate(dir, name, ffmpeg_args)
}

/// A new user, created by the admin through auth-svc; returns (email, password).
pub async fn create_user(auth: SocketAddr) -> (String, String) {
    new_user(Admin::connect(auth, ADMIN).await.unwrap()).await
}

/// [`create_user`] over `channel` (e.g. mutual TLS with the gateway's
/// certificate: auth-svc then accepts no one else).
pub async fn create_user_over(channel: tonic::transport::Channel) -> (String, String) {
    new_user(Admin::login(channel, ADMIN).await.unwrap()).await
}

async fn new_user(admin: Admin) -> (String, String) {
    let email = format!("{}@e2e.test", test_kit::unique_name("user"));
    let password = "journey password".to_owned();
    admin.create_user(&email, &password).await.unwrap();
    (email, password)
}

/// (format name, duration in seconds) of a media file.
pub use test_kit::clips::probe as ffprobe;
