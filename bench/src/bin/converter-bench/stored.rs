//! Each clip with nothing and with GiB of other videos already stored.

use crate::{env::Env, secs};
use amqp_kit::lapin;
use futures::AsyncWriteExt;
use media_store::mongodb::bson::{doc, oid::ObjectId};
use std::{collections::HashMap, path::PathBuf, time::Instant};

/// The 60 s clip with nothing, then with `gib` GiB already stored.
pub(crate) async fn stored(
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
