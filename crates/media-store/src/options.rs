//! How an MP3 is made: the per-upload output options, validated once at the
//! edge (REST form fields, gRPC metadata) and recorded on the job, where the
//! converter reads them.

use serde::{Deserialize, Serialize};

pub const BITRATE_KBPS: std::ops::RangeInclusive<u32> = 64..=320;
pub const QUALITY: std::ops::RangeInclusive<u32> = 0..=9;
/// LAME's VBR quality when nothing is asked for: transparent for most ears.
pub const DEFAULT_QUALITY: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// LAME VBR quality, 0 (best) to 9 (smallest).
    Vbr { quality: u32 },
    /// Constant bitrate in kb/s.
    Cbr { bitrate_kbps: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    #[default]
    Source,
    Mono,
    Stereo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleRate {
    #[default]
    Source,
    #[serde(rename = "44100")]
    Hz44100,
    #[serde(rename = "48000")]
    Hz48000,
}

impl SampleRate {
    pub fn hz(self) -> Option<u32> {
        match self {
            Self::Source => None,
            Self::Hz44100 => Some(44_100),
            Self::Hz48000 => Some(48_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputOptions {
    pub encoding: Encoding,
    #[serde(default)]
    pub channels: Channels,
    #[serde(default)]
    pub sample_rate: SampleRate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trim_start: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trim_end: Option<f64>,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            encoding: Encoding::Vbr {
                quality: DEFAULT_QUALITY,
            },
            channels: Channels::Source,
            sample_rate: SampleRate::Source,
            trim_start: None,
            trim_end: None,
        }
    }
}

/// A rejected option: the field and what is allowed, fit to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct InvalidOption {
    pub field: &'static str,
    pub why: String,
}

fn invalid(field: &'static str, why: impl Into<String>) -> InvalidOption {
    InvalidOption {
        field,
        why: why.into(),
    }
}

/// The options as a client sends them, before validation; `None` means
/// "not given".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawOptions {
    pub bitrate_kbps: Option<u32>,
    pub quality: Option<u32>,
    pub channels: Channels,
    pub sample_rate: SampleRate,
    pub trim_start: Option<f64>,
    pub trim_end: Option<f64>,
}

impl RawOptions {
    /// Checks every range; the first violation wins.
    pub fn validate(self) -> Result<OutputOptions, InvalidOption> {
        let encoding = match (self.bitrate_kbps, self.quality) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "bitrate",
                    "give either a constant bitrate or a VBR quality, not both",
                ));
            }
            (Some(b), None) if !BITRATE_KBPS.contains(&b) => {
                return Err(invalid(
                    "bitrate",
                    format!(
                        "must be between {} and {} kb/s, got {b}",
                        BITRATE_KBPS.start(),
                        BITRATE_KBPS.end()
                    ),
                ));
            }
            (Some(b), None) => Encoding::Cbr { bitrate_kbps: b },
            (None, Some(q)) if !QUALITY.contains(&q) => {
                return Err(invalid(
                    "quality",
                    format!(
                        "must be between {} (best) and {} (smallest), got {q}",
                        QUALITY.start(),
                        QUALITY.end()
                    ),
                ));
            }
            (None, Some(q)) => Encoding::Vbr { quality: q },
            (None, None) => Encoding::Vbr {
                quality: DEFAULT_QUALITY,
            },
        };
        let seconds = |field: &'static str, v: Option<f64>| match v {
            Some(s) if !s.is_finite() || s < 0.0 => Err(invalid(
                field,
                format!("must be a number of seconds >= 0, got {s}"),
            )),
            Some(s) if s > MAX_SECONDS => Err(invalid(
                field,
                format!("must be at most {MAX_SECONDS} seconds"),
            )),
            other => Ok(other),
        };
        let trim_start = seconds("trim_start", self.trim_start)?.filter(|s| *s > 0.0);
        let trim_end = seconds("trim_end", self.trim_end)?;
        if let Some(end) = trim_end
            && end < trim_start.unwrap_or(0.0) + MIN_TRIMMED
        {
            return Err(invalid(
                "trim_end",
                format!(
                    "must be at least {MIN_TRIMMED} s after trim_start ({} s), got {end}",
                    trim_start.unwrap_or(0.0)
                ),
            ));
        }
        Ok(OutputOptions {
            encoding,
            channels: self.channels,
            sample_rate: self.sample_rate,
            trim_start,
            trim_end,
        })
    }
}

/// Longest trim point accepted (a day): beyond any input we convert.
const MAX_SECONDS: f64 = 86_400.0;

/// Shortest part of a video a trim may keep, in seconds.
pub const MIN_TRIMMED: f64 = 1.0;

impl OutputOptions {
    /// Why the trims cannot apply to a source of `source` seconds, in the
    /// user's words; `None` if they can (or there are none).
    pub fn trims_outside(&self, source: f64) -> Option<String> {
        let start = self.trim_start.unwrap_or(0.0);
        if start >= source {
            return Some(format!(
                "the trim starts at {start} s, but the video lasts only {source:.1} s"
            ));
        }
        let kept = self.expected_duration(source);
        (self.trim_end.is_some() || self.trim_start.is_some())
            .then_some(())
            .filter(|()| kept < MIN_TRIMMED)
            .map(|()| {
                format!(
                    "the trim keeps only {kept:.1} s of a {source:.1} s video; at least {MIN_TRIMMED} s is needed"
                )
            })
    }

    /// How long the MP3 should last for an input of `source` seconds.
    pub fn expected_duration(&self, source: f64) -> f64 {
        let start = self.trim_start.unwrap_or(0.0).min(source);
        let end = self.trim_end.unwrap_or(source).min(source);
        (end - start).max(0.0)
    }
}

// The form's words exactly, as the OpenAPI description lists them: one
// spelling each, so what a client reads there is all it can send.
impl Channels {
    pub fn parse(field: &'static str, s: &str) -> Result<Self, InvalidOption> {
        match s {
            "source" => Ok(Self::Source),
            "mono" => Ok(Self::Mono),
            "stereo" => Ok(Self::Stereo),
            other => Err(invalid(
                field,
                format!("must be one of source, mono, stereo; got {other:?}"),
            )),
        }
    }
}

impl SampleRate {
    pub fn parse(field: &'static str, s: &str) -> Result<Self, InvalidOption> {
        match s {
            "source" => Ok(Self::Source),
            "44100" => Ok(Self::Hz44100),
            "48000" => Ok(Self::Hz48000),
            other => Err(invalid(
                field,
                format!("must be one of source, 44100, 48000; got {other:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_is_vbr_2_as_the_source() {
        assert_eq!(
            RawOptions::default().validate().unwrap(),
            OutputOptions::default()
        );
    }

    #[test]
    fn ranges_are_enforced_with_the_field_named() {
        let e = RawOptions {
            bitrate_kbps: Some(32),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "bitrate");
        assert!(e.why.contains("64") && e.why.contains("320"), "{e}");
        let e = RawOptions {
            quality: Some(10),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "quality");
        let e = RawOptions {
            bitrate_kbps: Some(128),
            quality: Some(2),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "bitrate");
        let e = RawOptions {
            trim_start: Some(5.0),
            trim_end: Some(4.0),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "trim_end");
        let e = RawOptions {
            trim_start: Some(f64::NAN),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "trim_start");
        assert!(Channels::parse("channels", "quad").is_err());
        assert!(SampleRate::parse("sample_rate", "22050").is_err());
        for loose in ["", "Mono", "1", " mono"] {
            assert!(Channels::parse("channels", loose).is_err(), "{loose:?}");
        }
        for loose in ["", "44.1k", "48K"] {
            assert!(
                SampleRate::parse("sample_rate", loose).is_err(),
                "{loose:?}"
            );
        }
        assert_eq!(Channels::parse("channels", "mono").unwrap(), Channels::Mono);
        assert_eq!(
            SampleRate::parse("sample_rate", "48000").unwrap(),
            SampleRate::Hz48000
        );
    }

    #[test]
    fn valid_options_pass_and_trim_sets_the_expected_length() {
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
        assert_eq!(o.encoding, Encoding::Cbr { bitrate_kbps: 128 });
        assert!((o.expected_duration(10.0) - 2.5).abs() < 1e-9);
        assert!(
            (o.expected_duration(3.0) - 1.5).abs() < 1e-9,
            "end past the source"
        );
        assert!((OutputOptions::default().expected_duration(7.0) - 7.0).abs() < 1e-9);
    }

    #[test]
    fn trims_are_checked_against_the_source_and_a_least_length() {
        let trim = |start, end| RawOptions {
            trim_start: start,
            trim_end: end,
            ..Default::default()
        };
        // The probe's `trim_end_seconds: 5e-324`.
        assert_eq!(
            trim(None, Some(5e-324)).validate().unwrap_err().field,
            "trim_end"
        );
        let o = trim(Some(100.0), Some(1000.0)).validate().unwrap();
        let why = o.trims_outside(3.0).unwrap();
        assert!(
            why.contains("starts at 100 s") && why.contains("3.0 s"),
            "{why}"
        );
        let o = trim(Some(2.5), None).validate().unwrap();
        assert!(o.trims_outside(3.0).unwrap().contains("only 0.5 s"));
        assert_eq!(o.trims_outside(10.0), None);
        assert_eq!(OutputOptions::default().trims_outside(0.2), None);
    }
}
