//! The chaos run: the whole mesh as processes (auth-svc, two gateways, two
//! converters, one notifier) on the local stack, 40+ uploads over REST while
//! a driver injects faults at random — a converter SIGKILLed, converters'
//! AMQP connections closed, RabbitMQ restarted, the GridFS server restarted,
//! SMTP stopped for 30 s, a gateway SIGTERMed mid-upload — then, once all is
//! back and quiet, the invariants:
//!
//! - every upload answered OK has exactly one terminal state (done or
//!   failed), no job is left in between;
//! - exactly one MP3 for each done job, none for a failed one;
//! - exactly one email per upload answered OK, matching its outcome;
//! - no orphan GridFS chunk, no source video left, no converter temp
//!   directory left.
//!
//! Run it with:
//!
//! ```text
//! scripts/stack up
//! cargo build --release -p auth-svc -p gateway-svc -p converter-svc -p notify-svc
//! cargo run --release -p bench --bin chaos -- --runs 5
//! ```
//!
//! It restarts the stack's RabbitMQ, FerretDB and Mailpit: run it on a quiet
//! machine, never beside the tests.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use bench::{Proc, free_port, wait_for_port};
use clap::Parser;
use futures::TryStreamExt;
use media_store::{
    JobState, Store,
    mongodb::bson::{Bson, Document, doc},
};
use rand::{Rng, seq::IndexedRandom, seq::SliceRandom};
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use svc_kit::config::Secret;
use tokio::sync::Mutex as AsyncMutex;

#[derive(Debug, Parser)]
struct Args {
    /// Runs, each on fresh databases and queues.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Uploads per run.
    #[arg(long, default_value_t = 44)]
    uploads: usize,
    /// How long faults are injected.
    #[arg(long, default_value = "100s", value_parser = svc_kit::config::parse_duration)]
    window: Duration,
    /// How long to wait, after the faults, for every job to end.
    #[arg(long, default_value = "300s", value_parser = svc_kit::config::parse_duration)]
    settle: Duration,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `scripts/stack <args>`, quietly; panics if it fails.
fn stack(args: &[&str]) {
    let out = Command::new(root().join("scripts/stack"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/stack {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/stack"))
        .arg("rabbitmqctl")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn clip(dir: &Path, name: &str, secs: u32) -> Vec<u8> {
    let out = dir.join(name);
    if !out.exists() {
        let ok = Command::new("ffmpeg")
            .args([
                "-y",
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg(format!("testsrc=duration={secs}:size=320x240:rate=15"))
            .args(["-f", "lavfi", "-i"])
            .arg(format!("sine=frequency=440:duration={secs}"))
            .args([
                "-shortest",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
            ])
            .arg(&out)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    std::fs::read(out).unwrap()
}

/// The mesh of one run: its processes and where they listen.
struct Mesh {
    stack: test_kit::Stack,
    /// Held so the process lives as long as the mesh.
    _auth: Proc,
    auth_addr: String,
    gateways: Vec<Option<(Proc, u16)>>,
    converters: Vec<Option<Proc>>,
    _notify: Proc,
    mongo_db: String,
    video_queue: String,
    mp3_queue: String,
    notified_queue: String,
    work: PathBuf,
    common: Vec<(&'static str, String)>,
    admin: (String, String),
}

impl Mesh {
    async fn start(run: &str) -> Self {
        let stack = test_kit::Stack::from_env();
        let mongo_db = format!("chaos_{run}");
        let video_queue = format!("chaos-{run}-video");
        let mp3_queue = format!("chaos-{run}-mp3");
        let notified_queue = format!("chaos-{run}-notified");
        let work = std::env::temp_dir().join(format!("chaos-{run}-work"));
        std::fs::create_dir_all(&work).unwrap();
        let media_db = stack.database(&mongo_db).await;
        let common: Vec<(&'static str, String)> = vec![
            // The jobs' database (notify-svc gets its own DATABASE_URL after).
            ("DATABASE_URL", media_db),
            ("AMQP_URL", stack.amqp_url.clone()),
            ("MONGODB_URI", stack.mongodb_uri.clone()),
            ("MONGODB_DATABASE", mongo_db.clone()),
            ("VIDEO_QUEUE", video_queue.clone()),
            ("MP3_QUEUE", mp3_queue.clone()),
            ("NOTIFIED_QUEUE", notified_queue.clone()),
            ("JOB_EVENTS_EXCHANGE", format!("chaos-{run}-events")),
            ("AMQP_RETRY_DELAYS", "1s,3s,10s,30s".into()),
            ("LEASE_TTL", "10s".into()),
            ("SHUTDOWN_GRACE", "3s".into()),
            ("RUST_LOG", "warn".into()),
        ];
        let admin = (format!("{run}@chaos.test"), "chaos password 1".to_owned());
        let auth_db = stack.fresh_database("chaosauth").await;
        let auth_port = free_port();
        let auth_addr = format!("127.0.0.1:{auth_port}");
        let auth = Proc::start(
            "auth-svc",
            &[
                ("GRPC_ADDR", auth_addr.clone()),
                ("ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
                ("DATABASE_URL", auth_db),
                (
                    "JWT_SECRET",
                    "chaos-secret-chaos-secret-chaos-secret!".into(),
                ),
                ("ADMIN_EMAIL", admin.0.clone()),
                ("ADMIN_PASSWORD", admin.1.clone()),
                ("ARGON2_MEMORY_KIB", "1024".into()),
                ("ARGON2_ITERATIONS", "1".into()),
            ],
        )
        .unwrap();
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

    fn env(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut e = self.common.clone();
        e.extend(extra.iter().cloned());
        e
    }

    async fn start_gateway(&mut self, i: usize) {
        let port = free_port();
        let env = self.env(&[
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("GRPC_ADDR", format!("127.0.0.1:{}", free_port())),
            ("FOLLOW_ADDR", format!("127.0.0.1:{}", free_port())),
            ("ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
            ("AUTH_URL", format!("http://{}", self.auth_addr)),
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

    fn start_converter(&mut self, i: usize) {
        let env = self.env(&[
            ("ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
            ("WORK_DIR", self.work.display().to_string()),
        ]);
        self.converters[i] = Some(Proc::start("converter-svc", &env).unwrap());
    }

    fn gateway_ports(&self) -> Vec<u16> {
        self.gateways.iter().flatten().map(|(_, p)| *p).collect()
    }
}

fn start_notify(common: &[(&'static str, String)], db: &str, stack: &test_kit::Stack) -> Proc {
    let mut env = common.to_vec();
    env.extend([
        ("ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
        ("DATABASE_URL", db.to_owned()),
        ("SMTP_HOST", stack.smtp_host.clone()),
        ("SMTP_PORT", stack.smtp_port.to_string()),
        ("SMTP_TLS", "none".into()),
    ]);
    Proc::start("notify-svc", &env).unwrap()
}

#[derive(Debug, Default)]
struct Tally {
    ok: HashMap<String, String>, // job id → file name
    refused: usize,
}

async fn upload(port: u16, token: &str, name: &str, bytes: Vec<u8>) -> Result<String, String> {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
    );
    let res = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/upload"))
        .bearer_auth(token)
        .multipart(form)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    if status == 200 {
        Ok(body["job_id"].as_str().unwrap_or_default().to_owned())
    } else {
        Err(format!("{status}: {}", body["message"]))
    }
}

/// The faults, in the order this run injects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillConverter,
    CloseConverterConnections,
    RestartRabbitmq,
    RestartGridfs,
    StopSmtp,
    TermGateway,
}

async fn inject(mesh: &Arc<AsyncMutex<Mesh>>, f: Fault) -> String {
    // Drawn first: the thread's generator cannot be held across an await.
    let (i, pause) = {
        let mut rng = rand::rng();
        (
            rng.random_range(0..2),
            Duration::from_millis(rng.random_range(500..3000)),
        )
    };
    match f {
        Fault::KillConverter => {
            mesh.lock().await.converters[i] = None; // Proc's drop: SIGKILL
            tokio::time::sleep(pause).await;
            mesh.lock().await.start_converter(i);
            format!("SIGKILL converter {i}, restarted")
        }
        Fault::CloseConverterConnections => {
            // RabbitMQ 3.10 has no `user_provided_name` item: the name the
            // client gave is `connection_name` in its properties.
            let list = rabbitmqctl(&[
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ]);
            let mut n = 0;
            for line in list.lines() {
                let Some((pid, props)) = line.split_once('\t') else {
                    continue;
                };
                let name = props
                    .split_once(r#"{"connection_name",""#)
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(name, _)| name);
                if name.is_some_and(|n| n.starts_with("converter-svc")) {
                    rabbitmqctl(&["close_connection", pid.trim(), "chaos"]);
                    n += 1;
                }
            }
            format!("closed {n} converter AMQP connections")
        }
        Fault::RestartRabbitmq => {
            tokio::task::spawn_blocking(|| stack(&["restart", "rabbitmq"]))
                .await
                .unwrap();
            "restarted RabbitMQ".into()
        }
        Fault::RestartGridfs => {
            tokio::task::spawn_blocking(|| stack(&["restart", "ferretdb"]))
                .await
                .unwrap();
            "restarted the GridFS server (FerretDB)".into()
        }
        Fault::StopSmtp => {
            tokio::task::spawn_blocking(|| stack(&["stop", "mailpit"]))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            tokio::task::spawn_blocking(|| stack(&["start", "mailpit"]))
                .await
                .unwrap();
            "stopped SMTP for 30 s".into()
        }
        Fault::TermGateway => {
            let taken = mesh.lock().await.gateways[i].take();
            if let Some((mut p, _)) = taken {
                p.terminate();
                tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(40)))
                    .await
                    .unwrap();
            }
            mesh.lock().await.start_gateway(i).await;
            format!("SIGTERM gateway {i} (uploads in flight), restarted")
        }
    }
}

struct Outcome {
    ok: usize,
    refused: usize,
    done: usize,
    failed: usize,
    unfinished: usize,
    mp3_wrong: usize,
    emails_wrong: usize,
    duplicates: usize,
    /// Outcomes the janitor announced again for want of a receipt.
    reannounced: u32,
    orphan_chunks: u64,
    sources_left: u64,
    temp_dirs: usize,
    faults: Vec<String>,
    took: Duration,
}

async fn one_run(args: &Args, run: &str, clips: &[(&str, Vec<u8>)]) -> Outcome {
    let started = Instant::now();
    let mesh = Arc::new(AsyncMutex::new(Mesh::start(run).await));
    let (email, password, stack, mongo_db) = {
        let m = mesh.lock().await;
        (
            m.admin.0.clone(),
            m.admin.1.clone(),
            m.stack.clone(),
            m.mongo_db.clone(),
        )
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let port = mesh.lock().await.gateway_ports()[0];
    let token = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/login"))
        .basic_auth(&email, Some(&password))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // The faults: each kind once, then more at random, spread over the window.
    let mut plan = vec![
        Fault::KillConverter,
        Fault::CloseConverterConnections,
        Fault::RestartRabbitmq,
        Fault::RestartGridfs,
        Fault::StopSmtp,
        Fault::TermGateway,
    ];
    {
        let mut rng = rand::rng();
        for _ in 0..3 {
            plan.push(
                *[
                    Fault::KillConverter,
                    Fault::CloseConverterConnections,
                    Fault::TermGateway,
                ]
                .choose(&mut rng)
                .unwrap(),
            );
        }
        plan.shuffle(&mut rng);
    }
    let faults = {
        let mesh = mesh.clone();
        let gap = args.window / u32::try_from(plan.len() + 1).unwrap();
        tokio::spawn(async move {
            let mut done = Vec::new();
            for f in plan {
                tokio::time::sleep(gap).await;
                let what = inject(&mesh, f).await;
                println!("    [{:>5.1}s] {what}", started.elapsed().as_secs_f64());
                done.push(what);
            }
            done
        })
    };

    // The uploads, spread over the window, to either gateway.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    let gap = args.window / u32::try_from(args.uploads).unwrap();
    for i in 0..args.uploads {
        let (kind, bytes) = &clips[i % clips.len()];
        let name = format!("chaos-{run}-{i:02}-{kind}");
        let bytes = bytes.clone();
        let (mesh, tally, token) = (mesh.clone(), tally.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            // A refused upload is retried a few times, as a client would;
            // only uploads answered OK count.
            for _ in 0..3 {
                let ports = mesh.lock().await.gateway_ports();
                let port = {
                    let mut rng = rand::rng();
                    *ports.choose(&mut rng).unwrap_or(&0)
                };
                match upload(port, &token, &name, bytes.clone()).await {
                    Ok(id) => {
                        tally.lock().unwrap().ok.insert(id, name);
                        return;
                    }
                    Err(_) => {
                        tally.lock().unwrap().refused += 1;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }));
        tokio::time::sleep(gap).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let faults = faults.await.unwrap();

    // Quiet: every job ends, the janitor sweeps.
    let store = Store::new(
        &Secret::new(stack.mongodb_uri.clone()),
        &mongo_db,
        "chaos",
        media_store::Timeouts::default(),
    )
    .await
    .unwrap();
    let job_db = media_store::Jobs::new(
        svc_kit::pg::pool(
            &Secret::new(stack.database(&mongo_db).await),
            2,
            Duration::from_secs(5),
            "chaos",
        )
        .unwrap(),
        media_store::Routes {
            video_queue: String::new(),
            mp3_queue: String::new(),
            webhook_queue: String::new(),
            delete_sources: true,
        },
    );
    let ok: HashMap<String, String> = tally.lock().unwrap().ok.clone();
    let deadline = Instant::now() + args.settle;
    loop {
        let jobs = job_db.all().await.unwrap_or_default();
        // Finished, and the user told (notify's receipt is back).
        let unfinished = jobs
            .iter()
            .filter(|j| !j.state.is_terminal() || !j.notified)
            .count();
        if unfinished == 0 && jobs.len() >= ok.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Past the orphan age (30 s) and a few janitor rounds, for the sweep.
    tokio::time::sleep(Duration::from_secs(45)).await;

    let jobs = job_db.all().await.unwrap();
    let by_id: HashMap<String, &media_store::Job> =
        jobs.iter().map(|j| (j.id.to_hex(), j)).collect();
    let mailpit = test_kit::mailpit::Mailpit::new(&stack.mailpit_api_url);
    let emails = mailpit.messages_to(&email).await.unwrap_or_default();
    let mp3s: Vec<Document> = store
        .mp3_files
        .files
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mp3_count = |id: &str| {
        mp3s.iter()
            .filter(|m| {
                m.get_document("metadata")
                    .ok()
                    .and_then(|md| md.get_object_id("video_id").ok())
                    .is_some_and(|v| v.to_hex() == id)
            })
            .count()
    };
    let (mut done, mut failed, mut unfinished, mut mp3_wrong, mut emails_wrong, mut duplicates) =
        (0, 0, 0, 0, 0, 0);
    for (id, name) in &ok {
        let state = by_id.get(id).map(|j| j.state);
        let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
        let mine: Vec<_> = emails.iter().filter(|e| e.subject.contains(stem)).collect();
        match state {
            Some(JobState::Done) => {
                done += 1;
                mp3_wrong += usize::from(mp3_count(id) != 1);
                emails_wrong += usize::from(mine.len() != 1 || !mine[0].subject.contains("ready"));
            }
            Some(JobState::Failed) => {
                failed += 1;
                mp3_wrong += usize::from(mp3_count(id) != 0);
                emails_wrong +=
                    usize::from(mine.len() != 1 || !mine[0].subject.contains("could not convert"));
            }
            _ => unfinished += 1,
        }
        duplicates += mine.len().saturating_sub(1);
    }
    // Emails about uploads nobody was told were accepted would be a lie too.
    let known: HashSet<String> = ok
        .values()
        .map(|n| n.rsplit_once('.').map_or(n.clone(), |(s, _)| s.to_owned()))
        .collect();
    emails_wrong += emails
        .iter()
        .filter(|e| !known.iter().any(|k| e.subject.contains(k.as_str())))
        .count();

    let orphan_chunks = {
        let mut n = 0;
        for bucket in [&store.video_files, &store.mp3_files] {
            let ids: Vec<Bson> = bucket.chunks.distinct("files_id", doc! {}).await.unwrap();
            for id in ids {
                if bucket
                    .files
                    .find_one(doc! { "_id": &id })
                    .await
                    .unwrap()
                    .is_none()
                {
                    n += bucket
                        .chunks
                        .count_documents(doc! { "files_id": &id })
                        .await
                        .unwrap();
                }
            }
        }
        n
    };
    let sources_left = store
        .video_files
        .files
        .count_documents(doc! {})
        .await
        .unwrap();
    let (work, queues) = {
        let m = mesh.lock().await;
        (
            m.work.clone(),
            [
                m.video_queue.clone(),
                m.mp3_queue.clone(),
                m.notified_queue.clone(),
            ],
        )
    };
    let temp_dirs = walkdir_jobs(&work);

    let outcome = Outcome {
        ok: ok.len(),
        refused: tally.lock().unwrap().refused,
        done,
        failed,
        unfinished,
        mp3_wrong,
        emails_wrong,
        duplicates,
        reannounced: jobs
            .iter()
            .map(|j| u32::try_from(j.reannounced).unwrap_or(0))
            .sum(),
        orphan_chunks,
        sources_left,
        temp_dirs,
        faults,
        took: started.elapsed(),
    };
    drop(mesh);
    let _ = store.db.drop().await;
    stack.drop_database(&mongo_db).await;
    let _ = std::fs::remove_dir_all(&work);
    let topology = amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: [1, 3, 10, 30].map(Duration::from_secs).to_vec(),
    };
    test_kit::delete_work_queues(&stack.amqp_url, &queues.map(|q| topology.work_queue(&q))).await;
    outcome
}

/// Job directories left inside converter work directories, and directories
/// of converters no longer running (all converters are stopped here, so any
/// converter directory but the live ones' would be stale; the live ones are
/// empty of jobs once everything is done).
fn walkdir_jobs(work: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(work) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            std::fs::read_dir(e.path())
                .map(|inner| inner.flatten().filter(|j| j.path().is_dir()).count())
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let clip_dir = root().join(".stack/bench-clips");
    std::fs::create_dir_all(&clip_dir)?;
    let clips = vec![
        ("short.mp4", clip(&clip_dir, "chaos-8s.mp4", 8)),
        ("long.mp4", clip(&clip_dir, "chaos-60s.mp4", 60)),
        ("short.mp4", clip(&clip_dir, "chaos-8s.mp4", 8)),
        (
            "notes.mp4",
            b"these are meeting notes, not a video".repeat(100),
        ),
    ];
    let mut rows = Vec::new();
    for r in 0..args.runs {
        let run = format!(
            "{}{r}",
            test_kit::unique_name("c").replace('-', "")[..6].to_owned()
        );
        println!("run {} ({run}):", r + 1);
        let o = one_run(&args, &run, &clips).await;
        rows.push(o);
    }
    println!(
        "\n| run | answered OK | refused (retried) | done | failed | not finished | MP3 count wrong | email wrong | duplicate emails | announced again | orphan chunks | sources left | temp dirs left | faults | took (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for (i, o) in rows.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            i + 1,
            o.ok,
            o.refused,
            o.done,
            o.failed,
            o.unfinished,
            o.mp3_wrong,
            o.emails_wrong,
            o.duplicates,
            o.reannounced,
            o.orphan_chunks,
            o.sources_left,
            o.temp_dirs,
            o.faults.len(),
            o.took.as_secs_f64()
        );
    }
    let bad = rows.iter().any(|o| {
        o.unfinished + o.mp3_wrong + o.emails_wrong + o.duplicates + o.temp_dirs > 0
            || o.orphan_chunks > 0
            || o.sources_left > 0
    });
    anyhow::ensure!(!bad, "an invariant did not hold (see the table)");
    Ok(())
}
