#![allow(unreachable_pub, clippy::unwrap_used)]

//! The web app in a real browser (Debian's chromium, driven headless by
//! Playwright from `e2e/browser/webapp.mjs`) against the four real services
//! started in-process: sign in, upload two videos and see their progress,
//! watch a conversion's percentage live, download the MP3 (checked here with
//! ffprobe), a non-video's failure reason, an upload cancelled halfway that
//! leaves nothing, an upload that goes on from where it was after the network
//! dropped (`context.setOffline`), one that goes on after a reload when the
//! file is picked again, sign out. Screenshots of the main screens are written to
//! `SCREENSHOT_DIR` (default `target/browser-screenshots`; the set in
//! `docs/screenshots/` is refreshed with `SCREENSHOT_DIR=docs/screenshots`).
//!
//! Needs chromium and the script's node modules, which `scripts/stack up`
//! installs (`apt-get install chromium`, `npm ci --prefix e2e/browser`).

use e2e::{Mesh, ffprobe};
use media_store::mongodb::bson::{Bson, Document, doc};
use std::{path::PathBuf, process::Command, time::Duration};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ffmpeg(out: &std::path::Path, args: &str) {
    let ok = Command::new("ffmpeg")
        .args(["-y", "-hide_banner", "-loglevel", "error"])
        .args(args.split_whitespace())
        .arg(out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg could not make {}", out.display());
}

#[tokio::test]
async fn a_person_converts_videos_in_the_web_app() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no chromium at {chromium}: run scripts/stack up (it installs Debian's chromium)"
    );
    let script_dir = workspace().join("e2e/browser");
    assert!(
        script_dir.join("node_modules/playwright-core").exists(),
        "no playwright-core in e2e/browser/node_modules: run scripts/stack up (npm ci --prefix e2e/browser)"
    );

    // Progress every 200 ms, so a conversion of a few seconds shows several.
    let mesh = Mesh::start_with(&[("converter-svc", "--progress-interval", "200ms")]).await;
    let (email, password) = mesh.user().await;
    let dir = mesh.dir.path();
    let a = dir.join("holiday.mkv");
    let b = dir.join("birthday.mkv");
    for (out, freq) in [(&a, 440), (&b, 660)] {
        ffmpeg(
            out,
            &format!(
                "-f lavfi -i testsrc2=duration=8:size=640x360:rate=25 -f lavfi -i sine=frequency={freq}:duration=8 -shortest -c:v libx264 -preset ultrafast -b:v 3M -c:a aac"
            ),
        );
    }
    let long = dir.join("talk.mkv");
    ffmpeg(
        &long,
        "-f lavfi -i testsrc=duration=600:size=32x24:rate=1 -f lavfi -i sine=frequency=300:duration=600 -shortest -c:v mpeg4 -c:a aac -b:a 64k",
    );
    let big = dir.join("big.mp4");
    std::fs::write(
        &big,
        (0..12u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    // Over the page's 32 MiB a request: the network drops in the first
    // request, the second cannot start until it is back.
    let resume = dir.join("trip.mp4");
    std::fs::write(
        &resume,
        (0..40u32 << 20)
            .map(|i| (i.wrapping_mul(2246822519) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let reload = dir.join("reload.mp4");
    std::fs::write(
        &reload,
        (0..40u32 << 20)
            .map(|i| (i.wrapping_mul(3266489917) >> 9) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let notes = dir.join("notes.mp4");
    std::fs::write(&notes, "meeting notes, not a video\n".repeat(200)).unwrap();
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let shots = std::env::var("SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target/browser-screenshots"));
    std::fs::create_dir_all(&shots).unwrap();

    let run = tokio::process::Command::new("node")
        .arg("webapp.mjs")
        .current_dir(&script_dir)
        .env("BASE_URL", format!("http://{}", mesh.http))
        .env("EMAIL", &email)
        .env("PASSWORD", &password)
        .env("VIDEO_A", &a)
        .env("VIDEO_B", &b)
        .env("VIDEO_LONG", &long)
        .env("VIDEO_BIG", &big)
        .env("VIDEO_RESUME", &resume)
        .env("VIDEO_RELOAD", &reload)
        .env("NOT_A_VIDEO", &notes)
        .env("DOWNLOAD_DIR", &downloads)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser test took over 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser test failed (screenshots in {})",
        shots.display()
    );

    // The MP3 the page saved is a real MP3 of the talk's length.
    let saved = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DOWNLOADED "))
        .expect("the script names the downloaded file");
    let (format, secs) = ffprobe(std::path::Path::new(saved.trim()));
    assert_eq!(format, "mp3");
    assert!((secs - 600.0).abs() < 1.0, "{secs} s");

    // The cancelled upload left nothing in GridFS either.
    let store = media_store::Store::new(
        &svc_kit::config::Secret::new(mesh.stack.mongodb_uri.clone()),
        &mesh.mongo_db,
        "browser-test",
        media_store::Timeouts::default(),
    )
    .await
    .unwrap();
    test_kit::wait_until("no orphan chunk", Duration::from_secs(15), || async {
        for bucket in [&store.video_files] {
            let ids: Vec<Bson> = bucket.chunks.distinct("files_id", doc! {}).await.ok()?;
            let files: Vec<Document> =
                futures::TryStreamExt::try_collect(bucket.files.find(doc! {}).await.ok()?)
                    .await
                    .ok()?;
            let known: Vec<&Bson> = files.iter().filter_map(|f| f.get("_id")).collect();
            if !ids.iter().all(|id| known.contains(&id)) {
                return None;
            }
        }
        Some(())
    })
    .await;
    mesh.stop().await;
}
