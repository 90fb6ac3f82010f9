#![allow(clippy::unwrap_used)]

//! Resumable uploads end to end, with two independent tus clients —
//! tus-js-client (npm, what the web app uses) and tuspy (PyPI) — through a
//! proxy that drops the connection three times mid-upload: each upload
//! completes, is converted, and its owner is emailed, and the bytes sent in
//! all (counted at the proxy) exceed the file by at most one chunk per drop.

use e2e::{Mesh, Rest, ffprobe, fid_in};
use std::{path::Path, process::Stdio, time::Duration};
use test_kit::proxy::Proxy;

/// A 720p clip of about 30 MB (H.264 at 20 Mb/s, AAC), MP4 with its index
/// last, as phones write them.
const CLIP_720P: &str = "-f lavfi -i testsrc2=duration=12:size=1280x720:rate=30 -f lavfi -i sine=frequency=440:duration=12 -shortest -c:v libx264 -preset ultrafast -pix_fmt yuv420p -b:v 20M -maxrate 20M -bufsize 4M -c:a aac";

const CHUNK: u64 = 8 << 20;
const DROPS: u64 = 3;

fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Debug, Clone, Copy)]
enum Client {
    TusJs,
    Tuspy,
}

impl Client {
    fn command(self, endpoint: &str, token: &str, file: &Path) -> tokio::process::Command {
        let root = workspace();
        let mut cmd = match self {
            Self::TusJs => {
                let mut c = tokio::process::Command::new("node");
                c.arg(root.join("e2e/browser/tus_upload.mjs"));
                c
            }
            Self::Tuspy => {
                let mut c = tokio::process::Command::new(root.join(".tools/venv/bin/python"));
                c.arg(root.join("e2e/tests/support/tus_upload.py"));
                c
            }
        };
        cmd.args([endpoint, token])
            .arg(file)
            .arg(CHUNK.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tus_clients_resume_through_dropped_connections_and_the_mp3_is_emailed() {
    let mesh = Mesh::start().await;
    let video = mesh.sample("phone.mp4", CLIP_720P);
    let size = std::fs::metadata(&video).unwrap().len();
    let proxy = Proxy::start(&mesh.http.to_string()).await;
    let endpoint = format!("http://{}/uploads", proxy.addr);
    let rest = Rest::new(mesh.http);

    let mut table = Vec::new();
    for client in [Client::TusJs, Client::Tuspy] {
        let (email, password) = mesh.user().await;
        let token = rest.login(&email, &password).await;
        let before = proxy.sent();
        let mut child = client.command(&endpoint, &token, &video).spawn().unwrap();
        // Drop every connection at 25 %, 50 % and 75 % of the file.
        for k in 1..=DROPS {
            let at = before + size * k / (DROPS + 1);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while proxy.sent() < at {
                if let Some(status) = child.try_wait().unwrap() {
                    let out = child.wait_with_output().await.unwrap();
                    panic!(
                        "{client:?} ended ({status}) before the drop at {at}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{client:?}: {at} bytes never came"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            proxy.cut();
        }
        let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
            .await
            .expect("the client finished in time")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{client:?} failed: {stderr}");
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let job_id = url.rsplit('/').next().unwrap().to_owned();
        let sent = proxy.sent() - before;
        table.push(format!(
            "{client:?}: {size} bytes, {sent} sent through the proxy ({:.3}x) with {DROPS} drops",
            sent as f64 / size as f64
        ));
        assert!(
            sent <= size + DROPS * CHUNK,
            "{client:?} sent {sent} bytes for a file of {size}: more than a chunk again per drop"
        );

        // Converted, and the owner emailed the MP3's link.
        let text = mesh.email(&email).await;
        mesh.wait_notified(&job_id).await;
        let fid = fid_in(&text);
        let res = rest.get(&token, &format!("/download?fid={fid}")).await;
        assert_eq!(res.status(), 200);
        let mp3 = mesh.dir.path().join(format!("{job_id}.mp3"));
        std::fs::write(&mp3, res.bytes().await.unwrap()).unwrap();
        let (codec, seconds) = ffprobe(&mp3);
        assert_eq!(codec, "mp3");
        assert!((seconds - 12.0).abs() < 0.5, "{seconds}");
    }
    eprintln!("{}", table.join("\n"));
    mesh.stop().await;
}
