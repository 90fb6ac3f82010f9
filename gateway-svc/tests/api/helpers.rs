use auth_svc::token::Claims;
use clap::Parser;
use futures::AsyncWriteExt;
use gateway_svc::{app::App, config::Config};
use lapin::options::QueueDeclareOptions;
use media_store::{
    Jobs, Store,
    mongodb::bson::{doc, oid::ObjectId},
};
use mp3converter_proto::{
    auth::v1::{SetUserDisabledRequest, set_user_disabled_request},
    media::v1::media_service_client::MediaServiceClient,
};
use std::{net::SocketAddr, time::Duration};
use svc_kit::config::Secret;
use test_kit::users::Admin;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const JWT_SECRET: &str = "gateway-test-secret-gateway-test-secret";
pub const ADMIN: (&str, &str) = ("admin@example.com", "admin password 1");

pub struct Auth {
    pub addr: SocketAddr,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Auth {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// auth-svc with extra flags (e.g. `--token-ttl`).
    pub async fn start_with(extra: &[&str]) -> Self {
        let db = test_kit::Stack::from_env().fresh_database("gwauth").await;
        let mut args = test_kit::flags::auth_svc(&db, JWT_SECRET, ADMIN);
        // Tests measure behaviour, not password strength.
        args.extend(["--argon2-memory-kib", "1024", "--argon2-iterations", "1"].map(str::to_owned));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let cli = auth_svc::config::Cli::try_parse_from(args).unwrap();
        let app = auth_svc::app::App::build(cli.config).await.unwrap();
        let addr = app.grpc_addr();
        let token = CancellationToken::new();
        let handle = tokio::spawn(app.run_until(token.clone()));
        Self {
            addr,
            token,
            handle,
        }
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

pub struct TestApp {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub auth_addr: SocketAddr,
    pub queue: String,
    pub topology: amqp_kit::WorkQueue,
    pub store: Store,
    pub jobs: Jobs,
    pub db: String,
    pub stack: test_kit::Stack,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A user of the system under test: a token and an id.
pub use test_kit::users::User;

/// The receipts queue that goes with a test's video queue.
pub fn notified_queue(video_queue: &str) -> String {
    format!("{video_queue}.notified")
}

/// A gateway's settings for a test: MongoDB database `db`, and the
/// PostgreSQL database of the same name at `jobs_db`.
pub fn config(auth: SocketAddr, db: &str, jobs_db: &str, queue: &str, extra: &[&str]) -> Config {
    let stack = test_kit::Stack::from_env();
    let auth_url = format!("http://{auth}");
    let notified = notified_queue(queue);
    let mut args = test_kit::flags::gateway_svc(
        &auth_url,
        &stack,
        test_kit::flags::GatewayStores {
            mongodb_database: db,
            database_url: jobs_db,
            video_queue: queue,
            notified_queue: &notified,
        },
    );
    args.extend(["--health-interval", "200ms"].map(str::to_owned));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Config::try_parse_from(args).unwrap()
}

/// The jobs of a test's database, as the test sees them (its own pool).
pub async fn test_jobs(url: &str, queue: &str) -> Jobs {
    let pool = svc_kit::pg::pool(
        &Secret::new(url.to_owned()),
        4,
        Duration::from_secs(5),
        "gateway-tests",
    )
    .unwrap();
    Jobs::new(
        pool,
        media_store::Routes {
            video_queue: queue.to_owned(),
            mp3_queue: "mp3".to_owned(),
            webhook_queue: "webhooks".into(),
            delete_sources: true,
        },
    )
}

pub async fn spawn_app(auth: &Auth) -> TestApp {
    spawn_app_with(auth, &[]).await
}

pub async fn spawn_app_with(auth: &Auth, extra: &[&str]) -> TestApp {
    let db = test_kit::unique_name("gw").replace('-', "_");
    let queue = test_kit::unique_name("video");
    spawn_app_on(auth, &db, &queue, extra).await
}

/// A gateway on a given database and video queue: several of them make the
/// replicas of one deployment.
pub async fn spawn_app_on(auth: &Auth, db: &str, queue: &str, extra: &[&str]) -> TestApp {
    test_kit::init_tracing();
    let (db, queue) = (db.to_owned(), queue.to_owned());
    let jobs_db = test_kit::Stack::from_env().database(&db).await;
    let cfg = config(auth.addr, &db, &jobs_db, &queue, extra);
    let topology = cfg.video_topology.work_queue(&queue);
    let store = Store::new(
        &cfg.mongodb_uri,
        &db,
        "gateway-tests",
        media_store::Timeouts::default(),
    )
    .await
    .unwrap();
    let jobs = test_jobs(&jobs_db, &queue).await;
    let app = App::build(cfg).await.unwrap();
    let (http, grpc, admin) = (app.http_addr(), app.grpc_addr(), app.admin_addr());
    let token = CancellationToken::new();
    let handle = tokio::spawn(app.run_until(token.clone()));
    TestApp {
        http,
        grpc,
        admin,
        auth_addr: auth.addr,
        queue,
        topology,
        store,
        jobs,
        db,
        stack: test_kit::Stack::from_env(),
        token,
        handle,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn media(&self) -> MediaServiceClient<Channel> {
        MediaServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
            .max_decoding_message_size(8 << 20)
    }

    /// The admin, logged in to this app's auth-svc.
    async fn admin(&self) -> Admin {
        Admin::connect(self.auth_addr, ADMIN).await.unwrap()
    }

    /// Disables a user straight through auth-svc, as an admin (no gateway
    /// replica hears of it).
    pub async fn disable_user(&self, email: &str) {
        let admin = self.admin().await;
        admin
            .client()
            .set_user_disabled(admin.authorized(SetUserDisabledRequest {
                user: Some(set_user_disabled_request::User::Email(email.to_owned())),
                disabled: true,
            }))
            .await
            .unwrap();
    }

    /// Creates a user through auth-svc and logs them in.
    pub async fn user(&self) -> User {
        let email = format!("{}@example.com", test_kit::unique_name("u"));
        self.admin()
            .await
            .user(&email, "user password 1")
            .await
            .unwrap()
    }

    pub async fn video_count(&self) -> u64 {
        self.store
            .video_files
            .files
            .count_documents(doc! {})
            .await
            .unwrap()
    }

    pub async fn video_chunk_count(&self) -> u64 {
        self.store
            .video_files
            .chunks
            .count_documents(doc! {})
            .await
            .unwrap()
    }

    pub async fn job_count(&self) -> u64 {
        let client = self.jobs.pool().get().await.unwrap();
        let n: i64 = client
            .query_one("SELECT count(*) FROM jobs", &[])
            .await
            .unwrap()
            .get(0);
        n as u64
    }

    /// Runs SQL on the test's job database (to set a job up as a test needs).
    pub async fn sql(
        &self,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> u64 {
        let client = self.jobs.pool().get().await.unwrap();
        client.execute(statement, params).await.unwrap()
    }

    /// Waits until this app's video queue holds `n` messages (the outbox
    /// relay publishes just after the commit).
    pub async fn wait_queued(&self, n: u32) {
        test_kit::wait_until(
            &format!("{n} messages in the video queue"),
            Duration::from_secs(10),
            || async { (self.queued_messages().await == n).then_some(()) },
        )
        .await;
    }

    /// Messages ready in this app's video queue.
    pub async fn queued_messages(&self) -> u32 {
        let conn = amqp_kit::connect(&Secret::new(self.stack.amqp_url.clone()), "gw-test")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        q.message_count()
    }

    /// Reads a stored video back from GridFS.
    pub async fn stored_video(&self, id: &str) -> Vec<u8> {
        let id = ObjectId::parse_str(id).unwrap();
        let file = self
            .store
            .videos
            .find_one(doc! { "_id": id })
            .await
            .unwrap()
            .unwrap();
        let mut reader = self.store.video_files.stream((&file).into(), 0, 16);
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// Stores an MP3 for `owner` as converter-svc would, and marks the job
    /// done. Returns the MP3's id.
    pub async fn put_mp3(&self, owner: &User, job_id: Option<&str>, bytes: &[u8]) -> String {
        let video_id = job_id.map(|j| ObjectId::parse_str(j).unwrap());
        let mut up = self
            .store
            .mp3s
            .open_upload_stream("clip.mp3")
            .metadata(doc! { "owner_id": &owner.id, "video_id": video_id })
            .await
            .unwrap();
        let id = up.id().as_object_id().unwrap();
        for chunk in bytes.chunks(1 << 20) {
            up.write_all(chunk).await.unwrap();
        }
        up.close().await.unwrap();
        if let Some(job) = video_id {
            self.sql(
                "UPDATE jobs SET state = 'done', mp3_id = $2, lease_holder = NULL, lease_until = NULL \
                 WHERE id = $1",
                &[&job.to_hex(), &id.to_hex()],
            )
            .await;
        }
        id.to_hex()
    }

    pub async fn all_jobs(&self) -> Vec<media_store::Job> {
        let client = self.jobs.pool().get().await.unwrap();
        let ids: Vec<String> = client
            .query("SELECT id FROM jobs ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut all = Vec::new();
        for id in ids {
            all.extend(
                self.jobs
                    .get(ObjectId::parse_str(&id).unwrap())
                    .await
                    .unwrap(),
            );
        }
        all
    }

    /// Stops the gateway and removes its databases and queues.
    pub async fn stop(self) {
        self.shutdown().await.remove().await;
    }

    /// Stops the gateway (as SIGTERM does), keeping what it stored.
    pub async fn shutdown(self) -> Stopped {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
        Stopped {
            store: self.store,
            jobs: self.jobs,
            db: self.db,
            stack: self.stack,
            topology: self.topology,
        }
    }

    /// Messages ready in a queue of this app's broker.
    pub async fn messages_in(&self, queue: &str) -> Vec<(String, Vec<u8>)> {
        let conn = amqp_kit::connect(&Secret::new(self.stack.amqp_url.clone()), "gw-test")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Ok(Some(m)) = ch
            .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
            .await
        {
            let kind = m
                .delivery
                .properties
                .kind()
                .as_ref()
                .map(|k| k.to_string())
                .unwrap_or_default();
            out.push((kind, m.delivery.data.clone()));
            m.delivery
                .acker
                .ack(lapin::options::BasicAckOptions::default())
                .await
                .unwrap();
        }
        out
    }
}

/// What a stopped gateway leaves: its stores, to look at, then remove.
pub struct Stopped {
    pub store: Store,
    pub jobs: Jobs,
    pub db: String,
    pub stack: test_kit::Stack,
    pub topology: amqp_kit::WorkQueue,
}

impl Stopped {
    /// Removes the databases and queues.
    pub async fn remove(self) {
        let _ = self.store.db.drop().await;
        self.stack.drop_database(&self.db).await;
        let topology = self.topology;
        let receipts = amqp_kit::WorkQueue {
            name: notified_queue(&topology.name),
            ..topology.clone()
        };
        let hints = amqp_kit::WorkQueue {
            name: format!("{}.live", topology.name),
            retry_delays: Vec::new(),
            expires_after: Some(amqp_kit::HINT_TTL),
            ..topology.clone()
        };
        test_kit::delete_work_queues(&self.stack.amqp_url, &[topology, receipts, hints]).await;
    }
}

/// A token signed with the right key whose `exp` is in the past.
pub fn expired_token(user: &User) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: user.id.clone(),
        email: user.email.clone(),
        admin: false,
        iat: now - 7200,
        exp: now - 3600,
        iss: "mp3converter-auth".into(),
        aud: "mp3converter".into(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// Waits (bounded) for the store to settle: uploads clean up asynchronously.
pub async fn eventually_empty(app: &TestApp) {
    test_kit::wait_until(
        "no video, chunk or job left",
        Duration::from_secs(15),
        || async {
            (app.video_count().await == 0
                && app.video_chunk_count().await == 0
                && app.job_count().await == 0)
                .then_some(())
        },
    )
    .await;
}
