//! Running the download commands an email shows, as a user's shell would:
//! `sh -c` in an empty directory, with `curl` replaced by a stand-in that
//! records its arguments. A file name that breaks out of its quotes shows as
//! a command that ran (the hostile names create `INJECTED`).

use std::{os::unix::fs::PermissionsExt, process::Command};

/// A `curl` that records its arguments (NUL-separated, one file per run)
/// and prints a token.
const FAKE_CURL: &str = r#"#!/bin/sh
n=0
while [ -e "$CURL_LOG/$n" ]; do n=$((n + 1)); done
for a in "$@"; do printf '%s\0' "$a"; done > "$CURL_LOG/$n"
printf fake-token
"#;

/// What a script did in the sandbox.
#[derive(Debug)]
pub struct Ran {
    /// The sandbox (kept until this is dropped).
    pub dir: tempfile::TempDir,
    /// The arguments of each `curl` run, in order.
    pub curl_runs: Vec<Vec<String>>,
}

impl Ran {
    /// Whether anything but `curl` ran: a hostile name's `touch INJECTED`.
    pub fn injected(&self) -> bool {
        self.dir.path().join("work/INJECTED").exists()
    }
}

/// The two command lines of an email's text part (get a token, download).
pub fn email_commands(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("TOKEN=$(curl") || l.starts_with("curl --fail --output"))
        .collect();
    assert_eq!(lines.len(), 2, "the email's commands:\n{text}");
    lines.join("\n")
}

/// Runs `script` with `sh -c` in an empty directory where `curl` is the
/// stand-in; panics if the script fails.
pub fn run_with_fake_curl(script: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let (bin, log, work) = (
        dir.path().join("bin"),
        dir.path().join("log"),
        dir.path().join("work"),
    );
    for d in [&bin, &log, &work] {
        std::fs::create_dir(d).unwrap();
    }
    let curl = bin.join("curl");
    std::fs::write(&curl, FAKE_CURL).unwrap();
    std::fs::set_permissions(&curl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(&work)
        .env("PATH", path)
        .env("CURL_LOG", &log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let curl_runs = (0..)
        .map(|i| log.join(i.to_string()))
        .take_while(|f| f.exists())
        .map(|f| {
            std::fs::read(f)
                .unwrap()
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8(a.to_vec()).unwrap())
                .collect()
        })
        .collect();
    Ran { dir, curl_runs }
}

/// Runs `script` with `sh -c` in a new empty directory with the real tools
/// (`curl` itself): what it printed and how it ended, and the directory.
pub fn run_real(script: &str) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (out, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_sees_an_injection() {
        // The command as emails once had it runs the file name.
        let ran = run_with_fake_curl(r#"curl --output "$(touch INJECTED).mp3" -X GET "x""#);
        assert!(ran.injected());
        assert_eq!(
            ran.curl_runs,
            vec![vec!["--output", ".mp3", "-X", "GET", "x"]]
        );
    }
}
