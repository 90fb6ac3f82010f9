//! Clips made with ffmpeg, most from its lavfi test sources (a test picture
//! and a tone or noise), and ffprobe's view of a file: one generator for the
//! converter's tests, e2e and the benches.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

/// Runs `ffmpeg -y -hide_banner -loglevel error <args> <out>`; panics if it
/// fails.
pub fn ffmpeg<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>, out: &Path) {
    let ok = Command::new("ffmpeg")
        .args(["-y", "-hide_banner", "-loglevel", "error"])
        .args(args)
        .arg(out)
        .status()
        .expect("ffmpeg on the PATH")
        .success();
    assert!(ok, "ffmpeg could not make {}", out.display());
}

/// Makes `dir/name` with ffmpeg; `args` (split on white space) go between
/// ffmpeg's quiet options and the file name.
pub fn generate(dir: &Path, name: &str, args: &str) -> PathBuf {
    let out = dir.join(name);
    ffmpeg(args.split_whitespace(), &out);
    out
}

/// An H.264 + AAC clip from two lavfi sources, encoded fast
/// (`-preset ultrafast`, `yuv420p`).
#[derive(Debug, Clone)]
pub struct Lavfi {
    /// Seconds of picture and sound.
    pub secs: u32,
    /// The picture: a lavfi video source and its options, without the
    /// duration, e.g. `testsrc=size=320x240:rate=15`.
    pub video: String,
    /// Filters after the picture's source, e.g. `noise=alls=30:allf=t`.
    pub video_filter: Option<String>,
    /// The sound: a lavfi audio source and its options, without the
    /// duration, e.g. `sine=frequency=440`.
    pub audio: String,
    /// Video output options after the H.264 ones (bitrates).
    pub video_args: Vec<String>,
    /// Audio output options after `-c:a aac`.
    pub audio_args: Vec<String>,
}

impl Lavfi {
    pub fn new(secs: u32, video: impl Into<String>, audio: impl Into<String>) -> Self {
        Self {
            secs,
            video: video.into(),
            video_filter: None,
            audio: audio.into(),
            video_args: Vec::new(),
            audio_args: Vec::new(),
        }
    }

    /// ffmpeg's arguments, without the output file.
    pub fn args(&self) -> Vec<String> {
        let secs = self.secs;
        let mut video = format!("{}:duration={secs}", self.video);
        if let Some(f) = &self.video_filter {
            video = format!("{video},{f}");
        }
        let audio = format!("{}:duration={secs}", self.audio);
        let mut args: Vec<String> = ["-f", "lavfi", "-i", &video, "-f", "lavfi", "-i", &audio]
            .into_iter()
            .chain([
                "-shortest",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ])
            .map(str::to_owned)
            .collect();
        args.extend(self.video_args.iter().cloned());
        args.extend(["-c:a".to_owned(), "aac".to_owned()]);
        args.extend(self.audio_args.iter().cloned());
        args
    }

    /// Makes `out` (its container from its extension).
    pub fn make(&self, out: &Path) {
        ffmpeg(self.args(), out);
    }

    /// Makes `out` unless it is there already, through a temporary file
    /// beside it so an interrupted run leaves no half clip behind.
    pub fn make_once(&self, out: &Path) -> PathBuf {
        if !out.exists() {
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir).unwrap();
            }
            let ext = out.extension().and_then(OsStr::to_str).unwrap_or("mp4");
            let tmp = out.with_extension(format!("tmp.{ext}"));
            self.make(&tmp);
            std::fs::rename(&tmp, out).unwrap();
        }
        out.to_owned()
    }
}

/// ffprobe's format name and duration (seconds, -1 when it gives none) of a
/// media file.
pub fn probe(path: &Path) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=format_name,duration",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_owned()
    };
    (
        field("format_name"),
        field("duration").parse().unwrap_or(-1.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lavfi_args_put_the_duration_on_each_source_and_the_options_in_place() {
        let clip = Lavfi {
            video_filter: Some("noise=alls=30:allf=t".into()),
            video_args: vec!["-b:v".into(), "500k".into()],
            audio_args: vec!["-ac".into(), "2".into()],
            ..Lavfi::new(8, "testsrc=size=320x240:rate=15", "sine=frequency=440")
        };
        assert_eq!(
            clip.args().join(" "),
            "-f lavfi -i testsrc=size=320x240:rate=15:duration=8,noise=alls=30:allf=t \
             -f lavfi -i sine=frequency=440:duration=8 -shortest -c:v libx264 -preset ultrafast \
             -pix_fmt yuv420p -b:v 500k -c:a aac -ac 2"
        );
    }
}
