//! Resumable uploads of a 1 GB video through a connection that drops: the
//! mesh as release processes (auth-svc, two gateways, a converter, notify-svc)
//! on the local stack, and two independent tus clients — tus-js-client (npm,
//! as the web app uses it) and tuspy (PyPI) — sending a 720p MP4 (index last)
//! of about 1 GB through test-kit's proxy, which drops every connection at
//! 25 %, 50 % and 75 % of the file. Then tus-js-client again while the
//! gateway it talks to is SIGKILLed half-way and the proxy sends it on to
//! the other replica. For each: bytes sent vs the file, the upload's time,
//! and the time from its last byte until the user's email went out.
//!
//! ```text
//! scripts/stack up
//! cargo build --release -p auth-svc -p gateway-svc -p converter-svc -p notify-svc -p bench
//! target/release/tus-bench
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use bench::clips::{make_clip, spec};
use bench::{
    Proc,
    services::{self, Listeners},
    wait_for_port,
};
use clap::Parser;
use media_store::mongodb::bson::oid::ObjectId;
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use test_kit::{proxy::Proxy, users::Admin};

#[derive(Debug, Parser)]
struct Args {
    /// Where the clips are made (once).
    #[arg(long, default_value = ".stack/bench-clips")]
    clip_dir: PathBuf,
    /// Bytes per PATCH (the web app sends 32 MiB).
    #[arg(long, default_value_t = 32 << 20)]
    chunk: u64,
}

const DROPS: u64 = 3;

/// About 1 GB: the 600 s clip five times over, remuxed into one MP4 (index
/// last, as ffmpeg writes it), made once.
fn gigabyte_clip(dir: &Path) -> PathBuf {
    let out = dir.join("3000s-concat.mp4");
    if out.exists() {
        return out;
    }
    let part = make_clip(dir, spec("600s"));
    let list = dir.join("3000s-concat.txt");
    std::fs::write(
        &list,
        format!("file '{}'\n", part.canonicalize().unwrap().display()).repeat(5),
    )
    .unwrap();
    let mut args: Vec<&OsStr> = ["-f", "concat", "-safe", "0", "-i"]
        .map(OsStr::new)
        .to_vec();
    args.extend([list.as_os_str(), OsStr::new("-c"), OsStr::new("copy")]);
    test_kit::clips::ffmpeg(args, &out);
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    TusJs,
    Tuspy,
}

fn client_command(
    client: Client,
    endpoint: &str,
    token: &str,
    file: &Path,
    chunk: u64,
) -> tokio::process::Command {
    let mut cmd = match client {
        Client::TusJs => {
            let mut c = tokio::process::Command::new("node");
            c.arg("e2e/browser/tus_upload.mjs");
            c
        }
        Client::Tuspy => {
            let mut c = tokio::process::Command::new(".tools/venv/bin/python");
            c.arg("e2e/tests/support/tus_upload.py");
            c
        }
    };
    cmd.args([endpoint, token])
        .arg(file)
        .arg(chunk.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

struct Row {
    what: String,
    size: u64,
    sent: u64,
    upload: Duration,
    emailed: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = test_kit::Stack::from_env();
    let clip = gigabyte_clip(&args.clip_dir);
    let size = std::fs::metadata(&clip)?.len();

    let db = test_kit::unique_name("tusbench").replace('-', "_");
    let jobs_db = stack.database(&db).await;
    let (video_q, mp3_q, notified_q) = (
        test_kit::unique_name("tb-video"),
        test_kit::unique_name("tb-mp3"),
        test_kit::unique_name("tb-notified"),
    );
    let (_auth, auth_addr) = services::start_auth(&stack, "tusbenchauth").await?;
    let notify_db = stack.fresh_database("tusbenchnotify").await;
    let common = |extra: &[(&'static str, String)]| {
        let mut e = services::store_vars(&stack, &db, &jobs_db);
        e.extend([
            ("VIDEO_QUEUE", video_q.clone()),
            ("MP3_QUEUE", mp3_q.clone()),
            ("NOTIFIED_QUEUE", notified_q.clone()),
            ("ADMIN_ADDR", services::local_addr()),
            ("RUST_LOG", "warn".into()),
        ]);
        e.extend_from_slice(extra);
        e
    };
    let gateway = || {
        let listeners = Listeners::new();
        let mut env = common(&listeners.gateway_vars(&auth_addr));
        env.extend([
            ("MAX_UPLOAD_SIZE", "4GiB".into()),
            ("MAX_STORED_PER_USER", "100GiB".into()),
            // A replica that dies holds its upload this long.
            ("UPLOAD_WRITER_LEASE", "10s".into()),
        ]);
        let p = Proc::start("gateway-svc", &env).unwrap();
        (p, format!("127.0.0.1:{}", listeners.http))
    };
    let (gw_a, http_a) = gateway();
    let (_gw_b, http_b) = gateway();
    let work = tempfile::tempdir()?;
    let _converter = Proc::start(
        "converter-svc",
        &common(&[("WORK_DIR", work.path().display().to_string())]),
    )?;
    let mut notify_env = common(&[]);
    notify_env.retain(|(k, _)| *k != "DATABASE_URL");
    notify_env.push(("DATABASE_URL", notify_db));
    notify_env.extend(services::smtp_vars(&stack));
    let _notify = Proc::start("notify-svc", &notify_env)?;
    for addr in [&auth_addr, &http_a, &http_b] {
        wait_for_port(addr).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs = test_kit_jobs(&jobs_db, &video_q).await;

    let admin = Admin::connect(&auth_addr, services::ADMIN).await?;
    let mut rows = Vec::new();
    for (what, client, kill) in [
        ("tus-js-client, 3 drops", Client::TusJs, false),
        ("tuspy, 3 drops", Client::Tuspy, false),
        (
            "tus-js-client, its gateway SIGKILLed at 50 %",
            Client::TusJs,
            true,
        ),
    ] {
        let email = format!("{}@bench.test", test_kit::unique_name("tus"));
        let token = admin.user(&email, "bench password").await?.token;

        let proxy = Proxy::start(&http_a).await;
        let endpoint = format!("http://{}/uploads", proxy.addr);
        let started = Instant::now();
        let mut child = client_command(client, &endpoint, &token, &clip, args.chunk).spawn()?;
        let cuts: Vec<u64> = if kill {
            vec![size / 2]
        } else {
            (1..=DROPS).map(|k| size * k / (DROPS + 1)).collect()
        };
        for at in cuts {
            while proxy.sent() < at {
                anyhow::ensure!(
                    child.try_wait()?.is_none(),
                    "{what}: the client ended early"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if kill {
                std::process::Command::new("kill")
                    .args(["-9", &gw_a.pid().to_string()])
                    .status()?;
                proxy.retarget(&http_b);
            }
            proxy.cut();
        }
        let out = child.wait_with_output().await?;
        anyhow::ensure!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let upload = started.elapsed();
        let uploaded = Instant::now();
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let id: ObjectId = url.rsplit('/').next().unwrap_or_default().parse()?;
        loop {
            let job = jobs
                .get(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{what}: no job"))?;
            if job.notified {
                anyhow::ensure!(job.state == media_store::JobState::Done, "{what}: {job:?}");
                break;
            }
            anyhow::ensure!(
                uploaded.elapsed() < Duration::from_secs(900),
                "{what}: not emailed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rows.push(Row {
            what: what.to_owned(),
            size,
            sent: proxy.sent(),
            upload,
            emailed: uploaded.elapsed(),
        });
    }

    println!(
        "\nResumable uploads (tus) of a {:.0} MB 720p MP4 (index last) through a dropping connection, {} B a PATCH ({} cores)\n",
        size as f64 / 1e6,
        args.chunk,
        std::thread::available_parallelism()?
    );
    println!("| client | bytes sent / file | upload (s) | last byte → emailed (s) |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.4} | {:.1} | {:.1} |",
            r.what,
            r.sent as f64 / r.size as f64,
            r.upload.as_secs_f64(),
            r.emailed.as_secs_f64()
        );
    }
    Ok(())
}

async fn test_kit_jobs(url: &str, queue: &str) -> media_store::Jobs {
    let pool = svc_kit::pg::pool(
        &svc_kit::config::Secret::new(url.to_owned()),
        2,
        Duration::from_secs(5),
        "tus-bench",
    )
    .unwrap();
    media_store::Jobs::new(
        pool,
        media_store::Routes {
            video_queue: queue.to_owned(),
            mp3_queue: "unused".into(),
            webhook_queue: "unused".into(),
            delete_sources: true,
        },
    )
}
