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

mod check;
mod faults;
mod mesh;
mod run;

use clap::Parser;
use run::one_run;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};
use test_kit::clips::Lavfi;

#[derive(Debug, Parser)]
pub(crate) struct Args {
    /// Runs, each on fresh databases and queues.
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Uploads per run.
    #[arg(long, default_value_t = 44)]
    pub(crate) uploads: usize,
    /// How long faults are injected.
    #[arg(long, default_value = "100s", value_parser = svc_kit::config::parse_duration)]
    pub(crate) window: Duration,
    /// How long to wait, after the faults, for every job to end.
    #[arg(long, default_value = "300s", value_parser = svc_kit::config::parse_duration)]
    pub(crate) settle: Duration,
}

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A small H.264 + AAC MP4 of `secs` seconds, made once.
fn clip(dir: &Path, name: &str, secs: u32) -> Vec<u8> {
    let clip = Lavfi::new(secs, "testsrc=size=320x240:rate=15", "sine=frequency=440");
    std::fs::read(clip.make_once(&dir.join(name))).unwrap()
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
            o.counts.done,
            o.counts.failed,
            o.counts.unfinished,
            o.counts.mp3_wrong,
            o.counts.emails_wrong,
            o.counts.duplicates,
            o.reannounced,
            o.orphan_chunks,
            o.sources_left,
            o.temp_dirs,
            o.faults.len(),
            o.took.as_secs_f64()
        );
    }
    let bad = rows.iter().any(|o| {
        o.counts.unfinished
            + o.counts.mp3_wrong
            + o.counts.emails_wrong
            + o.counts.duplicates
            + o.temp_dirs
            > 0
            || o.orphan_chunks > 0
            || o.sources_left > 0
    });
    anyhow::ensure!(!bad, "an invariant did not hold (see the table)");
    Ok(())
}
