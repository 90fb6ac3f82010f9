//! The clips the benchmarks convert, made once with ffmpeg as users' are
//! (test-kit's lavfi generator): 720p H.264 + AAC MP4s with the index at the
//! end, and plain ffmpeg on a
//! local file with the converter's settings (the limit a conversion is held
//! against).

#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};
use test_kit::clips::Lavfi;

/// A clip as users upload them: name, seconds, frames per second, video
/// bitrate, audio source (ffmpeg lavfi), and whether the video is noisy.
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    pub secs: u32,
    pub fps: u32,
    pub video_kbps: u32,
    pub audio: &'static str,
    pub noisy: bool,
}

pub const SPECS: &[Spec] = &[
    Spec {
        name: "60s",
        secs: 60,
        fps: 30,
        video_kbps: 2600,
        audio: "sine=frequency=440",
        noisy: false,
    },
    Spec {
        name: "120s-noisy",
        secs: 120,
        fps: 30,
        video_kbps: 2600,
        audio: "anoisesrc=color=pink:amplitude=0.3",
        noisy: true,
    },
    Spec {
        name: "600s",
        secs: 600,
        fps: 30,
        video_kbps: 2600,
        audio: "sine=frequency=330",
        noisy: false,
    },
    // A talk: a slide-like picture that hardly changes, speech-band sound.
    Spec {
        name: "talk-1h",
        secs: 3600,
        fps: 5,
        video_kbps: 400,
        audio: "anoisesrc=color=brown:amplitude=0.2",
        noisy: false,
    },
    // The size series: the same bitrate, longer and longer.
    Spec {
        name: "size-60s",
        secs: 60,
        fps: 10,
        video_kbps: 2600,
        audio: "sine=frequency=200",
        noisy: false,
    },
    Spec {
        name: "size-300s",
        secs: 300,
        fps: 10,
        video_kbps: 2600,
        audio: "sine=frequency=200",
        noisy: false,
    },
    Spec {
        name: "size-600s",
        secs: 600,
        fps: 10,
        video_kbps: 2600,
        audio: "sine=frequency=200",
        noisy: false,
    },
    Spec {
        name: "size-3000s",
        secs: 3000,
        fps: 10,
        video_kbps: 2600,
        audio: "sine=frequency=200",
        noisy: false,
    },
    // Many small jobs.
    Spec {
        name: "10s",
        secs: 10,
        fps: 10,
        video_kbps: 500,
        audio: "sine=frequency=440",
        noisy: false,
    },
];

pub fn spec(name: &str) -> &'static Spec {
    SPECS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("unknown clip {name}"))
}

/// Makes (once) a 720p H.264 + AAC MP4 with the index at the end.
pub fn make_clip(dir: &Path, s: &Spec) -> PathBuf {
    let out = dir.join(format!("{}.mp4", s.name));
    if out.exists() {
        return out;
    }
    eprintln!("  generating {} ({} s, 720p{})…", s.name, s.secs, s.fps);
    let kbps = format!("{}k", s.video_kbps);
    let clip = Lavfi {
        video_filter: s.noisy.then(|| "noise=alls=30:allf=t".to_owned()),
        video_args: vec![
            "-b:v".into(),
            kbps.clone(),
            "-maxrate".into(),
            kbps,
            "-bufsize".into(),
            format!("{}k", s.video_kbps * 2),
        ],
        audio_args: ["-b:a", "128k", "-ac", "2"].map(str::to_owned).to_vec(),
        ..Lavfi::new(
            s.secs,
            format!("testsrc2=size=1280x720:rate={}", s.fps),
            format!("{}:sample_rate=44100", s.audio),
        )
    };
    clip.make_once(&out)
}

/// What the converter does, as plain ffmpeg on a local file.
pub fn plain_ffmpeg(input: &Path, out: &Path) -> Duration {
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
        .arg(out)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    t.elapsed()
}
