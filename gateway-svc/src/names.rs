//! What users name and read: upload file names checked and cleaned, sizes
//! in words.

use tonic::Status;

/// Longest file name accepted, in bytes (a file system's limit is 255).
pub(crate) const MAX_FILE_NAME: usize = 1024;
/// Longest content type accepted, in bytes.
const MAX_CONTENT_TYPE: usize = 255;

/// An upload's file name and content type are refused, not cut, when they are
/// longer than any real one: they go into the job and every message about it.
pub(crate) fn check_names(filename: &str, content_type: &str) -> Result<(), Status> {
    if filename.len() > MAX_FILE_NAME {
        return Err(svc_kit::error::invalid_argument(
            "filename",
            format!("is longer than {MAX_FILE_NAME} bytes"),
        ));
    }
    if content_type.len() > MAX_CONTENT_TYPE {
        return Err(svc_kit::error::invalid_argument(
            "content_type",
            format!("is longer than {MAX_CONTENT_TYPE} bytes"),
        ));
    }
    Ok(())
}

/// A display name: no paths, no control or bidirectional-override
/// characters, at most 200 characters. It is shown in emails and pages and
/// used for the MP3's name, always as data (escaped, quoted), never as code.
pub(crate) fn clean_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && !is_bidi_control(*c))
        .take(200)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "upload".to_owned()
    } else {
        cleaned
    }
}

/// Characters that reorder how text is displayed (U+202E, RIGHT-TO-LEFT
/// OVERRIDE, makes `clip<U+202E>4pm.exe` look like `clipexe.mp4`).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\videos\\clip.mkv"), "clip.mkv");
        assert_eq!(clean_filename("a\u{0}b\"c.mp4"), "abc.mp4");
        assert_eq!(clean_filename("line\nbreak\r.mp4"), "linebreak.mp4");
        assert_eq!(clean_filename("clip\u{202E}4pm.exe"), "clip4pm.exe");
        assert_eq!(clean_filename(""), "upload");
        assert_eq!(clean_filename(".hidden"), "hidden");
        assert_eq!(clean_filename(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(2 << 30), "2 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }
}
