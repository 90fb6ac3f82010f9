#![allow(unreachable_pub, clippy::unwrap_used)]

//! The tutorial's journey, end to end, with the four real services started
//! in-process against the stack: log in, upload, get the email, download the
//! MP3 named in it, check it with ffprobe. Once over REST with the tutorial's
//! request shapes, once over gRPC with tonic clients, and once with a file
//! that is not a video.

use clap::Parser;
use e2e::{ADMIN, Rest, SAMPLE, SECRET, ffprobe, fid_in};
use futures::StreamExt;
use mp3converter_proto::{
    auth::v1::{LoginRequest, auth_service_client::AuthServiceClient},
    media::v1::{
        DownloadRequest, GetJobRequest, JobState, UploadCommit, UploadMetadata, UploadRequest,
        download_response, media_service_client::MediaServiceClient, upload_request::Payload,
    },
};
use std::net::SocketAddr;
use test_kit::{Stack, mailpit::Mailpit, unique_name};
use tokio_util::sync::CancellationToken;
use tonic::Request;

struct Mesh {
    auth: SocketAddr,
    grpc: SocketAddr,
    http: SocketAddr,
    video_queue: String,
    mp3_queue: String,
    stack: Stack,
    mailpit: Mailpit,
    token: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: tempfile::TempDir,
}

impl Mesh {
    async fn start() -> Self {
        test_kit::init_tracing();
        let stack = Stack::from_env();
        let token = CancellationToken::new();
        let mongo_db = unique_name("e2e").replace('-', "_");
        let video_queue = unique_name("video");
        let mp3_queue = unique_name("mp3");
        let delays = e2e::RETRY_DELAYS;
        let mut tasks = Vec::new();

        let auth_db = stack.fresh_database("e2eauth").await;
        let auth = auth_svc::app::App::build(
            auth_svc::config::Cli::try_parse_from([
                "auth-svc",
                "--grpc-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--database-url",
                &auth_db,
                "--jwt-secret",
                SECRET,
                "--admin-email",
                ADMIN.0,
                "--admin-password",
                ADMIN.1,
            ])
            .unwrap()
            .config,
        )
        .await
        .unwrap();
        let auth_addr = auth.grpc_addr();
        tasks.push(tokio::spawn(auth.run_until(token.clone())));

        let auth_url = format!("http://{auth_addr}");
        let gateway = gateway_svc::app::App::build(
            gateway_svc::config::Config::try_parse_from([
                "gateway-svc",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--auth-url",
                &auth_url,
                "--mongodb-uri",
                &stack.mongodb_uri,
                "--mongodb-database",
                &mongo_db,
                "--amqp-url",
                &stack.amqp_url,
                "--video-queue",
                &video_queue,
                "--mp3-queue",
                &mp3_queue,
                "--amqp-retry-delays",
                delays,
            ])
            .unwrap(),
        )
        .await
        .unwrap();
        let (grpc, http) = (gateway.grpc_addr(), gateway.http_addr());
        tasks.push(tokio::spawn(gateway.run_until(token.clone())));

        let converter = converter_svc::app::App::build(
            converter_svc::config::Cli::try_parse_from([
                "converter-svc",
                "--admin-addr",
                "127.0.0.1:0",
                "--amqp-url",
                &stack.amqp_url,
                "--video-queue",
                &video_queue,
                "--mp3-queue",
                &mp3_queue,
                "--amqp-retry-delays",
                delays,
                "--mongodb-uri",
                &stack.mongodb_uri,
                "--mongodb-database",
                &mongo_db,
            ])
            .unwrap()
            .config,
        )
        .await
        .unwrap();
        tasks.push(tokio::spawn(converter.run_until(token.clone())));

        let notify_db = stack.fresh_database("e2enotify").await;
        let smtp_port = stack.smtp_port.to_string();
        let base = format!("http://{http}");
        let notify = notify_svc::app::App::build(
            notify_svc::config::Cli::try_parse_from([
                "notify-svc",
                "--admin-addr",
                "127.0.0.1:0",
                "--amqp-url",
                &stack.amqp_url,
                "--mp3-queue",
                &mp3_queue,
                "--amqp-retry-delays",
                delays,
                "--database-url",
                &notify_db,
                "--smtp-host",
                &stack.smtp_host,
                "--smtp-port",
                &smtp_port,
                "--smtp-tls",
                "none",
                "--download-base-url",
                &base,
            ])
            .unwrap()
            .config,
        )
        .await
        .unwrap();
        tasks.push(tokio::spawn(notify.run_until(token.clone())));

        Self {
            auth: auth_addr,
            grpc,
            http,
            video_queue,
            mp3_queue,
            mailpit: Mailpit::new(&stack.mailpit_api_url),
            stack,
            token,
            tasks,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn user(&self) -> (String, String) {
        e2e::create_user(self.auth).await
    }

    fn sample(&self, name: &str, ffmpeg_args: &str) -> std::path::PathBuf {
        e2e::sample(self.dir.path(), name, ffmpeg_args)
    }

    /// The one email sent to `to`, its text body.
    async fn email(&self, to: &str) -> String {
        e2e::only_email(&self.mailpit, to).await
    }

    async fn stop(self) {
        self.token.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
        e2e::delete_queues(&self.stack.amqp_url, &self.video_queue, &self.mp3_queue).await;
    }
}

fn authed<T>(bearer: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    r
}

#[tokio::test]
async fn the_tutorial_journey_over_rest() {
    let mesh = Mesh::start().await;
    let (email, password) = mesh.user().await;
    let video = mesh.sample("test.mkv", SAMPLE);
    let rest = Rest::new(mesh.http);

    let token = rest.login(&email, &password).await;
    let job = rest
        .upload(&token, "test.mkv", std::fs::read(&video).unwrap())
        .await;

    // The email names the MP3.
    let text = mesh.email(&email).await;
    let fid = fid_in(&text);
    assert!(
        text.contains(&format!("{}/download?fid={fid}", rest.base)),
        "{text}"
    );

    // curl --output out.mp3 -X GET -H 'Authorization: Bearer TOKEN' "http://HOST/download?fid=ID"
    let res = rest.get(&token, &format!("/download?fid={fid}")).await;
    let out = mesh.dir.path().join("out.mp3");
    std::fs::write(&out, res.bytes().await.unwrap()).unwrap();
    let (format, duration) = ffprobe(&out);
    assert_eq!(format, "mp3");
    assert!((duration - 4.0).abs() < 0.2, "{duration}");

    let job_id = job["job_id"].as_str().unwrap();
    let done: serde_json::Value = rest
        .get(&token, &format!("/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["state"], "done");
    assert_eq!(done["mp3_id"], fid.as_str());
    mesh.stop().await;
}

#[tokio::test]
async fn the_journey_over_grpc() {
    let mesh = Mesh::start().await;
    let (email, password) = mesh.user().await;
    let video = std::fs::read(mesh.sample("clip.mp4", SAMPLE)).unwrap();
    let mut auth = AuthServiceClient::connect(format!("http://{}", mesh.auth))
        .await
        .unwrap();
    let token = auth
        .login(LoginRequest {
            email: email.clone(),
            password,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let bearer = format!("Bearer {token}");
    let mut media = MediaServiceClient::connect(format!("http://{}", mesh.grpc))
        .await
        .unwrap();

    // Client-streaming upload: metadata, 64 KiB chunks, commit.
    let mut msgs = vec![UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: "clip.mp4".into(),
            content_type: "video/mp4".into(),
            declared_size_bytes: Some(video.len() as u64),
            options: None,
        })),
    }];
    msgs.extend(video.chunks(64 << 10).map(|c| UploadRequest {
        payload: Some(Payload::Chunk(bytes::Bytes::copy_from_slice(c))),
    }));
    msgs.push(UploadRequest {
        payload: Some(Payload::Commit(UploadCommit {
            total_bytes: video.len() as u64,
        })),
    });
    let job = media
        .upload(authed(&bearer, futures::stream::iter(msgs)))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let text = mesh.email(&email).await;
    let fid = fid_in(&text);
    let got = media
        .get_job(authed(
            &bearer,
            GetJobRequest {
                job_id: job.job_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(got.state, JobState::Done as i32);
    assert_eq!(got.mp3_id, fid);

    // Server-streaming download: metadata, then chunks.
    let mut stream = media
        .download(authed(
            &bearer,
            DownloadRequest {
                mp3_id: fid.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    let mut size = 0;
    while let Some(msg) = stream.next().await {
        match msg.unwrap().payload.unwrap() {
            download_response::Payload::Metadata(m) => size = m.size_bytes,
            download_response::Payload::Chunk(c) => bytes.extend_from_slice(&c),
        }
    }
    assert_eq!(bytes.len() as u64, size);
    let out = mesh.dir.path().join("grpc.mp3");
    std::fs::write(&out, &bytes).unwrap();
    let (format, duration) = ffprobe(&out);
    assert_eq!(format, "mp3");
    assert!((duration - 4.0).abs() < 0.2, "{duration}");
    mesh.stop().await;
}

#[tokio::test]
async fn a_file_that_is_not_a_video_ends_in_a_failure_email() {
    let mesh = Mesh::start().await;
    let (email, password) = mesh.user().await;
    let rest = Rest::new(mesh.http);
    let token = rest.login(&email, &password).await;
    let job = rest
        .upload(
            &token,
            "notes.mkv",
            b"just some text, not a video\n".repeat(1000),
        )
        .await;
    let text = mesh.email(&email).await;
    assert!(text.contains("could not convert \"notes.mkv\""), "{text}");
    assert!(text.contains("not a media file"), "{text}");

    let job_id = job["job_id"].as_str().unwrap();
    let failed: serde_json::Value = rest
        .get(&token, &format!("/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["failure_reason"]
            .as_str()
            .unwrap()
            .contains("not a media file")
    );

    // Nothing left in the video queue: the job was acked, not requeued.
    let conn = amqp_kit::connect(
        &svc_kit::config::Secret::new(mesh.stack.amqp_url.clone()),
        "e2e",
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            mesh.video_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    assert_eq!(q.consumer_count(), 1);
    mesh.stop().await;
}
