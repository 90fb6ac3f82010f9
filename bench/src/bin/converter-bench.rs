//! converter-svc measured against its limits, in one run, on clips as users
//! upload them (720p H.264 + AAC, the index at the end as phones write it):
//!
//! - per clip: plain ffmpeg on a local file with the same output settings,
//!   the raw driver reading the same stored file through one cursor, and the
//!   service from the `VideoUploaded` publish to the `Mp3Ready` it publishes,
//!   with a per-phase breakdown from the converter's own spans (exported to
//!   an OTLP receiver in this process) and the converter's peak RSS;
//! - every clip again with `--stored` GiB of other videos already stored;
//! - time per MB from 20 MB to 1 GB (`--sizes`);
//! - throughput: 10 parallel 60 s uploads with 2 converters until all are
//!   emailed (notify-svc and Mailpit), and jobs per minute for 1 and 2
//!   instances and 1, 2 and 4 jobs at a time;
//! - the converter's RSS after 100 jobs.
//!
//! Converting while uploading, through the gateway, is `live-bench`'s.
//!
//! Run:
//!
//!     cargo build --release -p converter-svc -p notify-svc -p bench
//!     target/release/converter-bench [--sizes]
//!
//! Clips are generated once into `.stack/bench-clips/`.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use amqp_kit::{Publisher, lapin};
use bench::clips::{make_clip, plain_ffmpeg, spec};
use bench::{Proc, free_port};
use clap::Parser;
use futures::{AsyncWriteExt, StreamExt, TryStreamExt};
use media_store::{
    Job, JobState, Store,
    mongodb::bson::{doc, oid::ObjectId},
};
use mp3converter_proto::events::v1::{Mp3Ready, VideoUploaded};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use svc_kit::config::Secret;
use test_kit::otlp::Receiver;

#[derive(Debug, Parser)]
struct Args {
    /// The GridFS server (default: the stack's).
    #[arg(long, env = "MONGODB_URI")]
    mongodb_uri: Option<String>,
    /// Clips of the per-clip table.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "60s,120s-noisy,600s,talk-1h"
    )]
    clips: Vec<String>,
    /// Rounds of the per-clip table (services and limits alternate).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// GiB already stored for the stored-data comparison (0 to skip).
    #[arg(long, default_value_t = 2.0)]
    stored: f64,
    /// Also measure time per MB from 20 MB to 1 GB.
    #[arg(long)]
    sizes: bool,
    /// Skip the throughput runs.
    #[arg(long)]
    no_throughput: bool,
    /// Skip the converter's RSS over 100 jobs (about 7 minutes).
    #[arg(long)]
    no_hundred: bool,
    /// Where generated clips are kept.
    #[arg(long, default_value = ".stack/bench-clips")]
    clip_dir: PathBuf,
}

struct Env<'a> {
    store: Store,
    /// The jobs (PostgreSQL), and their database's URL for the services.
    jobs: media_store::Jobs,
    jobs_url: String,
    publisher: Publisher,
    video_queue: String,
    mp3_queue: String,
    mongodb_uri: String,
    stack: test_kit::Stack,
    work: tempfile::TempDir,
    receiver: &'a Receiver,
    owner_email: String,
    out_dir: tempfile::TempDir,
}

impl Env<'_> {
    /// Stores the clip as an upload would (timed: the raw driver write) and
    /// records its job.
    async fn store(&self, clip: &Path) -> (ObjectId, Duration) {
        let bytes = tokio::fs::read(clip).await.unwrap();
        let name = clip.file_name().unwrap().to_string_lossy().into_owned();
        let (id, wrote) = retry_busy(&format!("storing {name}"), || {
            self.write_video(&name, &bytes)
        })
        .await
        .unwrap();
        let mut job = Job::uploading(
            id,
            "bench",
            &self.owner_email,
            &name,
            "video/mp4",
            Default::default(),
        );
        job.state = JobState::Queued;
        job.size_bytes = bytes.len() as i64;
        self.jobs.insert(&job).await.unwrap();
        (id, wrote)
    }

    /// Waits until no source video is stored (the converters' sweepers
    /// caught up); how long that took.
    async fn sources_gone(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        loop {
            let left = self
                .store
                .video_files
                .files
                .count_documents(doc! {})
                .await
                .unwrap_or(u64::MAX / 32);
            if left == 0 {
                return Ok(t.elapsed());
            }
            anyhow::ensure!(t.elapsed() < timeout, "{left} sources still stored");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A GridFS upload stream for video `id`, as the gateway opens it.
    async fn open_upload(
        &self,
        id: ObjectId,
        name: &str,
    ) -> Result<media_store::mongodb::gridfs::GridFsUploadStream, media_store::mongodb::error::Error>
    {
        self.store
            .videos
            .open_upload_stream(name)
            .id(id.into())
            .metadata(doc! { "owner_id": "bench" })
            .await
    }

    /// The raw driver write of one upload (timed), with the MP4 index kept
    /// beside it as the gateway does, so the converter need not read the end
    /// of the file first.
    async fn write_video(&self, name: &str, bytes: &[u8]) -> anyhow::Result<(ObjectId, Duration)> {
        let id = ObjectId::new();
        let t = Instant::now();
        let mut up = self.open_upload(id, name).await?;
        let mut scanner = mp4_index::Scanner::default();
        for c in bytes.chunks(1 << 20) {
            scanner.feed(c);
            if let Err(e) = up.write_all(c).await {
                let _ = up.abort().await;
                return Err(e.into());
            }
        }
        up.close().await?;
        let wrote = t.elapsed();
        if let Some(index) = scanner.finish() {
            media_store::gridfs::keep_mp4_index(&self.store.video_files, id, &index).await?;
        }
        Ok((id, wrote))
    }

    async fn publish(&self, id: ObjectId) {
        self.publish_to(id, &self.owner_email).await;
    }

    /// The raw driver reading a stored video through one cursor (bytes
    /// dropped): the GridFS server's own limit.
    async fn raw_read(&self, id: ObjectId) -> Duration {
        let t = Instant::now();
        let mut cursor = self
            .store
            .video_files
            .chunks
            // As the service asks: no sort (see media_store::gridfs).
            .find(doc! { "files_id": id, "n": { "$gte": 0 } })
            .batch_size(8)
            .await
            .unwrap();
        let mut bytes = 0usize;
        while let Some(d) = cursor.try_next().await.unwrap() {
            bytes += d.get_binary_generic("data").unwrap().len();
        }
        assert!(bytes > 0);
        t.elapsed()
    }

    fn converter(&self, concurrency: u16) -> anyhow::Result<Proc> {
        Proc::start(
            "converter-svc",
            &[
                ("ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
                ("AMQP_URL", self.stack.amqp_url.clone()),
                ("MONGODB_URI", self.mongodb_uri.clone()),
                ("MONGODB_DATABASE", self.store.db.name().to_owned()),
                ("DATABASE_URL", self.jobs_url.clone()),
                ("VIDEO_QUEUE", self.video_queue.clone()),
                ("MP3_QUEUE", self.mp3_queue.clone()),
                ("WORK_DIR", self.work.path().display().to_string()),
                ("CONCURRENCY", concurrency.to_string()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", self.receiver.endpoint()),
                ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
                ("JOB_EVENTS_EXCHANGE", test_kit::unique_name("bench-events")),
            ],
        )
    }
}

/// Waits for `n` Mp3Ready on the mp3 queue; returns when each arrived.
async fn mp3_ready(ch: &lapin::Channel, queue: &str, n: usize) -> Vec<Instant> {
    let mut at = Vec::new();
    consume_ready(ch, queue, |_| {
        at.push(Instant::now());
        at.len() < n
    })
    .await;
    at
}

/// Hands each `Mp3Ready` arriving on `queue` to `more` until it says it
/// wants no more; any other outcome fails the bench.
async fn consume_ready(ch: &lapin::Channel, queue: &str, mut more: impl FnMut(Mp3Ready) -> bool) {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            test_kit::unique_name("bench").as_str().into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    loop {
        let d = tokio::time::timeout(Duration::from_secs(900), consumer.next())
            .await
            .expect("an outcome within 15 min")
            .unwrap()
            .unwrap();
        let ready = amqp_kit::decode::<Mp3Ready>(&d).unwrap_or_else(|e| {
            panic!(
                "a conversion failed ({e}): {:?}",
                String::from_utf8_lossy(&d.data)
            )
        });
        if !more(ready) {
            break;
        }
    }
    ch.basic_cancel(consumer.tag(), Default::default())
        .await
        .unwrap();
}

/// Milliseconds of the converter's spans for a job, by name, plus `setup`
/// (claim to ffmpeg's start) and `after ffmpeg` (its end to the outcome).
async fn phases(receiver: &Receiver, job: ObjectId) -> HashMap<String, f64> {
    // The converter exports in batches: wait for the delivery's span (the
    // last to end) rather than a fixed time.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = spans_of(receiver, job);
        if p.contains_key("process") || Instant::now() > deadline {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spans_of(receiver: &Receiver, job: ObjectId) -> HashMap<String, f64> {
    let spans = receiver.spans();
    let Some(convert) = spans
        .iter()
        .find(|s| s.name == "convert" && s.attr("job_id") == Some(job.to_hex().as_str()))
    else {
        return HashMap::new();
    };
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
    let children: Vec<&test_kit::otlp::ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == convert.trace_id && s.parent_span_id == convert.span_id)
        .collect();
    let mut out: HashMap<String, f64> = children
        .iter()
        .map(|s| (s.name.clone(), ms(s.start_unix_nano, s.end_unix_nano)))
        .collect();
    out.insert(
        "convert".into(),
        ms(convert.start_unix_nano, convert.end_unix_nano),
    );
    if let Some(ff) = children.iter().find(|s| s.name == "ffmpeg to_mp3") {
        out.insert(
            "setup".into(),
            ms(convert.start_unix_nano, ff.start_unix_nano),
        );
        out.insert(
            "after ffmpeg".into(),
            ms(ff.end_unix_nano, convert.end_unix_nano),
        );
    }
    if let Some(process) = spans.iter().find(|s| s.span_id == convert.parent_span_id) {
        out.insert(
            "process".into(),
            ms(process.start_unix_nano, process.end_unix_nano),
        );
    }
    out
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).unwrap().len() as f64 / f64::from(1u32 << 20)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = test_kit::Stack::from_env();
    let video_queue = test_kit::unique_name("video-bench");
    let mp3_queue = test_kit::unique_name("mp3-bench");
    let amqp = Secret::new(stack.amqp_url.clone());
    let topology = topology();
    let queues = vec![
        topology.work_queue(&video_queue),
        topology.work_queue(&mp3_queue),
        // The converters' default live queue.
        topology.hint_queue(&format!("{video_queue}.live")),
    ];
    let publisher = Publisher::with_topology(
        amqp.clone(),
        "bench",
        Duration::from_secs(10),
        queues.clone(),
    );
    publisher.check().await?;
    let conn = amqp_kit::connect(&amqp, "bench-outcomes").await?;
    let ch = conn.create_channel().await?;
    let receiver = Receiver::start().await;
    let cores = std::thread::available_parallelism()?;

    println!("clips ({}):", args.clip_dir.display());
    let mut names: Vec<&str> = args.clips.iter().map(String::as_str).collect();
    if args.sizes {
        names.extend(["size-60s", "size-300s", "size-600s", "size-3000s"]);
    }
    names.push("10s");
    let clips: HashMap<&str, PathBuf> = names
        .iter()
        .map(|n| (*n, make_clip(&args.clip_dir, spec(n))))
        .collect();

    let mongodb_uri = args
        .mongodb_uri
        .clone()
        .unwrap_or_else(|| stack.mongodb_uri.clone());
    let db = test_kit::unique_name("convbench").replace('-', "_");
    let jobs_url = stack.database(&db).await;
    let jobs = media_store::Jobs::connect(
        &media_store::DatabaseArgs {
            database_url: Secret::new(jobs_url.clone()),
            db_pool_size: 4,
            db_timeout: Duration::from_secs(5),
        },
        "bench",
        media_store::Routes {
            video_queue: video_queue.clone(),
            mp3_queue: mp3_queue.clone(),
            webhook_queue: "webhooks".into(),
            delete_sources: true,
        },
    )
    .await?;
    let env = Env {
        store: Store::new(
            &Secret::new(mongodb_uri.clone()),
            &db,
            "bench",
            media_store::Timeouts::default(),
        )
        .await?,
        jobs,
        jobs_url,
        publisher: publisher.clone(),
        video_queue: video_queue.clone(),
        mp3_queue: mp3_queue.clone(),
        mongodb_uri: mongodb_uri.clone(),
        stack: stack.clone(),
        work: tempfile::tempdir()?,
        receiver: &receiver,
        owner_email: format!("{}@bench.test", test_kit::unique_name("owner")),
        out_dir: tempfile::tempdir()?,
    };
    env.store.ensure_indexes().await?;
    println!("\n# GridFS server: {mongodb_uri}, {cores} cores\n");
    let conv = env.converter(1)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    per_clip(&env, &ch, &conv, &clips, &args).await?;
    if args.stored > 0.0 {
        stored(&env, &ch, &clips, &args.clips, args.stored).await?;
    }
    if args.sizes {
        sizes(&env, &ch, &conv, &clips).await;
    }
    if !args.no_hundred {
        hundred(&env, &ch, &conv, &clips).await;
    }
    drop(conv);
    if !args.no_throughput {
        throughput(&env, &ch, &clips["60s"]).await?;
    }
    let _ = env.store.db.drop().await;
    test_kit::delete_work_queues(&stack.amqp_url, &queues).await;
    Ok(())
}

/// The services' default topology (so the bench's declarations agree).
fn topology() -> amqp_kit::TopologyArgs {
    amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: [2, 10, 30, 60, 300].map(Duration::from_secs).to_vec(),
    }
}

/// One conversion at a time, the limits measured beside it.
struct Row {
    clip: String,
    mib: f64,
    ours: f64,
    ffmpeg: f64,
    read: f64,
    write: f64,
    phases: HashMap<String, f64>,
}

impl Env<'_> {
    /// One clip: stored (the raw write timed), plain ffmpeg and the raw read
    /// beside it, then the service from publish to `Mp3Ready`.
    async fn one(&self, ch: &lapin::Channel, path: &Path, clip: &str) -> (Row, ObjectId) {
        let (id, write) = self.store(path).await;
        let ffmpeg = plain_ffmpeg(path, &self.out_dir.path().join("plain.mp3"));
        let read = self.raw_read(id).await;
        let t = Instant::now();
        self.publish(id).await;
        mp3_ready(ch, &self.mp3_queue, 1).await;
        let ours = t.elapsed();
        let row = Row {
            mib: mib(path),
            clip: clip.to_owned(),
            ours: secs(ours),
            ffmpeg: secs(ffmpeg),
            read: secs(read),
            write: secs(write),
            phases: HashMap::new(),
        };
        (row, id)
    }
}

async fn per_clip(
    env: &Env<'_>,
    ch: &lapin::Channel,
    conv: &Proc,
    clips: &HashMap<&str, PathBuf>,
    args: &Args,
) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    let mut per_clip_rss: Vec<(String, f64, f64)> = Vec::new();
    for _ in 0..args.rounds {
        for name in &args.clips {
            conv.reset_peak();
            let cpu = conv.cpu_seconds();
            let (mut row, job) = env.one(ch, &clips[name.as_str()], name).await;
            per_clip_rss.push((name.clone(), conv.peak_rss_mib(), conv.cpu_seconds() - cpu));
            row.phases = phases(env.receiver, job).await;
            rows.push(row);
        }
    }

    println!("## One conversion: the service vs its limits\n");
    println!(
        "ours = publish VideoUploaded → Mp3Ready received; ffmpeg = the same ffmpeg on a local file; read = the raw driver reading the stored video through one cursor; limit = max(ffmpeg, read).\n"
    );
    println!(
        "| clip | MiB | ours (s) | plain ffmpeg (s) | raw driver read (s) | ours / ffmpeg | ours / limit | raw driver write (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let limit = r.ffmpeg.max(r.read);
        println!(
            "| {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.clip,
            r.mib,
            r.ours,
            r.ffmpeg,
            r.read,
            r.ours / r.ffmpeg,
            r.ours / limit,
            r.write
        );
    }
    println!(
        "\nPer phase, from the converter's spans (ms): process = the delivery's whole handling; convert = claim to outcome; ffmpeg runs while the video is read and the MP3 stored; overhead = ours − ffmpeg span.\n"
    );
    println!(
        "| clip | process | convert | setup (claim → ffmpeg start) | plan input | gridfs.read videos | ffmpeg to_mp3 | after ffmpeg (its end → outcome) | gridfs.write mp3s | overhead |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let p = |k: &str| r.phases.get(k).copied().unwrap_or(f64::NAN);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.clip,
            p("process"),
            p("convert"),
            p("setup"),
            p("plan input"),
            p("gridfs.read videos"),
            p("ffmpeg to_mp3"),
            p("after ffmpeg"),
            p("gridfs.write mp3s"),
            r.ours * 1000.0 - p("ffmpeg to_mp3"),
        );
    }
    println!(
        "\nThe converter process itself, per clip (without ffmpeg's own): peak RSS (VmHWM) and CPU time (user + system) over the conversion:"
    );
    for (c, rss, cpu) in &per_clip_rss {
        println!("- {c}: {rss:.1} MiB, {cpu:.2} CPU-s");
    }
    Ok(())
}

/// The 60 s clip with nothing, then with `gib` GiB already stored.
async fn stored(
    env: &Env<'_>,
    ch: &lapin::Channel,
    clips: &HashMap<&str, PathBuf>,
    names: &[String],
    gib: f64,
) -> anyhow::Result<()> {
    let mut before = Vec::new();
    for name in names {
        before.push(env.one(ch, &clips[name.as_str()], name).await.0);
    }
    let t = Instant::now();
    let file = 64usize << 20;
    let n = ((gib * f64::from(1u32 << 30)) as usize).div_ceil(file);
    let junk: Vec<u8> = (0..file)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for i in 0..n {
        let id = ObjectId::new();
        let mut up = env
            .store
            .videos
            .open_upload_stream(format!("filler-{i}"))
            .id(id.into())
            .await?;
        for c in junk.chunks(1 << 20) {
            up.write_all(c).await?;
        }
        up.close().await?;
    }
    let filled = t.elapsed();
    let mut after = Vec::new();
    for name in names {
        after.push(env.one(ch, &clips[name.as_str()], name).await.0);
    }
    println!(
        "\n## Each clip with nothing and with {gib:.1} GiB of other videos stored (filled in {:.0} s)\n",
        secs(filled)
    );
    println!(
        "| clip | ours, empty (s) | ours, {gib:.1} GiB (s) | stored / empty | plain ffmpeg (s) | raw read, empty (s) | raw read, {gib:.1} GiB (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (b, a) in before.iter().zip(&after) {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            b.clip,
            b.ours,
            a.ours,
            a.ours / b.ours,
            a.ffmpeg,
            b.read,
            a.read
        );
    }
    // The filler goes, so what follows is measured on an empty bucket.
    for coll in [&env.store.video_files.chunks, &env.store.video_files.files] {
        coll.delete_many(doc! {}).await?;
    }
    Ok(())
}

async fn sizes(env: &Env<'_>, ch: &lapin::Channel, conv: &Proc, clips: &HashMap<&str, PathBuf>) {
    println!("\n## Time per MB from 20 MB to 1 GB (720p10, 2.6 Mb/s)\n");
    println!(
        "| clip | MiB | ours (s) | ours (ms/MiB) | raw driver read (ms/MiB) | plain ffmpeg (s) | ours / limit |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut peak: f64 = 0.0;
    for name in ["size-60s", "size-300s", "size-600s", "size-3000s"] {
        conv.reset_peak();
        let r = env.one(ch, &clips[name], name).await.0;
        println!(
            "| {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} |",
            name,
            r.mib,
            r.ours,
            r.ours * 1000.0 / r.mib,
            r.read * 1000.0 / r.mib,
            r.ffmpeg,
            r.ours / r.ffmpeg.max(r.read)
        );
        peak = peak.max(conv.peak_rss_mib());
    }
    println!("\nConverter peak RSS on the size series: {peak:.1} MiB");
}

/// 100 jobs through one converter: its memory under sustained use.
async fn hundred(env: &Env<'_>, ch: &lapin::Channel, conv: &Proc, clips: &HashMap<&str, PathBuf>) {
    conv.reset_peak();
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(env.store(&clips["10s"]).await.0);
    }
    let t = Instant::now();
    for id in &ids {
        env.publish(*id).await;
    }
    mp3_ready(ch, &env.mp3_queue, ids.len()).await;
    println!(
        "\n100 jobs (10 s clips) through one converter (1 at a time): {:.1} s, peak RSS during them {:.1} MiB",
        secs(t.elapsed()),
        conv.peak_rss_mib()
    );
}

/// Jobs per minute for a batch of 60 s clips through `instances` converters
/// of `concurrency` each.
async fn batch(
    env: &Env<'_>,
    ch: &lapin::Channel,
    clip: &Path,
    jobs: usize,
    instances: usize,
    concurrency: u16,
) -> anyhow::Result<(Duration, Duration)> {
    let procs: Vec<Proc> = (0..instances)
        .map(|_| env.converter(concurrency))
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ids = Vec::new();
    for _ in 0..jobs {
        ids.push(env.store(clip).await.0);
    }
    let t = Instant::now();
    for id in &ids {
        env.publish(*id).await;
    }
    mp3_ready(ch, &env.mp3_queue, jobs).await;
    let took = t.elapsed();
    // The sources go after the acks: the next row starts on an empty bucket
    // only once they are gone (a killed converter would leave them to the
    // janitor, which does not run here).
    let swept = env.sources_gone(Duration::from_secs(300)).await?;
    drop(procs);
    Ok((took, swept))
}

async fn throughput(env: &Env<'_>, ch: &lapin::Channel, clip: &Path) -> anyhow::Result<()> {
    println!("\n## Throughput (60 s clips)\n");
    println!(
        "| converters | jobs at a time each | jobs | wall time (s) | jobs/min | every source deleted (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let jobs = 12;
    for (instances, concurrency) in [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2)] {
        let (took, swept) = batch(env, ch, clip, jobs, instances, concurrency).await?;
        println!(
            "| {instances} | {concurrency} | {jobs} | {:.2} | {:.1} | {:.2} |",
            secs(took),
            jobs as f64 / secs(took) * 60.0,
            secs(took + swept)
        );
    }

    // 10 parallel jobs, 2 converters (default concurrency), until every
    // user got the email.
    let mesh = env.mesh().await?;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(env.store(clip).await.0);
    }
    let t = Instant::now();
    futures::future::join_all(ids.iter().map(|id| env.publish(*id))).await;
    env.emails(&env.owner_email, 10).await?;
    println!(
        "\n10 parallel 60 s jobs, 2 converters × 2 jobs at a time, notify-svc → Mailpit: all 10 emailed in {:.2} s",
        secs(t.elapsed())
    );
    env.stop(mesh).await
}

impl Env<'_> {
    /// notify-svc on the mp3 queue, emailing through Mailpit, with its own
    /// receipts queue (nobody consumes it here: delete it after).
    async fn notify(&self) -> anyhow::Result<(Proc, String)> {
        let notify_db = self.stack.fresh_database("benchnotify").await;
        let notified_queue = test_kit::unique_name("notified-bench");
        let notify = Proc::start(
            "notify-svc",
            &[
                ("ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
                ("AMQP_URL", self.stack.amqp_url.clone()),
                ("MP3_QUEUE", self.mp3_queue.clone()),
                ("NOTIFIED_QUEUE", notified_queue.clone()),
                ("DATABASE_URL", notify_db),
                ("SMTP_HOST", self.stack.smtp_host.clone()),
                ("SMTP_PORT", self.stack.smtp_port.to_string()),
                ("SMTP_TLS", "none".into()),
            ],
        )?;
        Ok((notify, notified_queue))
    }

    async fn publish_to(&self, id: ObjectId, owner_email: &str) {
        let ev = VideoUploaded {
            owner_id: "bench".into(),
            owner_email: owner_email.into(),
            ..media_store::proto::video_uploaded_of(id)
        };
        self.publisher
            .publish_event(&self.video_queue, &ev.event_id, &ev)
            .await
            .unwrap();
    }
}

/// Two converters (default concurrency) and notify-svc, as deployed.
struct Mesh {
    converters: Vec<Proc>,
    notify: Proc,
    notified_queue: String,
}

impl Env<'_> {
    async fn mesh(&self) -> anyhow::Result<Mesh> {
        let (notify, notified_queue) = self.notify().await?;
        let converters = (0..2)
            .map(|_| self.converter(2))
            .collect::<Result<_, _>>()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(Mesh {
            converters,
            notify,
            notified_queue,
        })
    }

    /// Waits until `owner` has `n` emails in Mailpit.
    async fn emails(&self, owner: &str, n: usize) -> anyhow::Result<()> {
        let mailpit = test_kit::mailpit::Mailpit::new(&self.stack.mailpit_api_url);
        let t = Instant::now();
        loop {
            let got = mailpit
                .messages_to(owner)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if got >= n {
                return Ok(());
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(600),
                "only {got} of {n} emails"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the mesh once its sweepers have deleted every source.
    async fn stop(&self, mesh: Mesh) -> anyhow::Result<()> {
        self.sources_gone(Duration::from_secs(300)).await?;
        drop((mesh.converters, mesh.notify));
        test_kit::delete_work_queues(
            &self.stack.amqp_url,
            &[topology().work_queue(&mesh.notified_queue)],
        )
        .await;
        Ok(())
    }
}

/// Runs `op` again, up to ten times two seconds apart, while it fails:
/// FerretDB's SQLite backend answers SQLITE_BUSY to a write that meets
/// another (a converter deleting its source), where a client would retry.
async fn retry_busy<T, E, F, Fut>(what: &str, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!("{what}, try {tries} failed: {}", e.into());
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into().context(what.to_owned())),
        }
    }
}
