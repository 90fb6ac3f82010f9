//! Jobs per minute for one and two converters, 10 parallel jobs until all
//! are emailed, and the converter's memory over 100 jobs.

use crate::{env::Env, ready::mp3_ready, secs};
use amqp_kit::lapin;
use bench::Proc;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// 100 jobs through one converter: its memory under sustained use.
pub(crate) async fn hundred(
    env: &Env<'_>,
    ch: &lapin::Channel,
    conv: &Proc,
    clips: &HashMap<&str, PathBuf>,
) {
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
pub(crate) async fn batch(
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

pub(crate) async fn throughput(
    env: &Env<'_>,
    ch: &lapin::Channel,
    clip: &Path,
) -> anyhow::Result<()> {
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
