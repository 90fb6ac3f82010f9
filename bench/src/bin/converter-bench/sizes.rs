//! Time per MB from 20 MB to 1 GB.

use crate::env::Env;
use amqp_kit::lapin;
use bench::Proc;
use std::{collections::HashMap, path::PathBuf};

pub(crate) async fn sizes(
    env: &Env<'_>,
    ch: &lapin::Channel,
    conv: &Proc,
    clips: &HashMap<&str, PathBuf>,
) {
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
