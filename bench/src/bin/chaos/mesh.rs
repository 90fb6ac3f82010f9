//! The mesh of one run: auth-svc, two gateways, two converters and a
//! notifier, as processes on fresh databases and queues.

use bench::{
    Proc,
    services::{self, Listeners},
    wait_for_port,
};
use std::path::PathBuf;

/// The mesh of one run: its processes and where they listen.
pub(crate) struct Mesh {
    pub(crate) stack: test_kit::Stack,
    /// Held so the process lives as long as the mesh.
    _auth: Proc,
    auth_addr: String,
    pub(crate) gateways: Vec<Option<(Proc, u16)>>,
    pub(crate) converters: Vec<Option<Proc>>,
    _notify: Proc,
    pub(crate) mongo_db: String,
    pub(crate) video_queue: String,
    pub(crate) mp3_queue: String,
    pub(crate) notified_queue: String,
    pub(crate) work: PathBuf,
    common: Vec<(&'static str, String)>,
    pub(crate) admin: (String, String),
}

impl Mesh {
    pub(crate) async fn start(run: &str) -> Self {
        let stack = test_kit::Stack::from_env();
        let mongo_db = format!("chaos_{run}");
        let video_queue = format!("chaos-{run}-video");
        let mp3_queue = format!("chaos-{run}-mp3");
        let notified_queue = format!("chaos-{run}-notified");
        let work = std::env::temp_dir().join(format!("chaos-{run}-work"));
        std::fs::create_dir_all(&work).unwrap();
        let media_db = stack.database(&mongo_db).await;
        // The jobs' database (notify-svc gets its own DATABASE_URL after).
        let mut common = services::store_vars(&stack, &mongo_db, &media_db);
        common.extend([
            ("VIDEO_QUEUE", video_queue.clone()),
            ("MP3_QUEUE", mp3_queue.clone()),
            ("NOTIFIED_QUEUE", notified_queue.clone()),
            ("JOB_EVENTS_EXCHANGE", format!("chaos-{run}-events")),
            ("AMQP_RETRY_DELAYS", "1s,3s,10s,30s".into()),
            ("LEASE_TTL", "10s".into()),
            ("SHUTDOWN_GRACE", "3s".into()),
            ("RUST_LOG", "warn".into()),
        ]);
        let admin = (format!("{run}@chaos.test"), "chaos password 1".to_owned());
        let auth_db = stack.fresh_database("chaosauth").await;
        let auth_addr = services::local_addr();
        let mut auth_env = services::auth_vars(
            &auth_addr,
            auth_db,
            "chaos-secret-chaos-secret-chaos-secret!",
            (&admin.0, &admin.1),
        );
        auth_env.extend([
            ("ARGON2_MEMORY_KIB", "1024".into()),
            ("ARGON2_ITERATIONS", "1".into()),
        ]);
        let auth = Proc::start("auth-svc", &auth_env).unwrap();
        wait_for_port(&auth_addr).await.unwrap();
        let notify_db = stack.fresh_database("chaosnotify").await;
        let notify = start_notify(&common, &notify_db, &stack);
        let mut mesh = Self {
            _notify: notify,
            stack,
            _auth: auth,
            auth_addr,
            gateways: vec![None, None],
            converters: vec![None, None],
            mongo_db,
            video_queue,
            mp3_queue,
            notified_queue,
            work,
            common,
            admin,
        };
        for i in 0..2 {
            mesh.start_gateway(i).await;
            mesh.start_converter(i);
        }
        mesh
    }

    pub(crate) fn env(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut e = self.common.clone();
        e.extend(extra.iter().cloned());
        e
    }

    pub(crate) async fn start_gateway(&mut self, i: usize) {
        let listeners = Listeners::new();
        let port = listeners.http;
        let mut env = self.env(&listeners.gateway_vars(&self.auth_addr));
        env.extend([
            ("MAX_WAITING_JOBS_PER_USER", "1000".into()),
            ("MAX_UPLOADS_PER_USER", "100".into()),
            ("JANITOR_INTERVAL", "2s".into()),
            // Past notify's retries of one email (1+3+10+30 s).
            ("UNNOTIFIED_AFTER", "60s".into()),
            ("STUCK_AFTER", "45s".into()),
            ("UPLOAD_STALE_AFTER", "30s".into()),
            ("ORPHAN_AGE", "30s".into()),
            ("ORPHAN_INTERVAL", "5s".into()),
        ]);
        let p = Proc::start("gateway-svc", &env).unwrap();
        wait_for_port(&format!("127.0.0.1:{port}")).await.unwrap();
        self.gateways[i] = Some((p, port));
    }

    pub(crate) fn start_converter(&mut self, i: usize) {
        let env = self.env(&[
            ("ADMIN_ADDR", services::local_addr()),
            ("WORK_DIR", self.work.display().to_string()),
        ]);
        self.converters[i] = Some(Proc::start("converter-svc", &env).unwrap());
    }

    pub(crate) fn gateway_ports(&self) -> Vec<u16> {
        self.gateways.iter().flatten().map(|(_, p)| *p).collect()
    }
}

pub(crate) fn start_notify(
    common: &[(&'static str, String)],
    db: &str,
    stack: &test_kit::Stack,
) -> Proc {
    let mut env = common.to_vec();
    env.extend([
        ("ADMIN_ADDR", services::local_addr()),
        ("DATABASE_URL", db.to_owned()),
    ]);
    env.extend(services::smtp_vars(stack));
    Proc::start("notify-svc", &env).unwrap()
}
