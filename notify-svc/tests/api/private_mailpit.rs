//! A Mailpit of the test's own, on free ports, for what the stack's must not
//! be changed for: requiring SMTP authentication, refusing recipients.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use test_kit::mailpit::Mailpit;

pub struct PrivateMailpit {
    pub smtp_port: u16,
    pub api: Mailpit,
    /// Killed when the test ends (kill_on_drop).
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
}

/// `$MAILPIT_BIN`, else the one `scripts/stack` builds in `.tools/bin`.
fn binary() -> PathBuf {
    std::env::var_os("MAILPIT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/mailpit"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateMailpit {
    /// Starts Mailpit with `flags` added; with `auth` = (user, password), SMTP
    /// requires logging in as that user (PLAIN/LOGIN without TLS).
    pub async fn start(auth: Option<(&str, &str)>, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (smtp_port, http_port) = (free_port(), free_port());
        let mut cmd = tokio::process::Command::new(binary());
        cmd.arg("--smtp")
            .arg(format!("127.0.0.1:{smtp_port}"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--database")
            .arg(dir.path().join("mailpit.db"))
            .args(["--disable-version-check", "--smtp-disable-rdns"])
            .args(flags);
        if let Some((user, password)) = auth {
            let file = dir.path().join("smtp-auth");
            std::fs::write(&file, format!("{user}:{password}\n")).unwrap();
            cmd.arg("--smtp-auth-file")
                .arg(file)
                .arg("--smtp-auth-allow-insecure");
        }
        let log = std::fs::File::create(dir.path().join("mailpit.log")).unwrap();
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); run scripts/stack up",
                    binary().display()
                )
            });
        let me = Self {
            smtp_port,
            api: Mailpit::new(format!("http://127.0.0.1:{http_port}")),
            _child: child,
            dir,
        };
        me.wait_ready(http_port).await;
        me
    }

    async fn wait_ready(&self, http_port: u16) {
        let log = self.dir.path().join("mailpit.log");
        test_kit::wait_until(
            &format!("the private Mailpit to answer (log: {})", log.display()),
            Duration::from_secs(20),
            || async {
                let api = reqwest::get(format!("http://127.0.0.1:{http_port}/readyz"))
                    .await
                    .ok()?;
                let smtp = tokio::net::TcpStream::connect(("127.0.0.1", self.smtp_port))
                    .await
                    .ok()?;
                drop(smtp);
                api.status().is_success().then_some(())
            },
        )
        .await;
    }
}
