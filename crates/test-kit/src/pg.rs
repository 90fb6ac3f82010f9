//! A private PostgreSQL server for tests that stop and restart the database
//! (the stack's shared server must stay up for the other tests). Same Debian
//! binaries as the stack, own data directory and port.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

#[derive(Debug)]
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
}

fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL binaries in /usr/lib/postgresql (scripts/stack up installs them)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL version with pg_ctl")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (the server
/// refuses to run as root).
fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePostgres {
    /// initdb + start on a free port; trust auth on 127.0.0.1 only.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("private-pg-")
            .tempdir()
            .expect("tempdir");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("-R").arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let bindir = bindir();
        let mut initdb = pg_command(&bindir.join("initdb"));
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let pg = Self { dir, bindir, port };
        pg.start_again();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) {
        let mut c = pg_command(&self.bindir.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "-t", "30", "start"]);
        run(c, "pg_ctl start");
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) {
        let mut c = pg_command(&self.bindir.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        run(c, "pg_ctl stop");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How long a client needs to notice (used only to bound waits).
    pub const NOTICE: Duration = Duration::from_secs(20);
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut c = pg_command(&self.bindir.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }
}
