#![allow(unreachable_pub, clippy::unwrap_used)]

//! The tutorial's journey, end to end, with the four real services started
//! in-process against the stack: log in, upload, get the email, download the
//! MP3 named in it, check it with ffprobe. Once over REST with the tutorial's
//! request shapes, once over gRPC with tonic clients, and once with a file
//! that is not a video.

use clap::Parser;
use futures::StreamExt;
use mp3converter_proto::{
    auth::v1::{CreateUserRequest, LoginRequest, auth_service_client::AuthServiceClient},
    media::v1::{
        DownloadRequest, GetJobRequest, JobState, UploadCommit, UploadMetadata, UploadRequest,
        download_response, media_service_client::MediaServiceClient, upload_request::Payload,
    },
};
use std::{net::SocketAddr, path::Path, process::Command, time::Duration};
use test_kit::{Stack, mailpit::Mailpit, unique_name, wait_until};
use tokio_util::sync::CancellationToken;
use tonic::Request;

const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-e2e!";
const ADMIN: (&str, &str) = ("admin@e2e.test", "admin password 1");
const T: Duration = Duration::from_secs(90);

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
        let delays = "500ms,1s,2s";
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
            converter_svc::config::Config::try_parse_from([
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
            .unwrap(),
        )
        .await
        .unwrap();
        tasks.push(tokio::spawn(converter.run_until(token.clone())));

        let notify_db = stack.fresh_database("e2enotify").await;
        let smtp_port = stack.smtp_port.to_string();
        let base = format!("http://{http}");
        let notify = notify_svc::app::App::build(
            notify_svc::config::Config::try_parse_from([
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
            .unwrap(),
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

    /// A new user, created by the admin; returns (email, password).
    async fn user(&self) -> (String, String) {
        let mut auth = AuthServiceClient::connect(format!("http://{}", self.auth))
            .await
            .unwrap();
        let admin = auth
            .login(LoginRequest {
                email: ADMIN.0.into(),
                password: ADMIN.1.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let email = format!("{}@e2e.test", unique_name("user"));
        let password = "journey password".to_owned();
        let mut req = Request::new(CreateUserRequest {
            email: email.clone(),
            password: password.clone(),
            admin: false,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {admin}").parse().unwrap());
        auth.create_user(req).await.unwrap();
        (email, password)
    }

    fn sample(&self, name: &str, ffmpeg_args: &str) -> std::path::PathBuf {
        let out = self.dir.path().join(name);
        let ok = Command::new("ffmpeg")
            .args(["-y", "-hide_banner", "-loglevel", "error"])
            .args(ffmpeg_args.split_whitespace())
            .arg(&out)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        out
    }

    /// The one email sent to `to`, its text body.
    async fn email(&self, to: &str) -> String {
        let msgs = wait_until(&format!("an email to {to}"), T, || async {
            let m = self.mailpit.messages_to(to).await.ok()?;
            (!m.is_empty()).then_some(m)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            self.mailpit.messages_to(to).await.unwrap().len(),
            1,
            "exactly one email"
        );
        self.mailpit.message(&msgs[0].id).await.unwrap().text
    }

    async fn stop(self) {
        self.token.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
        let topo = amqp_kit::TopologyArgs {
            delivery_limit: 5,
            retry_delays: ["500ms", "1s", "2s"]
                .iter()
                .map(|d| svc_kit::config::parse_duration(d).unwrap())
                .collect(),
        };
        test_kit::delete_work_queues(
            &self.stack.amqp_url,
            &[
                topo.work_queue(&self.video_queue),
                topo.work_queue(&self.mp3_queue),
            ],
        )
        .await;
    }
}

/// The REST edge, called with the tutorial's request shapes.
struct Rest {
    http: reqwest::Client,
    base: String,
}

impl Rest {
    fn new(mesh: &Mesh) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{}", mesh.http),
        }
    }

    /// curl -X POST http://HOST/login -u EMAIL:PASSWORD
    async fn login(&self, email: &str, password: &str) -> String {
        let res = self
            .http
            .post(format!("{}/login", self.base))
            .basic_auth(email, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// curl -X POST -F 'file=@./NAME' -H 'Authorization: Bearer TOKEN' http://HOST/upload
    async fn upload(&self, token: &str, name: &str, bytes: Vec<u8>) -> serde_json::Value {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
        let res = self
            .http
            .post(format!("{}/upload", self.base))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// GET with the bearer token; the response checked to be 200.
    async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        res
    }
}

fn authed<T>(bearer: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    r
}

/// The MP3 id in an email: the value of `fid=` in the download command.
fn fid_in(text: &str) -> String {
    let start = text.find("fid=").expect("a download command in the email") + 4;
    text[start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

fn ffprobe(path: &Path) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=format_name,duration",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_owned()
    };
    (get("format_name"), get("duration").parse().unwrap_or(-1.0))
}

const SAMPLE: &str = "-f lavfi -i testsrc=duration=4:size=160x120:rate=10 -f lavfi -i sine=frequency=440:duration=4 -shortest -c:v libx264 -pix_fmt yuv420p -c:a aac";

#[tokio::test]
async fn the_tutorial_journey_over_rest() {
    let mesh = Mesh::start().await;
    let (email, password) = mesh.user().await;
    let video = mesh.sample("test.mkv", SAMPLE);
    let rest = Rest::new(&mesh);

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
    let rest = Rest::new(&mesh);
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
