//! Helpers shared by the end-to-end tests (`tests/`): the REST client with
//! the tutorial's request shapes, sample videos, users, reading the email.

#![allow(clippy::unwrap_used, unreachable_pub)]

use mp3converter_proto::auth::v1::{
    CreateUserRequest, LoginRequest, auth_service_client::AuthServiceClient,
};
use std::{net::SocketAddr, path::Path, process::Command};
use tonic::Request;

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

/// Deletes a test's `video` and `mp3` work queues (with their retry and
/// dead-letter queues), declared with [`RETRY_DELAYS`].
pub async fn delete_queues(amqp_url: &str, video_queue: &str, mp3_queue: &str) {
    let topo = amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: RETRY_DELAYS
            .split(',')
            .map(|d| svc_kit::config::parse_duration(d).unwrap())
            .collect(),
    };
    test_kit::delete_work_queues(
        amqp_url,
        &[topo.work_queue(video_queue), topo.work_queue(mp3_queue)],
    )
    .await;
}

/// A 4-second H.264 + AAC clip.
pub const SAMPLE: &str = "-f lavfi -i testsrc=duration=4:size=160x120:rate=10 -f lavfi -i sine=frequency=440:duration=4 -shortest -c:v libx264 -pix_fmt yuv420p -c:a aac";

/// Makes `dir/name` with ffmpeg.
pub fn sample(dir: &Path, name: &str, ffmpeg_args: &str) -> std::path::PathBuf {
    let out = dir.join(name);
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

/// A new user, created by the admin through auth-svc; returns (email, password).
pub async fn create_user(auth: SocketAddr) -> (String, String) {
    let mut auth = AuthServiceClient::connect(format!("http://{auth}"))
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
    let email = format!("{}@e2e.test", test_kit::unique_name("user"));
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

/// The REST edge, called with the tutorial's request shapes.
#[derive(Debug)]
pub struct Rest {
    pub http: reqwest::Client,
    pub base: String,
}

impl Rest {
    pub fn new(http_addr: SocketAddr) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{http_addr}"),
        }
    }

    /// curl -X POST http://HOST/login -u EMAIL:PASSWORD
    pub async fn login(&self, email: &str, password: &str) -> String {
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
    pub async fn upload(&self, token: &str, name: &str, bytes: Vec<u8>) -> serde_json::Value {
        self.upload_with(token, name, bytes, &[]).await
    }

    /// The same, with extra request headers (e.g. `traceparent`).
    pub async fn upload_with(
        &self,
        token: &str,
        name: &str,
        bytes: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> serde_json::Value {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
        let mut req = self
            .http
            .post(format!("{}/upload", self.base))
            .bearer_auth(token)
            .multipart(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// GET with the bearer token; the response checked to be 200.
    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
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

/// The MP3 id in an email: the value of `fid=` in the download command.
pub fn fid_in(text: &str) -> String {
    let start = text.find("fid=").expect("a download command in the email") + 4;
    text[start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

/// (format name, duration in seconds) of a media file.
pub fn ffprobe(path: &Path) -> (String, f64) {
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
