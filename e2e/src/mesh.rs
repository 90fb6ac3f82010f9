//! The four services started in-process against the stack, on fresh
//! databases and queues (plaintext or TLS on every hop).

use super::*;

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
