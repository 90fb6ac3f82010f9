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

mod env;
mod mesh;
mod per_clip;
mod ready;
mod sizes;
mod spans;
mod stored;
mod throughput;

use amqp_kit::Publisher;
use bench::clips::{make_clip, spec};
use clap::Parser;
use env::Env;
use media_store::Store;
use per_clip::per_clip;
use sizes::sizes;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};
use stored::stored;
use svc_kit::config::Secret;
use test_kit::otlp::Receiver;
use throughput::{hundred, throughput};

#[derive(Debug, Parser)]
pub(crate) struct Args {
    /// The GridFS server (default: the stack's).
    #[arg(long, env = "MONGODB_URI")]
    pub(crate) mongodb_uri: Option<String>,
    /// Clips of the per-clip table.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "60s,120s-noisy,600s,talk-1h"
    )]
    pub(crate) clips: Vec<String>,
    /// Rounds of the per-clip table (services and limits alternate).
    #[arg(long, default_value_t = 1)]
    pub(crate) rounds: usize,
    /// GiB already stored for the stored-data comparison (0 to skip).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) stored: f64,
    /// Also measure time per MB from 20 MB to 1 GB.
    #[arg(long)]
    pub(crate) sizes: bool,
    /// Skip the throughput runs.
    #[arg(long)]
    pub(crate) no_throughput: bool,
    /// Skip the converter's RSS over 100 jobs (about 7 minutes).
    #[arg(long)]
    pub(crate) no_hundred: bool,
    /// Where generated clips are kept.
    #[arg(long, default_value = ".stack/bench-clips")]
    pub(crate) clip_dir: PathBuf,
}

pub(crate) fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).unwrap().len() as f64 / f64::from(1u32 << 20)
}

pub(crate) fn secs(d: Duration) -> f64 {
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
pub(crate) fn topology() -> amqp_kit::TopologyArgs {
    amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: [2, 10, 30, 60, 300].map(Duration::from_secs).to_vec(),
    }
}
