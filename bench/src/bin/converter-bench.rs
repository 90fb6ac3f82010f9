//! A conversion through converter-svc (publish `VideoUploaded` → `Mp3Ready`
//! received) side by side with the same ffmpeg command on a local file (the
//! limit), for a 1-minute and a 10-minute clip; the time spent spooling the
//! video out of GridFS; and the throughput of 1 and 2 instances.
//!
//!     cargo build --release -p converter-svc
//!     cargo run --release -p bench --bin converter-bench

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use amqp_kit::{Publisher, event_properties, lapin};
use bench::{Proc, free_port};
use clap::Parser;
use futures::AsyncWriteExt;
use media_store::{
    Job, JobState, Store,
    mongodb::bson::{doc, oid::ObjectId},
};
use mp3converter_proto::{
    EventType,
    events::v1::{Mp3Ready, VideoUploaded},
};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};
use svc_kit::config::Secret;

#[derive(Debug, Parser)]
struct Args {
    /// Clip lengths in seconds.
    #[arg(long, value_delimiter = ',', default_value = "60,600")]
    clips: Vec<u32>,
    /// Jobs (1-minute clips) for the throughput runs.
    #[arg(long, default_value_t = 6)]
    jobs: usize,
}

struct Env {
    store: Store,
    publisher: Publisher,
    video_queue: String,
    mp3_queue: String,
    amqp: Secret,
}

fn make_clip(dir: &Path, secs: u32) -> PathBuf {
    let out = dir.join(format!("clip-{secs}s.mp4"));
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
        .arg(format!("testsrc=duration={secs}:size=320x240:rate=25"))
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
        ])
        .args(["-c:a", "aac", "-movflags", "+faststart"])
        .arg(&out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg could not make the clip");
    out
}

/// The converter's ffmpeg command, on a local file.
fn plain_ffmpeg(input: &Path, dir: &Path) -> Duration {
    let t = Instant::now();
    let ok = Command::new("ffmpeg")
        .args([
            "-y",
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-xerror",
            "-i",
        ])
        .arg(input)
        .args([
            "-map",
            "0:a:0",
            "-vn",
            "-c:a",
            "libmp3lame",
            "-q:a",
            "2",
            "-f",
            "mp3",
        ])
        .arg(dir.join("plain.mp3"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    t.elapsed()
}

impl Env {
    async fn submit(&self, path: &Path) -> ObjectId {
        let bytes = std::fs::read(path).unwrap();
        let id = ObjectId::new();
        let mut up = self
            .store
            .videos
            .open_upload_stream("clip.mp4")
            .id(id.into())
            .metadata(doc! { "owner_id": "bench" })
            .await
            .unwrap();
        up.write_all(&bytes).await.unwrap();
        up.close().await.unwrap();
        let mut job = Job::uploading(
            id,
            "bench",
            "bench@example.com",
            "clip.mp4",
            "video/mp4",
            Default::default(),
        );
        job.state = JobState::Queued;
        job.size_bytes = bytes.len() as i64;
        job.published = true;
        self.store.jobs.insert(&job).await.unwrap();
        id
    }

    async fn publish(&self, id: ObjectId) {
        let ev = VideoUploaded {
            event_id: id.to_hex(),
            job_id: id.to_hex(),
            video_id: id.to_hex(),
            owner_id: "bench".into(),
            owner_email: "bench@example.com".into(),
            filename: "clip.mp4".into(),
            ..Default::default()
        };
        self.publisher
            .publish(
                &self.video_queue,
                &prost::Message::encode_to_vec(&ev),
                event_properties(VideoUploaded::TYPE, &ev.event_id, Default::default()),
            )
            .await
            .unwrap();
    }

    /// Waits for `n` Mp3Ready events.
    async fn ready(&self, n: usize) {
        let conn = amqp_kit::connect(&self.amqp, "bench").await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut got = 0;
        while got < n {
            match ch
                .basic_get(
                    self.mp3_queue.as_str().into(),
                    lapin::options::BasicGetOptions::default(),
                )
                .await
                .unwrap()
            {
                Some(m) => {
                    assert_eq!(
                        m.delivery.properties.kind().as_ref().map(|k| k.as_str()),
                        Some(Mp3Ready::TYPE),
                        "a conversion failed"
                    );
                    m.delivery.acker.ack(Default::default()).await.unwrap();
                    got += 1;
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Reads a stored video back to a file, as the converter spools it.
    async fn spool(&self, id: ObjectId, to: &Path) -> Duration {
        let t = Instant::now();
        let file = self
            .store
            .videos
            .find_one(doc! { "_id": id })
            .await
            .unwrap()
            .unwrap();
        let mut r = self.store.video_files.stream((&file).into(), 0, 16);
        let mut out = tokio::fs::File::create(to).await.unwrap();
        while let Some(b) = r.next_chunk().await.unwrap() {
            tokio::io::AsyncWriteExt::write_all(&mut out, &b)
                .await
                .unwrap();
        }
        out.sync_all().await.unwrap();
        t.elapsed()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = test_kit::Stack::from_env();
    let db = test_kit::unique_name("convbench").replace('-', "_");
    let video_queue = test_kit::unique_name("video-bench");
    let mp3_queue = test_kit::unique_name("mp3-bench");
    let amqp = Secret::new(stack.amqp_url.clone());
    let topology = amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: vec![
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(300),
        ],
    };
    let env = Env {
        store: Store::new(
            &Secret::new(stack.mongodb_uri.clone()),
            &db,
            "bench",
            media_store::Timeouts::default(),
        )
        .await?,
        publisher: Publisher::with_topology(
            amqp.clone(),
            "bench",
            Duration::from_secs(10),
            vec![topology.work_queue(&video_queue)],
        ),
        video_queue: video_queue.clone(),
        mp3_queue: mp3_queue.clone(),
        amqp,
    };
    let dir = tempfile::tempdir()?;
    let converter = || {
        Proc::start(
            "converter-svc",
            &[
                ("ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
                ("AMQP_URL", stack.amqp_url.clone()),
                ("MONGODB_URI", stack.mongodb_uri.clone()),
                ("MONGODB_DATABASE", db.clone()),
                ("VIDEO_QUEUE", video_queue.clone()),
                ("MP3_QUEUE", mp3_queue.clone()),
                ("WORK_DIR", dir.path().display().to_string()),
            ],
        )
    };

    println!("generating clips…");
    let clips: Vec<(u32, PathBuf)> = args
        .clips
        .iter()
        .map(|&s| (s, make_clip(dir.path(), s)))
        .collect();
    let one = converter()?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut rows = Vec::new();
    for (secs, clip) in &clips {
        let plain = plain_ffmpeg(clip, dir.path());
        let id = env.submit(clip).await;
        let spool = env.spool(id, &dir.path().join("spooled.mp4")).await;
        let t = Instant::now();
        env.publish(id).await;
        env.ready(1).await;
        let service = t.elapsed();
        let mib = std::fs::metadata(clip)?.len() as f64 / f64::from(1u32 << 20);
        rows.push((*secs, mib, service, plain, spool));
    }

    // Throughput: the same batch with one instance, then two.
    let batch_clip = &clips.iter().min_by_key(|(s, _)| *s).unwrap().1;
    let mut ids = Vec::new();
    for _ in 0..args.jobs {
        ids.push(env.submit(batch_clip).await);
    }
    let t = Instant::now();
    for id in &ids {
        env.publish(*id).await;
    }
    env.ready(ids.len()).await;
    let with_one = t.elapsed();

    let two = converter()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ids = Vec::new();
    for _ in 0..args.jobs {
        ids.push(env.submit(batch_clip).await);
    }
    let t = Instant::now();
    for id in &ids {
        env.publish(*id).await;
    }
    env.ready(ids.len()).await;
    let with_two = t.elapsed();
    drop((one, two));

    println!(
        "\nconverter-svc: one conversion, publish → Mp3Ready, vs plain ffmpeg on a local file ({} cores)\n",
        std::thread::available_parallelism()?
    );
    println!(
        "| clip | size (MiB) | through the service (s) | plain ffmpeg (s) | ratio | of which spooling from GridFS (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (secs, mib, service, plain, spool) in rows {
        println!(
            "| {} min | {mib:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            secs / 60,
            service.as_secs_f64(),
            plain.as_secs_f64(),
            service.as_secs_f64() / plain.as_secs_f64(),
            spool.as_secs_f64()
        );
    }
    let jpm = |d: Duration| args.jobs as f64 / d.as_secs_f64() * 60.0;
    println!("\n| instances | jobs | wall time (s) | jobs/min |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| 1 | {} | {:.2} | {:.1} |",
        args.jobs,
        with_one.as_secs_f64(),
        jpm(with_one)
    );
    println!(
        "| 2 | {} | {:.2} | {:.1} |",
        args.jobs,
        with_two.as_secs_f64(),
        jpm(with_two)
    );
    let _ = env.store.db.drop().await;
    Ok(())
}
