//! ffprobe and ffmpeg, treated as parsers of hostile input whose exit status
//! alone is not trusted.
//!
//! - Input is a seekable temporary file: piped through stdin, an MP4 whose
//!   `moov` atom is at the end "converts" with exit 0 into a near-empty MP3.
//! - `-xerror` turns decoding errors into a failure exit; the output's
//!   duration is compared with the input's, because a truncated file still
//!   exits 0 with partial output.
//! - `-protocol_whitelist file` keeps playlists and concat inputs off the
//!   network.

use ffmpeg_sidecar::{command::FfmpegCommand, event::FfmpegEvent, event::LogLevel};
use serde::Deserialize;
use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// What ffprobe says about a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub has_video: bool,
    pub has_audio: bool,
    /// Of the first audio stream when known, else of the container.
    pub duration: Option<f64>,
    pub format: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    /// The input cannot be converted; the reason is fit to show a user.
    #[error("{0}")]
    Invalid(String),
    /// ffmpeg died of a signal it did not send itself (OOM killer, node
    /// drain): worth another try.
    #[error("ffmpeg was killed: {0}")]
    Killed(String),
    #[error("the conversion took longer than {0:?}")]
    TimedOut(Duration),
    #[error("abandoned at shutdown")]
    Abandoned,
    /// Could not run the tools at all (missing binary, disk full).
    #[error("{0}")]
    Io(String),
}

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    format: Option<ProbeFormat>,
}

#[derive(Deserialize)]
struct ProbeStream {
    codec_type: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    disposition: std::collections::HashMap<String, i64>,
}

#[derive(Deserialize)]
struct ProbeFormat {
    format_name: Option<String>,
    duration: Option<String>,
}

/// Runs ffprobe on `path`. A file ffprobe cannot read is `Invalid`.
pub async fn probe(path: &Path) -> Result<Probe, ConvertError> {
    let out = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .args(["-protocol_whitelist", "file"])
        .arg(path)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ConvertError::Io(format!("cannot run ffprobe: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(ConvertError::Invalid(format!(
            "not a media file ffmpeg can read ({})",
            short_reason(&err)
        )));
    }
    parse_probe(&out.stdout)
}

fn parse_probe(json: &[u8]) -> Result<Probe, ConvertError> {
    let p: ProbeJson = serde_json::from_slice(json)
        .map_err(|e| ConvertError::Io(format!("unreadable ffprobe output: {e}")))?;
    let kind = |s: &ProbeStream, k: &str| s.codec_type.as_deref() == Some(k);
    // Cover art in an audio file is a "video" stream with attached_pic.
    let has_video = p
        .streams
        .iter()
        .any(|s| kind(s, "video") && s.disposition.get("attached_pic").copied().unwrap_or(0) == 0);
    let audio = p.streams.iter().find(|s| kind(s, "audio"));
    let num = |v: &Option<String>| v.as_deref().and_then(|d| d.parse::<f64>().ok());
    let format_duration = p.format.as_ref().and_then(|f| num(&f.duration));
    Ok(Probe {
        has_video,
        has_audio: audio.is_some(),
        duration: audio.and_then(|a| num(&a.duration)).or(format_duration),
        format: p
            .format
            .and_then(|f| f.format_name)
            .unwrap_or_else(|| "unknown".into()),
    })
}

/// The last meaningful line of ffmpeg's complaints, trimmed for a user.
pub fn short_reason(stderr: &str) -> String {
    let line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("unknown error");
    // "path: Invalid data found…" → "Invalid data found…": the temp path
    // means nothing to the user.
    let line = line.rsplit_once(": ").map_or(line, |(_, msg)| msg);
    line.chars().take(200).collect()
}

/// Encodes the first audio stream of `input` to MP3 at `output`.
/// `quality` is LAME's VBR scale (0 best … 9 smallest).
pub async fn to_mp3(
    input: &Path,
    output: &Path,
    quality: u8,
    limit: Duration,
    abandon: CancellationToken,
) -> Result<(), ConvertError> {
    let mut cmd = FfmpegCommand::new();
    cmd.hide_banner()
        .args(["-nostdin", "-xerror", "-protocol_whitelist", "file"])
        .input(input)
        .args(["-map", "0:a:0", "-vn", "-sn", "-dn"])
        .codec_audio("libmp3lame")
        .args(["-q:a", &quality.to_string(), "-f", "mp3"])
        .overwrite()
        .output(output);
    let mut child = cmd
        .spawn()
        .map_err(|e| ConvertError::Io(format!("cannot run ffmpeg: {e}")))?;
    let events = child
        .iter()
        .map_err(|e| ConvertError::Io(format!("cannot read ffmpeg's output: {e}")))?;
    let child = Arc::new(Mutex::new(child));

    // ffmpeg-sidecar's iterator blocks: drain it on the blocking pool.
    let errors = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        for event in events {
            match event {
                FfmpegEvent::Log(LogLevel::Error | LogLevel::Fatal, line) => errors.push(line),
                FfmpegEvent::Error(line) => errors.push(line),
                _ => {}
            }
        }
        errors
    });
    let waiter = {
        let child = child.clone();
        async move {
            let errors = errors.await.unwrap_or_default();
            let status = tokio::task::spawn_blocking(move || {
                child
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .wait()
            })
            .await
            .map_err(|e| ConvertError::Io(e.to_string()))?
            .map_err(|e| ConvertError::Io(format!("waiting for ffmpeg: {e}")))?;
            Ok::<_, ConvertError>((status, errors))
        }
    };
    tokio::pin!(waiter);
    let kill = |why| {
        let mut c = child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = c.kill();
        why
    };
    let (status, errors) = tokio::select! {
        r = &mut waiter => r?,
        () = tokio::time::sleep(limit) => {
            let e = kill(ConvertError::TimedOut(limit));
            let _ = waiter.await;
            return Err(e);
        }
        () = abandon.cancelled() => {
            let e = kill(ConvertError::Abandoned);
            let _ = waiter.await;
            return Err(e);
        }
    };
    if status.success() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return Err(ConvertError::Killed(format!("signal {sig}")));
        }
    }
    Err(ConvertError::Invalid(format!(
        "the file could not be decoded ({})",
        short_reason(&errors.join("\n"))
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_tell_video_audio_and_duration() {
        let json = br#"{"streams":[
            {"codec_type":"video","duration":"10.0","disposition":{"attached_pic":0}},
            {"codec_type":"audio","duration":"9.98"}],
            "format":{"format_name":"matroska,webm","duration":"10.01"}}"#;
        let p = parse_probe(json).unwrap();
        assert!(p.has_video && p.has_audio);
        assert_eq!(p.duration, Some(9.98));

        let cover_art = br#"{"streams":[
            {"codec_type":"audio"},
            {"codec_type":"video","disposition":{"attached_pic":1}}],
            "format":{"format_name":"mp3","duration":"3.5"}}"#;
        let p = parse_probe(cover_art).unwrap();
        assert!(!p.has_video && p.has_audio);
        assert_eq!(p.duration, Some(3.5), "falls back to the container");
    }

    #[test]
    fn reasons_are_short_and_pathless() {
        assert_eq!(
            short_reason("foo\n/tmp/x/in.bin: Invalid data found when processing input\n"),
            "Invalid data found when processing input"
        );
        assert_eq!(short_reason(""), "unknown error");
    }
}
