//! Putting text into emails so that it stays text: the templates' `{name}`
//! variables are filled in one pass (a value is never read as a template),
//! escaped for HTML, and anything that lands in a shell command is either
//! made by the server or single-quoted.

/// Fills `template`'s `{name}` variables from `vars`, escaping each value with
/// `escape`. A line that names a variable without a value (`None`) is left
/// out: that is how a template says something only when it is true (a flag
/// is a variable whose value is empty: `{if_source_deleted}Nothing was kept.`).
/// Braces that do not name a variable stay as they are.
pub(crate) fn render(
    template: &str,
    vars: &[(&str, Option<String>)],
    escape: fn(&str) -> String,
) -> String {
    template
        .split_inclusive('\n')
        .filter_map(|line| render_line(line, vars, escape))
        .collect()
}

fn render_line(
    line: &str,
    vars: &[(&str, Option<String>)],
    escape: fn(&str) -> String,
) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let var = after.find('}').and_then(|close| {
            let name = &after[..close];
            let (_, value) = vars.iter().find(|(k, _)| *k == name)?;
            Some((value, close))
        });
        match var {
            Some((Some(value), close)) => {
                out.push_str(&escape(value));
                rest = &after[close + 1..];
            }
            Some((None, _)) => return None,
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// For the plain-text templates.
pub(crate) fn as_text(s: &str) -> String {
    s.to_owned()
}

/// For the HTML templates: safe in element content and in quoted attributes.
pub(crate) fn escape_html(s: &str) -> String {
    s.chars()
        .fold(String::with_capacity(s.len()), |mut out, c| {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
            out
        })
}

/// One word for a POSIX shell, whatever `s` holds: inside single quotes
/// nothing is special (`$()`, backticks, `"`, `;`), and a `'` is written
/// `'\''` (close, escaped quote, reopen).
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The file name the download command writes to, derived from the MP3's name
/// but made only of `[A-Za-z0-9._-]` (each run of other characters becomes
/// one `_`), not starting with `-` (an option) or `.` (hidden, `..`), never
/// empty, and ending in `.mp3`.
pub(crate) fn output_file_name(mp3_name: &str) -> String {
    let mut name = String::with_capacity(mp3_name.len());
    for c in mp3_name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            name.push(c);
        } else if !name.ends_with('_') {
            name.push('_');
        }
    }
    let stem = name.strip_suffix(".mp3").unwrap_or(&name);
    let stem = stem.trim_start_matches(['-', '.']);
    if stem.chars().any(|c| c.is_ascii_alphanumeric()) {
        format!("{stem}.mp3")
    } else {
        "audio.mp3".to_owned()
    }
}

/// Text from outside (a file name, a reason) as it may be shown: control
/// characters (CR, LF: header splitting) become spaces, and the characters
/// that reorder how text is displayed (U+202E makes `clip<U+202E>4pm.exe` look
/// like `clipexe.mp4`) are dropped.
pub(crate) fn for_display(s: &str) -> String {
    s.chars()
        .filter(|c| !is_bidi_control(*c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Bidirectional controls (U+200E/F, U+061C, U+202A–U+202E, U+2066–U+2069)
/// and the Unicode line and paragraph separators.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}'
    )
}

pub(crate) fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

pub(crate) fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&'static str, Option<&str>)]) -> Vec<(&'static str, Option<String>)> {
        pairs
            .iter()
            .map(|(k, v)| (*k, v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn templates_are_filled_and_html_is_escaped() {
        let v = vars(&[("filename", Some("<b>x</b>.mp3")), ("mp3_id", Some("42"))]);
        assert_eq!(
            render("{filename} {mp3_id}", &v, as_text),
            "<b>x</b>.mp3 42"
        );
        assert_eq!(
            render("{filename}", &v, escape_html),
            "&lt;b&gt;x&lt;/b&gt;.mp3"
        );
        assert_eq!(
            escape_html(r#"<a href="x" onclick='y'>&"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;"
        );
    }

    #[test]
    fn a_value_is_never_read_as_a_template() {
        let v = vars(&[
            ("filename", Some("{mp3_id}{secret}")),
            ("mp3_id", Some("42")),
        ]);
        assert_eq!(
            render("{filename} {mp3_id}", &v, as_text),
            "{mp3_id}{secret} 42"
        );
    }

    #[test]
    fn lines_naming_a_missing_value_are_left_out_and_other_braces_stay() {
        let v = vars(&[("date", None), ("flag", Some("")), ("id", Some("7"))]);
        let t = "a\nIt is deleted on {date}.\n{flag}Kept.\n{\"mp3_id\": \"{id}\"}\n{unknown}\n";
        assert_eq!(
            render(t, &v, as_text),
            "a\nKept.\n{\"mp3_id\": \"7\"}\n{unknown}\n"
        );
    }

    /// Runs `sh -c 'printf %s WORD'` and returns what the shell made of it.
    fn through_sh(word: &str) -> String {
        let dir = std::env::temp_dir();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {word}"))
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{word}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn shell_quoting_keeps_every_character_literal() {
        for s in [
            "$(touch INJECTED).mp3",
            "`touch INJECTED`.mp3",
            "it's \"x\"; exit 3 & $HOME \\ \n *",
            "''",
            "",
        ] {
            assert_eq!(through_sh(&shell_quote(s)), s);
        }
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn output_names_are_plain_words() {
        let cases = [
            ("holiday.mp3", "holiday.mp3"),
            ("$(touch INJECTED).mp3", "_touch_INJECTED_.mp3"),
            ("`touch INJECTED`.mp3", "_touch_INJECTED_.mp3"),
            ("it's \"fine\"; ok.mp3", "it_s_fine_ok.mp3"),
            (
                "<script>alert(1)</script>.mp3",
                "_script_alert_1_script_.mp3",
            ),
            ("clip\u{202E}4pm.mp3", "clip_4pm.mp3"),
            ("-rf.mp3", "rf.mp3"),
            ("..mp3", "audio.mp3"),
            (".mp3", "audio.mp3"),
            ("._x.mp3", "_x.mp3"),
            ("日本語.mp3", "audio.mp3"),
            ("", "audio.mp3"),
            ("noext", "noext.mp3"),
        ];
        for (name, want) in cases {
            let got = output_file_name(name);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn displayed_text_has_no_line_breaks_or_bidi_controls() {
        assert_eq!(
            for_display("a\r\nBcc: x@y\u{202E}z\u{2066}\u{200F}"),
            "a  Bcc: x@yz"
        );
        assert_eq!(for_display("clip\u{202E}4pm.exe"), "clip4pm.exe");
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_duration(185.4), "3:05");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
        assert_eq!(human_size(1500), "2 KiB");
    }
}
