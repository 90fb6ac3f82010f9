//! Helpers shared by the end-to-end tests (`tests/`): the REST client with
//! the tutorial's request shapes, sample videos, users, reading the email.

#![allow(clippy::unwrap_used, unreachable_pub)]

use clap::Parser;
use std::{net::SocketAddr, path::Path, time::Duration};
use test_kit::{Stack, flags, mailpit::Mailpit, unique_name, users::Admin};
use tokio_util::sync::CancellationToken;
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

/// A gRPC upload sent the way a client on a slow link sends it: metadata,
/// `pieces` chunks with `pause` between them, then the commit, unless `cut`
/// (the client goes away after that many pieces).
pub async fn grpc_upload_paced(
    grpc: SocketAddr,
    token: &str,
    name: &str,
    bytes: &[u8],
    pieces: usize,
    pause: Duration,
    cut: Option<usize>,
) -> Result<mp3converter_proto::media::v1::Job, tonic::Status> {
    use mp3converter_proto::media::v1::{
        UploadCommit, UploadMetadata, UploadRequest, media_service_client::MediaServiceClient,
        upload_request::Payload,
    };
    let mut media = MediaServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(4);
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let call = tokio::spawn(async move { media.upload(req).await });
    let send = |p| tx.send(UploadRequest { payload: Some(p) });
    send(Payload::Metadata(UploadMetadata {
        filename: name.to_owned(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let size = bytes.len().div_ceil(pieces.max(1)).max(1);
    for (i, part) in bytes.chunks(size).enumerate() {
        if cut == Some(i) {
            drop(tx);
            return call.await.unwrap().map(|r| r.into_inner().job.unwrap());
        }
        for c in part.chunks(1 << 20) {
            send(Payload::Chunk(bytes::Bytes::copy_from_slice(c)))
                .await
                .unwrap();
        }
        tokio::time::sleep(pause).await;
    }
    send(Payload::Commit(UploadCommit {
        total_bytes: bytes.len() as u64,
    }))
    .await
    .unwrap();
    drop(tx);
    call.await.unwrap().map(|r| r.into_inner().job.unwrap())
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
pub use test_kit::clips::probe as ffprobe;

/// The stack's development certificates (`scripts/stack certs`, in
/// `STACK_TLS_DIR`) and its TLS endpoints.
#[derive(Debug, Clone)]
pub struct TlsStack {
    pub dir: std::path::PathBuf,
    /// PostgreSQL's URL without database, TLS parameters to add after it.
    pub pg_params: String,
    pub amqps_url: String,
    pub mongodb_tls_uri: String,
}

impl TlsStack {
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: run `eval \"$(scripts/stack env)\"` after `scripts/stack up`"
                )
            })
        };
        let dir = std::path::PathBuf::from(var("STACK_TLS_DIR"));
        Self {
            pg_params: format!(
                "sslmode=verify-full&sslrootcert={}",
                dir.join("ca.pem").display()
            ),
            amqps_url: var("AMQPS_URL"),
            mongodb_tls_uri: var("MONGODB_TLS_URI"),
            dir,
        }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A service's mTLS flags: its own certificate, the CA, and whom its
    /// gRPC server accepts.
    fn flags(&self, svc: &str, allowed: Option<&str>) -> Vec<String> {
        let mut f = vec![
            "--tls-mode".into(),
            "mtls".into(),
            "--tls-cert-file".into(),
            self.file(&format!("{svc}.pem")),
            "--tls-key-file".into(),
            self.file(&format!("{svc}-key.pem")),
            "--tls-ca-file".into(),
            self.file("ca.pem"),
        ];
        if let Some(a) = allowed {
            f.extend(["--tls-allowed-clients".into(), a.into()]);
        }
        f
    }

    /// A client config presenting `cert` (a file stem in the directory, or
    /// none) and trusting `ca`.
    pub fn client_config(&self, cert: Option<&str>, ca: &str) -> rustls::ClientConfig {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.file(ca)).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut cfg = match cert {
            Some(stem) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(self.file(&format!("{stem}.pem")))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(self.file(&format!("{stem}-key.pem"))).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        cfg
    }
}

/// A gRPC channel to `addr` over TLS with `config`, expecting the server to
/// be `server_name`.
pub fn tls_channel(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    server_name: &str,
) -> tonic::transport::Channel {
    let config = std::sync::Arc::new(config);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let (config, name) = (config.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
}

/// The four services started in-process against the stack, on fresh
/// databases and queues.
pub struct Mesh {
    pub auth: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub video_queue: String,
    pub mp3_queue: String,
    pub notified_queue: String,
    pub webhook_queue: String,
    pub stack: Stack,
    pub mailpit: Mailpit,
    pub token: CancellationToken,
    pub tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub dir: tempfile::TempDir,
    /// The MongoDB database of this mesh.
    pub mongo_db: String,
    /// Set when every hop is TLS ([`Mesh::start_tls`]).
    pub tls: Option<TlsStack>,
    /// The URL of the media database (the jobs).
    pub media_db: String,
    /// The PostgreSQL databases of auth-svc, notify-svc and the jobs.
    pub pg_databases: [String; 3],
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("auth", &self.auth)
            .field("grpc", &self.grpc)
            .field("http", &self.http)
            .field("mongo_db", &self.mongo_db)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Base flags, then the extra ones a test asked for.
fn with_more(base: Vec<String>, more: Vec<String>) -> Vec<String> {
    base.into_iter().chain(more).collect()
}

impl Mesh {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// `extra`: (service, flag, value) added to a service's flags, e.g.
    /// `("converter-svc", "--progress-interval", "200ms")`.
    pub async fn start_with(extra: &[(&str, &str, &str)]) -> Self {
        Self::start_inner(extra, None).await
    }

    /// Every hop over TLS: mutual TLS between the gateway and auth-svc (which
    /// accepts only the gateway) and on the gateway's gRPC port (which
    /// accepts only itself: its REST edge); PostgreSQL with
    /// `sslmode=verify-full`, `amqps://`, MongoDB with `tls=true`, SMTP with
    /// STARTTLS, every server certificate checked against the stack's CA.
    pub async fn start_tls() -> Self {
        Self::start_inner(&[], Some(TlsStack::from_env())).await
    }

    async fn start_inner(extra: &[(&str, &str, &str)], tls: Option<TlsStack>) -> Self {
        let more = |svc: &str| -> Vec<String> {
            let mut m: Vec<String> = extra
                .iter()
                .filter(|(s, _, _)| *s == svc)
                .flat_map(|(_, f, v)| [(*f).to_owned(), (*v).to_owned()])
                .collect();
            if let Some(t) = &tls {
                match svc {
                    "auth-svc" => m.extend(t.flags(svc, Some("gateway-svc"))),
                    "gateway-svc" => {
                        m.extend(t.flags(svc, Some("gateway-svc")));
                        m.extend(["--mongodb-uri".into(), t.mongodb_tls_uri.clone()]);
                        m.extend(["--amqp-url".into(), t.amqps_url.clone()]);
                    }
                    "converter-svc" => {
                        // Its certificate, to follow uploads on the gateway.
                        m.extend(t.flags(svc, None));
                        m.extend(["--mongodb-uri".into(), t.mongodb_tls_uri.clone()]);
                        m.extend(["--amqp-url".into(), t.amqps_url.clone()]);
                    }
                    "notify-svc" => {
                        m.extend(["--amqp-url".into(), t.amqps_url.clone()]);
                        m.extend(["--smtp-tls".into(), "starttls".into()]);
                        m.extend(["--smtp-ca-file".into(), t.file("ca.pem")]);
                    }
                    _ => {}
                }
            }
            m
        };
        let db_name = |url: &str| url.rsplit('/').next().unwrap_or_default().to_owned();
        let db_url = |url: String| match &tls {
            Some(t) => format!("{url}?{}", t.pg_params),
            None => url,
        };
        test_kit::init_tracing();
        let stack = Stack::from_env();
        let token = CancellationToken::new();
        let mongo_db = unique_name("e2e").replace('-', "_");
        let video_queue = unique_name("video");
        let mp3_queue = unique_name("mp3");
        let notified_queue = unique_name("notified");
        let webhook_queue = unique_name("webhooks");
        let delays = crate::RETRY_DELAYS;
        let mut tasks = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let work_dir = dir.path().join("work").display().to_string();

        let auth_db = stack.fresh_database("e2eauth").await;
        let auth_db_name = db_name(&auth_db);
        let auth_db = db_url(auth_db);
        let auth = auth_svc::app::App::build(
            auth_svc::config::Cli::try_parse_from(with_more(
                flags::auth_svc(&auth_db, SECRET, ADMIN),
                more("auth-svc"),
            ))
            .unwrap()
            .config,
        )
        .await
        .unwrap();
        let auth_addr = auth.grpc_addr();
        tasks.push(tokio::spawn(auth.run_until(token.clone())));

        let scheme = if tls.is_some() { "https" } else { "http" };
        let auth_url = format!("{scheme}://{auth_addr}");
        let media_db = stack.fresh_database("e2emedia").await;
        let media_db_name = db_name(&media_db);
        let media_db = db_url(media_db);
        let gateway = gateway_svc::app::App::build(
            gateway_svc::config::Config::try_parse_from(with_more(
                flags::gateway_svc(
                    &auth_url,
                    &stack,
                    flags::GatewayStores {
                        mongodb_database: &mongo_db,
                        database_url: &media_db,
                        video_queue: &video_queue,
                        notified_queue: &notified_queue,
                    },
                ),
                [
                    "--mp3-queue",
                    &mp3_queue,
                    "--webhook-queue",
                    &webhook_queue,
                    "--amqp-retry-delays",
                    delays,
                    // The tests' receivers listen on 127.0.0.1, over HTTP.
                    "--webhook-allowed-networks",
                    "127.0.0.1/32",
                    "--webhook-allow-http",
                ]
                .map(str::to_owned)
                .into_iter()
                .chain(more("gateway-svc"))
                .collect(),
            ))
            .unwrap(),
        )
        .await
        .unwrap();
        let (grpc, http) = (gateway.grpc_addr(), gateway.http_addr());
        tasks.push(tokio::spawn(gateway.run_until(token.clone())));

        let converter = converter_svc::app::App::build(
            converter_svc::config::Cli::try_parse_from(with_more(
                [
                    "converter-svc",
                    "--admin-addr",
                    "127.0.0.1:0",
                    "--amqp-url",
                    &stack.amqp_url,
                    "--video-queue",
                    &video_queue,
                    "--mp3-queue",
                    &mp3_queue,
                    "--webhook-queue",
                    &webhook_queue,
                    "--amqp-retry-delays",
                    delays,
                    "--mongodb-uri",
                    &stack.mongodb_uri,
                    "--mongodb-database",
                    &mongo_db,
                    "--database-url",
                    &media_db,
                    "--work-dir",
                    &work_dir,
                ]
                .map(str::to_owned)
                .to_vec(),
                more("converter-svc"),
            ))
            .unwrap()
            .config,
        )
        .await
        .unwrap();
        tasks.push(tokio::spawn(converter.run_until(token.clone())));

        let notify_db = stack.fresh_database("e2enotify").await;
        let notify_db_name = db_name(&notify_db);
        let notify_db = db_url(notify_db);
        let smtp_port = stack.smtp_port.to_string();
        let base = format!("http://{http}");
        let notify = notify_svc::app::App::build(
            notify_svc::config::Cli::try_parse_from(with_more(
                [
                    "notify-svc",
                    "--admin-addr",
                    "127.0.0.1:0",
                    "--amqp-url",
                    &stack.amqp_url,
                    "--mp3-queue",
                    &mp3_queue,
                    "--notified-queue",
                    &notified_queue,
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
                    "--media-database-url",
                    &media_db,
                    "--webhook-queue",
                    &webhook_queue,
                    "--webhook-retry-delays",
                    delays,
                    "--webhook-timeout",
                    "2s",
                    "--webhook-allowed-networks",
                    "127.0.0.1/32",
                    "--webhook-allow-http",
                ]
                .map(str::to_owned)
                .to_vec(),
                more("notify-svc"),
            ))
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
            notified_queue,
            webhook_queue,
            mailpit: Mailpit::new(&stack.mailpit_api_url),
            stack,
            token,
            tasks,
            dir,
            mongo_db,
            media_db,
            tls,
            pg_databases: [auth_db_name, notify_db_name, media_db_name],
        }
    }

    pub async fn user(&self) -> (String, String) {
        match &self.tls {
            // auth-svc accepts the gateway only: the test speaks as it.
            Some(t) => {
                crate::create_user_over(tls_channel(
                    self.auth,
                    t.client_config(Some("gateway-svc"), "ca.pem"),
                    "auth-svc",
                ))
                .await
            }
            None => crate::create_user(self.auth).await,
        }
    }

    pub fn sample(&self, name: &str, ffmpeg_args: &str) -> std::path::PathBuf {
        crate::sample(self.dir.path(), name, ffmpeg_args)
    }

    /// Files in the converter's work directory now (spools, MP3s being
    /// written), besides its own lock.
    pub fn work_files(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.file_name().is_some_and(|n| n != ".lock") {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("work"), &mut out);
        out
    }

    /// The one email sent to `to`, its text body.
    pub async fn email(&self, to: &str) -> String {
        crate::only_email(&self.mailpit, to).await
    }

    /// This mesh's MongoDB store, as the services see it.
    pub async fn store(&self) -> media_store::Store {
        media_store::Store::new(
            &svc_kit::config::Secret::new(self.stack.mongodb_uri.clone()),
            &self.mongo_db,
            "e2e",
            media_store::Timeouts::default(),
        )
        .await
        .unwrap()
    }

    /// This mesh's jobs, as the services see them.
    pub async fn jobs(&self) -> media_store::Jobs {
        let pool = svc_kit::pg::pool(
            &svc_kit::config::Secret::new(self.media_db.clone()),
            2,
            Duration::from_secs(5),
            "e2e",
        )
        .unwrap();
        media_store::Jobs::new(
            pool,
            media_store::Routes {
                video_queue: self.video_queue.clone(),
                mp3_queue: self.mp3_queue.clone(),
                webhook_queue: self.webhook_queue.clone(),
                delete_sources: true,
            },
        )
    }

    /// Waits for notify-svc's receipt to be recorded on the job: the loop
    /// from the outcome to the inbox and back is closed.
    pub async fn wait_notified(&self, job_id: &str) {
        let jobs = self.jobs().await;
        let id = job_id.parse().unwrap();
        test_kit::wait_until(
            &format!("job {job_id} recorded as notified"),
            Duration::from_secs(30),
            || async {
                let job = jobs.get(id).await.ok()??;
                job.notified.then_some(())
            },
        )
        .await;
    }

    pub async fn stop(self) {
        self.token.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
        crate::delete_queues(
            &self.stack.amqp_url,
            &[
                &self.video_queue,
                &self.mp3_queue,
                &self.notified_queue,
                &self.webhook_queue,
            ],
        )
        .await;
    }
}
