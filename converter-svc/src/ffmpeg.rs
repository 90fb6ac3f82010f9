//! One ffmpeg process per job, treated as a parser of hostile input whose
//! exit status alone is not trusted. Everything the converter needs to know
//! comes from ffmpeg's own output (no ffprobe before or after): the input's
//! streams and declared duration, progress as it encodes, and how much audio
//! it wrote, which is compared with the input's length (a truncated file
//! still exits 0 with a partial MP3).
//!
//! - Input comes from a pipe (fed from GridFS as it is read) or, for
//!   containers that cannot be read from a pipe, a temporary file.
//! - `-protocol_whitelist` allows only that pipe or file, and
//!   `-format_whitelist` only real media containers, so playlists, concat
//!   lists and the like cannot make ffmpeg open anything else.
//! - `-xerror` turns decoding errors into a failure exit.

use ffmpeg_sidecar::{command::FfmpegCommand, event::FfmpegEvent, event::LogLevel};
use media_store::options::{Channels, Encoding, OutputOptions};
use std::{
    path::Path,
    process::ExitStatus,
    sync::{Arc, Mutex},
};
use tokio::sync::mpsc;

/// The demuxers ffmpeg may use: video containers (and the audio ones that
/// audio-only uploads come in). Everything else (hls, dash, concat, image
/// sequences, lavfi, …) is refused before it can open another resource.
pub const FORMATS: &str =
    "mov,mp4,matroska,webm,avi,flv,mpegts,mpeg,ogg,asf,mxf,dv,nut,wav,mp3,aac,flac,m4v";

/// Where ffmpeg reads the video from.
#[derive(Debug, Clone)]
pub enum Input<'a> {
    /// Standard input, written by the caller (see [`Ffmpeg::take_stdin`]).
    Pipe,
    File(&'a Path),
}

/// What ffmpeg tells us as it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The input's streams are known (once, before encoding starts): how
    /// many audio tracks (the MP3 holds the first) and whether there is a
    /// video.
    Streams { audio: usize, video: bool },
    /// The input's declared duration, in seconds.
    Duration(f64),
    /// Seconds of audio written so far.
    Progress(f64),
    /// An error line.
    Error(String),
}

/// A running ffmpeg.
pub struct Ffmpeg {
    child: Arc<Mutex<ffmpeg_sidecar::child::FfmpegChild>>,
    events: mpsc::Receiver<Event>,
    stdin: Option<tokio::process::ChildStdin>,
    exit: Option<tokio::task::JoinHandle<std::io::Result<ExitStatus>>>,
}

impl std::fmt::Debug for Ffmpeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ffmpeg").finish_non_exhaustive()
    }
}

/// How many events may wait for the async side before the less important
/// ones (log lines) are dropped; ffmpeg itself is never held up by us.
const EVENT_BUFFER: usize = 256;

/// The arguments of a conversion.
pub fn args(input: &Input<'_>, output: &Path, o: &OutputOptions, title: &str) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-xerror", "-stats_period", "0.5"]
        .map(String::from)
        .to_vec();
    let (protocol, source) = match input {
        Input::Pipe => ("pipe", "pipe:0".to_owned()),
        Input::File(p) => ("file", p.display().to_string()),
    };
    a.extend(["-protocol_whitelist".into(), protocol.into()]);
    a.extend(["-format_whitelist".into(), FORMATS.into()]);
    a.extend(["-i".into(), source]);
    // Output-side trimming: decoded and dropped, exact to the sample.
    if let Some(start) = o.trim_start {
        a.extend(["-ss".into(), format!("{start:.3}")]);
    }
    if let Some(end) = o.trim_end {
        let len = end - o.trim_start.unwrap_or(0.0);
        a.extend(["-t".into(), format!("{len:.3}")]);
    }
    a.extend(["-map", "0:a:0", "-vn", "-sn", "-dn", "-c:a", "libmp3lame"].map(String::from));
    match o.encoding {
        Encoding::Vbr { quality } => a.extend(["-q:a".into(), quality.to_string()]),
        Encoding::Cbr { bitrate_kbps } => a.extend(["-b:a".into(), format!("{bitrate_kbps}k")]),
    }
    match o.channels {
        Channels::Source => {}
        Channels::Mono => a.extend(["-ac".into(), "1".into()]),
        Channels::Stereo => a.extend(["-ac".into(), "2".into()]),
    }
    if let Some(hz) = o.sample_rate.hz() {
        a.extend(["-ar".into(), hz.to_string()]);
    }
    // ID3v2 tags: the title, and nothing of the source's metadata.
    a.extend(["-map_metadata", "-1", "-id3v2_version", "3"].map(String::from));
    a.extend(["-metadata".into(), format!("title={title}")]);
    a.extend([
        "-f".into(),
        "mp3".into(),
        "-y".into(),
        output.display().to_string(),
    ]);
    a
}

impl Ffmpeg {
    /// Starts ffmpeg with `args` (see [`args`]).
    pub fn spawn(args: &[String]) -> Result<Self, String> {
        let mut cmd = FfmpegCommand::new();
        cmd.args(args);
        let mut child = cmd.spawn().map_err(|e| format!("cannot run ffmpeg: {e}"))?;
        let stdin = child
            .take_stdin()
            .map(tokio::process::ChildStdin::from_std)
            .transpose()
            .map_err(|e| format!("ffmpeg's stdin: {e}"))?;
        let iter = child
            .iter()
            .map_err(|e| format!("cannot read ffmpeg's output: {e}"))?;
        let child = Arc::new(Mutex::new(child));
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        // ffmpeg-sidecar's iterator blocks: drain it on the blocking pool,
        // then reap the process there too.
        let exit = {
            let child = child.clone();
            tokio::task::spawn_blocking(move || {
                forward(iter, &tx);
                lock(&child).wait()
            })
        };
        Ok(Self {
            child,
            events: rx,
            stdin,
            exit: Some(exit),
        })
    }

    /// ffmpeg's standard input, for [`Input::Pipe`]; dropping it ends the
    /// input.
    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.stdin.take()
    }

    /// The next event; `None` once ffmpeg has closed its output.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Kills ffmpeg (SIGKILL); its events end soon after.
    pub fn kill(&self) {
        let _ = lock(&self.child).kill();
    }

    /// Waits for ffmpeg to exit (call after the events ended).
    pub async fn wait(&mut self) -> Result<ExitStatus, String> {
        match self.exit.take() {
            Some(h) => h
                .await
                .map_err(|e| format!("waiting for ffmpeg: {e}"))?
                .map_err(|e| format!("waiting for ffmpeg: {e}")),
            None => Err("ffmpeg was already waited for".into()),
        }
    }
}

impl Drop for Ffmpeg {
    /// Never leave an ffmpeg behind, whatever path the job took.
    fn drop(&mut self) {
        if self.exit.is_some() {
            self.kill();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Turns ffmpeg-sidecar's events into ours (on the blocking pool).
fn forward(iter: ffmpeg_sidecar::iter::FfmpegIterator, tx: &mpsc::Sender<Event>) {
    let mut streams: Option<(usize, bool)> = None;
    let mut announced = false;
    for event in iter {
        let ours = match event {
            FfmpegEvent::ParsedInputStream(s) if s.parent_index == 0 => {
                let (a, v) = streams.get_or_insert((0, false));
                *a += usize::from(s.is_audio());
                // Cover art in an audio file is a "video" stream.
                *v |= s.is_video() && !s.raw_log_message.contains("(attached pic)");
                None
            }
            FfmpegEvent::ParsedDuration(d) if d.input_index == 0 => {
                Some(Event::Duration(d.duration))
            }
            // The input's description is over once ffmpeg maps streams (or
            // gives up on the input).
            FfmpegEvent::ParsedStreamMapping(_) | FfmpegEvent::ParsedOutput(_) => None,
            FfmpegEvent::Progress(p) => parse_time(&p.time).map(Event::Progress),
            FfmpegEvent::Log(LogLevel::Error | LogLevel::Fatal, line) => Some(Event::Error(line)),
            FfmpegEvent::Error(line) => Some(Event::Error(line)),
            _ => None,
        };
        if !announced
            && let Some((audio, video)) = streams
            && matches!(ours, Some(Event::Progress(_)) | Some(Event::Error(_)))
        {
            announced = true;
            let _ = tx.blocking_send(Event::Streams { audio, video });
        }
        match ours {
            // Progress and log lines may be dropped if we fall behind; the
            // facts may not.
            Some(e @ (Event::Progress(_) | Event::Error(_))) => {
                let _ = tx.try_send(e);
            }
            Some(e) => {
                let _ = tx.blocking_send(e);
            }
            None => {}
        }
    }
    if !announced && let Some((audio, video)) = streams {
        let _ = tx.blocking_send(Event::Streams { audio, video });
    }
}

/// `HH:MM:SS.cc` (ffmpeg's progress time) in seconds.
pub fn parse_time(s: &str) -> Option<f64> {
    let mut parts = s.trim().split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    if h.starts_with('-') {
        return None; // before the first sample: "-577014:32:22.77"
    }
    let v = h.parse::<f64>().ok()? * 3600.0
        + m.parse::<f64>().ok()? * 60.0
        + sec.parse::<f64>().ok()?;
    v.is_finite().then_some(v)
}

/// The last meaningful error line, trimmed for a user.
pub fn short_reason(lines: &[String]) -> String {
    let line = lines
        .iter()
        .map(|l| l.trim())
        .rfind(|l| !l.is_empty() && !l.starts_with("Conversion failed"))
        .unwrap_or("unknown error");
    // "[mov,mp4 @ 0x…] pipe:0: Invalid data…" → "Invalid data…": paths and
    // addresses mean nothing to the user.
    let line = line.rsplit_once("] ").map_or(line, |(_, msg)| msg);
    let line = line.rsplit_once(": ").map_or(line, |(_, msg)| msg);
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use media_store::options::{RawOptions, SampleRate};

    #[test]
    fn progress_times_parse() {
        assert_eq!(parse_time("00:01:02.50"), Some(62.5));
        assert_eq!(parse_time("01:00:00.00"), Some(3600.0));
        assert_eq!(parse_time("-577014:32:22.77"), None);
        assert_eq!(parse_time("N/A"), None);
    }

    #[test]
    fn reasons_are_short_and_pathless() {
        let lines = [
            "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55c2] stream 1, offset 0x11b2: partial file".to_owned(),
            "pipe:0: Invalid data found when processing input".to_owned(),
            "Conversion failed!".to_owned(),
        ];
        assert_eq!(
            short_reason(&lines),
            "Invalid data found when processing input"
        );
        assert_eq!(short_reason(&[]), "unknown error");
    }

    #[test]
    fn options_become_arguments() {
        let o = RawOptions {
            bitrate_kbps: Some(128),
            channels: Channels::Mono,
            sample_rate: SampleRate::Hz48000,
            trim_start: Some(1.5),
            trim_end: Some(4.0),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let a = args(&Input::Pipe, Path::new("/w/out.mp3"), &o, "My clip").join(" ");
        for want in [
            "-protocol_whitelist pipe",
            "-i pipe:0",
            "-ss 1.500 -t 2.500",
            "-b:a 128k",
            "-ac 1",
            "-ar 48000",
            "-metadata title=My clip",
            "-f mp3 -y /w/out.mp3",
        ] {
            assert!(a.contains(want), "{want:?} missing in {a}");
        }
        let a = args(
            &Input::File(Path::new("/w/in")),
            Path::new("/w/o.mp3"),
            &OutputOptions::default(),
            "t",
        )
        .join(" ");
        assert!(
            a.contains("-protocol_whitelist file") && a.contains("-q:a 2"),
            "{a}"
        );
        assert!(
            !a.contains("-ss") && !a.contains("-ac") && !a.contains("-ar"),
            "{a}"
        );
    }
}
