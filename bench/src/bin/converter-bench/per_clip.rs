//! One conversion at a time: each clip through the service vs its limits.

use crate::{Args, env::Env, env::Row, spans::phases};
use amqp_kit::lapin;
use bench::Proc;
use std::{collections::HashMap, path::PathBuf};

pub(crate) async fn per_clip(
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
