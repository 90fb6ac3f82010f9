//! The MP3 ready when the upload ends: uploads through the gateway's gRPC
//! API at full speed, converted while they arrive (live) and, side by side,
//! after the upload (a second gateway with `LIVE_CONVERSION=false` on the same
//! stores), from the upload's last byte to `Mp3Ready`, against plain ffmpeg
//! on a local copy of the same file; the upload's own time, the converter's
//! peak RSS, and the CPU every process (services, FerretDB, PostgreSQL)
//! spent per job. Then 10 parallel uploads over REST with 2 converters until
//! all are emailed.
//!
//!     cargo build --release -p auth-svc -p gateway-svc -p converter-svc -p notify-svc -p bench
//!     target/release/live-bench

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use bench::{
    Proc,
    clips::{make_clip, plain_ffmpeg, spec},
    services::{self, Listeners},
    wait_for_port,
};
use clap::Parser;
use futures::StreamExt;
use mp3converter_proto::{
    events::v1::Mp3Ready,
    media::v1::{
        UploadCommit, UploadMetadata, UploadRequest, media_service_client::MediaServiceClient,
        upload_request::Payload,
    },
};
use std::{
    collections::HashMap,
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use svc_kit::config::Secret;
use test_kit::users::Admin;

#[derive(Parser)]
struct Args {
    /// Where generated clips are kept.
    #[arg(long, default_value = ".stack/bench-clips")]
    clip_dir: PathBuf,
    /// Skip the 1 GB clip.
    #[arg(long)]
    no_gigabyte: bool,
    /// Skip the 10 parallel uploads.
    #[arg(long)]
    no_parallel: bool,
    /// Only the 10 parallel uploads.
    #[arg(long)]
    only_parallel: bool,
    /// Rounds of the 10 parallel uploads (each round runs both ways, the
    /// order alternating from round to round).
    #[arg(long, default_value_t = 2)]
    parallel_rounds: usize,
}

/// CPU seconds all processes named `name` have used.
fn cpu_of(name: &str) -> f64 {
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with(&format!("({name}")) {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (t(11) + t(12)) / 100.0;
    }
    total
}

/// The CPU of every process a job touches.
fn cpu_now(procs: &[&Proc]) -> f64 {
    procs.iter().map(|p| p.cpu_seconds()).sum::<f64>() + cpu_of("ferretdb") + cpu_of("postgres")
}

/// Makes `out` from `src` once with ffmpeg `args` (a remux or re-encode).
fn derived(src: &Path, out: &Path, args: &[&str]) -> PathBuf {
    if !out.exists() {
        eprintln!("  making {}…", out.display());
        let args = [OsStr::new("-i"), src.as_os_str()]
            .into_iter()
            .chain(args.iter().map(OsStr::new));
        test_kit::clips::ffmpeg(args, out);
    }
    out.to_owned()
}

struct Row {
    clip: String,
    mib: f64,
    live: bool,
    upload: f64,
    ready: f64,
    ffmpeg: f64,
    cpu: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = test_kit::Stack::from_env();
    let dir = &args.clip_dir;
    let mp4_60 = make_clip(dir, spec("60s"));
    let mut clips: Vec<(String, PathBuf)> = vec![
        (
            "60 s MKV".into(),
            derived(&mp4_60, &dir.join("60s.mkv"), &["-c", "copy"]),
        ),
        (
            "60 s WebM".into(),
            derived(
                &mp4_60,
                &dir.join("60s.webm"),
                &[
                    "-c:v",
                    "libvpx-vp9",
                    "-deadline",
                    "realtime",
                    "-cpu-used",
                    "8",
                    "-b:v",
                    "2M",
                    "-c:a",
                    "libopus",
                ],
            ),
        ),
        ("60 s MP4, index last".into(), mp4_60.clone()),
        (
            "60 s MOV (ffmpeg -f mov)".into(),
            derived(&mp4_60, &dir.join("60s.mov"), &["-c", "copy", "-f", "mov"]),
        ),
        ("600 s MP4, index last".into(), make_clip(dir, spec("600s"))),
    ];
    if !args.no_gigabyte {
        clips.push((
            "3000 s MP4, index last".into(),
            make_clip(dir, spec("size-3000s")),
        ));
    }

    // The mesh, as processes.
    let db = test_kit::unique_name("livebench").replace('-', "_");
    let jobs_db = stack.database(&db).await;
    let (video_q, mp3_q) = (
        test_kit::unique_name("lb-video"),
        test_kit::unique_name("lb-mp3"),
    );
    let (_auth, auth_addr) = services::start_auth(&stack, "livebenchauth").await?;
    let common = |extra: &[(&'static str, String)]| {
        let mut e = services::store_vars(&stack, &db, &jobs_db);
        e.extend([
            ("VIDEO_QUEUE", video_q.clone()),
            ("MP3_QUEUE", mp3_q.clone()),
            ("ADMIN_ADDR", services::local_addr()),
        ]);
        e.extend_from_slice(extra);
        e
    };
    let gateway = |live: bool| {
        let listeners = Listeners::new();
        let mut env = common(&listeners.gateway_vars(&auth_addr));
        env.extend([
            ("LIVE_CONVERSION", live.to_string()),
            ("MAX_UPLOAD_SIZE", "4GiB".into()),
            ("MAX_WAITING_JOBS_PER_USER", "1000".into()),
            ("MAX_UPLOADS_PER_USER", "100".into()),
            ("MAX_STORED_PER_USER", "100GiB".into()),
        ]);
        let p = Proc::start("gateway-svc", &env).unwrap();
        (p, listeners.grpc, listeners.http)
    };
    let (gw_live, grpc_live, http_live) = gateway(true);
    let (gw_after, grpc_after, http_after) = gateway(false);
    let work = tempfile::tempdir()?;
    let converter = |n: usize| {
        Proc::start(
            "converter-svc",
            &common(&[
                ("WORK_DIR", work.path().display().to_string()),
                ("CONCURRENCY", "2".into()),
                ("HOSTNAME", format!("conv{n}")),
            ]),
        )
        .unwrap()
    };
    let conv = converter(0);
    wait_for_port(&auth_addr).await?;
    wait_for_port(&format!("127.0.0.1:{grpc_live}")).await?;
    wait_for_port(&format!("127.0.0.1:{grpc_after}")).await?;
    wait_for_port(&format!("127.0.0.1:{http_live}")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let admin = Admin::connect(&auth_addr, services::ADMIN).await?;
    let email = format!("{}@bench.test", test_kit::unique_name("live"));
    let token = admin.user(&email, "bench password").await?.token;

    // Mp3Ready, timed as it arrives.
    let ready: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let amqp = Secret::new(stack.amqp_url.clone());
    let conn = amqp_kit::connect(&amqp, "live-bench").await?;
    let ch = conn.create_channel().await?;
    let topology = amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: [2, 10, 30, 60, 300].map(Duration::from_secs).to_vec(),
    };
    amqp_kit::declare_work_queue(&ch, &topology.work_queue(&mp3_q)).await?;
    let mut consumer = ch
        .basic_consume(
            mp3_q.as_str().into(),
            "live-bench".into(),
            Default::default(),
            Default::default(),
        )
        .await?;
    {
        let ready = ready.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let at = Instant::now();
                if let Ok(e) = amqp_kit::decode::<Mp3Ready>(&d) {
                    ready.lock().unwrap().insert(e.job_id, at);
                }
                let _ = d.acker.ack(Default::default()).await;
            }
        });
    }

    let out = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    let clips = if args.only_parallel {
        &[][..]
    } else {
        &clips[..]
    };
    for (name, path) in clips {
        let bytes = bytes::Bytes::from(std::fs::read(path)?);
        let mib = bytes.len() as f64 / f64::from(1u32 << 20);
        let ffmpeg = plain_ffmpeg(path, &out.path().join("plain.mp3")).as_secs_f64();
        for live in [true, false] {
            let grpc = if live { grpc_live } else { grpc_after };
            conv.reset_peak();
            let cpu0 = cpu_now(&[&conv, &gw_live, &gw_after]);
            let (job_id, started, committed) = upload(grpc, &token, name, bytes.clone()).await?;
            let done = loop {
                if let Some(at) = ready.lock().unwrap().get(&job_id) {
                    break *at;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(600),
                    "{name}: no Mp3Ready"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            // Settle (the source deleted, the relay idle) before the CPU is read.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let cpu = cpu_now(&[&conv, &gw_live, &gw_after]) - cpu0;
            rows.push(Row {
                clip: name.clone(),
                mib,
                live,
                upload: (committed - started).as_secs_f64(),
                ready: done.saturating_duration_since(committed).as_secs_f64(),
                ffmpeg,
                cpu,
            });
            if live {
                rss.push((name.clone(), conv.peak_rss_mib()));
            }
        }
    }

    if !rows.is_empty() {
        print_clips(&rows, &rss);
    }

    if !args.no_parallel {
        drop(conv);
        let _c1 = converter(1);
        let _c2 = converter(2);
        let notify_db = stack.fresh_database("livebenchnotify").await;
        let mut notify_env = vec![
            ("ADMIN_ADDR", services::local_addr()),
            ("AMQP_URL", stack.amqp_url.clone()),
            ("MP3_QUEUE", mp3_q.clone()),
            ("DATABASE_URL", notify_db),
        ];
        notify_env.extend(services::smtp_vars(&stack));
        let _notify = Proc::start("notify-svc", &notify_env)?;
        // Our consumer steps aside: notify-svc takes the outcomes.
        let _ = conn.close(200, "done".into()).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!("\n## 10 parallel 60 s uploads over REST, 2 converters, notify-svc → Mailpit\n");
        println!(
            "| round | conversion | uploads done (s) | last upload's end → last email (s) | first byte → last email (s) |"
        );
        println!("|---:|---|---:|---:|---:|");
        let bytes = std::fs::read(&mp4_60)?;
        for round in 0..args.parallel_rounds {
            let mut order = [(false, http_after), (true, http_live)];
            if round % 2 == 1 {
                order.reverse();
            }
            for (live, http) in order {
                let email = format!("{}@bench.test", test_kit::unique_name("par"));
                let token = admin.user(&email, "bench password").await?.token;
                let (t0, last_upload, all) = parallel(&stack, http, &token, &email, &bytes).await?;
                println!(
                    "| {} | {} | {:.2} | {:.2} | {:.2} |",
                    round + 1,
                    if live {
                        "while uploading"
                    } else {
                        "after the upload"
                    },
                    (last_upload - t0).as_secs_f64(),
                    (all - last_upload).as_secs_f64(),
                    (all - t0).as_secs_f64()
                );
                // Let the sources' deletion and the relays settle.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    }
    test_kit::delete_work_queues(
        &stack.amqp_url,
        &[
            topology.work_queue(&video_q),
            topology.work_queue(&mp3_q),
            topology.hint_queue(&format!("{video_q}.live")),
        ],
    )
    .await;
    stack.drop_database(&db).await;
    Ok(())
}

fn print_clips(rows: &[Row], rss: &[(String, f64)]) {
    println!(
        "\n## From the upload's end (the commit answered) to Mp3Ready (gRPC upload at full speed, one converter)\n"
    );
    println!(
        "| clip | MiB | conversion | upload (s) | upload's end → Mp3Ready (s) | plain ffmpeg, local file (s) | ratio to ffmpeg | CPU, all processes (s) |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.clip,
            r.mib,
            if r.live {
                "while uploading"
            } else {
                "after the upload"
            },
            r.upload,
            r.ready,
            r.ffmpeg,
            r.ready / r.ffmpeg,
            r.cpu
        );
    }
    println!("\nConverter peak RSS (VmHWM, without ffmpeg's), converting while uploading:");
    for (name, mib) in rss {
        println!("- {name}: {mib:.1} MiB");
    }
}

/// One upload through MediaService.Upload, 1 MiB messages as fast as the
/// gateway takes them: the job id, when it started, when the gateway
/// answered the commit (the upload is over for the user).
async fn upload(
    grpc: u16,
    token: &str,
    name: &str,
    bytes: bytes::Bytes,
) -> anyhow::Result<(String, Instant, Instant)> {
    let mut media = MediaServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let started = Instant::now();
    let call = tokio::spawn(async move { media.upload(req).await });
    let send = |p| tx.send(UploadRequest { payload: Some(p) });
    send(Payload::Metadata(UploadMetadata {
        filename: name.replace(' ', "_"),
        declared_size_bytes: Some(bytes.len() as u64),
        ..Default::default()
    }))
    .await?;
    for i in (0..bytes.len()).step_by(1 << 20) {
        send(Payload::Chunk(
            bytes.slice(i..(i + (1 << 20)).min(bytes.len())),
        ))
        .await?;
    }
    send(Payload::Commit(UploadCommit {
        total_bytes: bytes.len() as u64,
    }))
    .await?;
    drop(tx);
    let job = call.await??.into_inner().job.unwrap();
    Ok((job.job_id, started, Instant::now()))
}

/// 10 uploads of `bytes` at once over REST as `email`, until all 10 are
/// emailed: when they began, when the last upload was answered, when the
/// last email arrived.
async fn parallel(
    stack: &test_kit::Stack,
    http: u16,
    token: &str,
    email: &str,
    bytes: &[u8],
) -> anyhow::Result<(Instant, Instant, Instant)> {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let uploads = (0..10).map(|i| {
        let (client, token, bytes) = (client.clone(), token.to_owned(), bytes.to_vec());
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(format!("clip{i}.mp4")),
            );
            let res = client
                .post(format!("http://127.0.0.1:{http}/upload"))
                .bearer_auth(token)
                .multipart(form)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            Instant::now()
        })
    });
    let ends: Vec<Instant> = futures::future::join_all(uploads)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let last_upload = ends.into_iter().max().unwrap();
    let mailpit = test_kit::mailpit::Mailpit::new(&stack.mailpit_api_url);
    loop {
        let got = mailpit
            .messages_to(email)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if got >= 10 {
            return Ok((t0, last_upload, Instant::now()));
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(300),
            "only {got} of 10 emailed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
