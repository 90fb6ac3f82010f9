#![allow(unreachable_pub, clippy::unwrap_used)]

//! Converting while the upload arrives, through the real gateway (which
//! serves the upload's bytes to the converter following it) and the real
//! converter: every container, the spool and its bound, a spooled video
//! that fails, and an upload that aborts. (A converter SIGKILLed mid-upload
//! is the chaos run's: `bench --bin chaos`; its work directory goes at the
//! next start, `workdir` unit tests.)

use e2e::{Mesh, ffprobe, fid_in, grpc_upload_paced};
use mp3converter_proto::media::v1::JobState;
use std::time::Duration;

/// 6 s of lossless 640×360 H.264 + AAC (about 3 MB): a dozen GridFS chunks.
const CLIP: &str = "-f lavfi -i testsrc2=duration=6:size=640x360:rate=25 -f lavfi -i sine=frequency=440:duration=6 -shortest -c:v libx264 -preset ultrafast -qp 0 -c:a aac";

/// MP3s stored by this mesh.
async fn mp3_count(mesh: &Mesh) -> u64 {
    mesh.store()
        .await
        .mp3_files
        .files
        .count_documents(media_store::mongodb::bson::doc! {})
        .await
        .unwrap()
}

/// Waits (at most `within`) for the converters' work directory to be empty.
async fn empty_work_dir(mesh: &Mesh, within: Duration) {
    test_kit::wait_until("an empty work directory", within, || async {
        mesh.work_files().is_empty().then_some(())
    })
    .await;
}

async fn token(mesh: &Mesh) -> (String, String) {
    let (email, password) = mesh.user().await;
    (
        email.clone(),
        e2e::Rest::new(mesh.http).login(&email, &password).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_container_is_converted_as_it_arrives_and_leaves_nothing() {
    let mesh = Mesh::start().await;
    // Front to back (piped) and index-last (spooled as it lands, converted
    // from the local file at the commit): MKV, WebM, faststart MP4, the MP4
    // and MOV phones write.
    let clips = [
        ("live.mkv", format!("{CLIP} -f matroska")),
        (
            "live.webm",
            "-f lavfi -i testsrc2=duration=6:size=320x240:rate=25 -f lavfi -i sine=frequency=440:duration=6 -shortest -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -c:a libopus".to_owned(),
        ),
        ("faststart.mp4", format!("{CLIP} -movflags +faststart")),
        ("phone.mp4", CLIP.to_owned()),
        ("phone.mov", format!("{CLIP} -f mov")),
    ];
    for (name, args) in clips {
        let (email, token) = token(&mesh).await;
        let path = mesh.sample(name, &args);
        let bytes = std::fs::read(&path).unwrap();
        let job = grpc_upload_paced(
            mesh.grpc,
            &token,
            name,
            &bytes,
            8,
            Duration::from_millis(150),
            None,
        )
        .await
        .unwrap();
        // Handed over at the commit under the live claim: it was being
        // converted while it arrived.
        assert_eq!(
            job.state,
            JobState::Converting as i32,
            "{name}: committed as {job:?}"
        );
        let text = mesh.email(&email).await;
        let fid = fid_in(&text);
        let mp3 = mesh.dir.path().join(format!("{name}.mp3"));
        let got = e2e::Rest::new(mesh.http)
            .get(&token, &format!("/download?fid={fid}"))
            .await
            .bytes()
            .await
            .unwrap();
        std::fs::write(&mp3, got).unwrap();
        let (format, secs) = ffprobe(&mp3);
        assert_eq!(format, "mp3", "{name}");
        assert!((secs - 6.0).abs() < 0.3, "{name}: {secs} s");
        mesh.wait_notified(&job.job_id).await;
        // The live attempt and the queued VideoUploaded made one MP3 (and,
        // `email` checked, one email).
        assert_eq!(mp3_count(&mesh).await, 1, "{name}: one MP3");
        mesh.store()
            .await
            .mp3_files
            .files
            .delete_many(media_store::mongodb::bson::doc! {})
            .await
            .unwrap();
        // The spool (and the MP3 as ffmpeg wrote it) went with the job.
        empty_work_dir(&mesh, Duration::from_secs(5)).await;
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_aborts_takes_its_conversion_and_spool_with_it() {
    let mesh = Mesh::start().await;
    let (email, token) = token(&mesh).await;
    let bytes = std::fs::read(mesh.sample("cut.mp4", CLIP)).unwrap();
    // Half of it, slowly, then the client goes away.
    let res = grpc_upload_paced(
        mesh.grpc,
        &token,
        "cut.mp4",
        &bytes,
        8,
        Duration::from_millis(300),
        Some(4),
    )
    .await;
    assert!(res.is_err(), "{res:?}");
    empty_work_dir(&mesh, Duration::from_secs(10)).await;
    assert_eq!(
        mp3_count(&mesh).await,
        0,
        "no MP3 of an upload that never was"
    );
    let jobs = mesh.jobs().await.all().await.unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        mesh.mailpit.messages_to(&email).await.unwrap().is_empty(),
        "no email about it"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_video_that_cannot_be_converted_fails_once_and_leaves_nothing() {
    let mesh = Mesh::start().await;
    let (email, token) = token(&mesh).await;
    // A phone MP4 cut before its index: spooled as it arrives, committed
    // whole as far as the client knows, and undecodable.
    let bytes = std::fs::read(mesh.sample("nomoov.mp4", CLIP)).unwrap();
    let cut = &bytes[..bytes.len() * 3 / 4];
    let job = grpc_upload_paced(
        mesh.grpc,
        &token,
        "nomoov.mp4",
        cut,
        8,
        Duration::from_millis(150),
        None,
    )
    .await
    .unwrap();
    let text = mesh.email(&email).await;
    assert!(text.contains("could not"), "{text}");
    mesh.wait_notified(&job.job_id).await;
    let job = mesh.jobs().await.all().await.unwrap();
    assert_eq!(job.len(), 1);
    assert_eq!(job[0].state, media_store::JobState::Failed, "{job:?}");
    assert_eq!(mp3_count(&mesh).await, 0);
    empty_work_dir(&mesh, Duration::from_secs(5)).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_past_its_bound_falls_back_to_the_stored_file() {
    // Room for 1 MiB of spools: a 3 MB phone MP4 cannot be spooled live; it
    // is converted from storage after its upload, once, and the work
    // directory never holds more than the bound.
    let mesh = Mesh::start_with(&[("converter-svc", "--max-spool-bytes", "1MiB")]).await;
    let (email, token) = token(&mesh).await;
    let bytes = std::fs::read(mesh.sample("big.mp4", CLIP)).unwrap();
    assert!(bytes.len() > 2 << 20, "{} bytes", bytes.len());
    // The largest the spools ever were, sampled every 10 ms.
    let most = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watch = {
        let (dir, most) = (mesh.dir.path().join("work"), most.clone());
        tokio::spawn(async move {
            loop {
                let spooled: u64 = walk(&dir)
                    .iter()
                    .filter(|p| p.file_name().is_some_and(|n| n == "input"))
                    .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                    .sum();
                most.fetch_max(spooled, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let job = grpc_upload_paced(
        mesh.grpc,
        &token,
        "big.mp4",
        &bytes,
        8,
        Duration::from_millis(150),
        None,
    )
    .await
    .unwrap();
    let text = mesh.email(&email).await;
    assert!(text.contains("is ready"), "{text}");
    mesh.wait_notified(&job.job_id).await;
    watch.abort();
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    assert!(most <= 1 << 20, "the spools held {most} bytes");
    assert!(mesh.work_files().is_empty());
    mesh.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A resumable upload (tus, or CreateUpload + AppendUpload) sent in several
/// appends back to back is converted as it arrives too: the follow window
/// waits between appends, and the last one hands the job over converting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_upload_is_converted_as_its_appends_arrive() {
    use mp3converter_proto::media::v1::{
        AppendStart, AppendUploadRequest, CreateUploadRequest, UploadMetadata,
        append_upload_request::Payload, media_service_client::MediaServiceClient,
    };
    let mesh = Mesh::start().await;
    let (email, token) = token(&mesh).await;
    let bytes = std::fs::read(mesh.sample("resumed.mkv", &format!("{CLIP} -f matroska"))).unwrap();
    let mut media = MediaServiceClient::connect(format!("http://{}", mesh.grpc))
        .await
        .unwrap();
    let authed = |msg| {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    let id = media
        .create_upload(authed(CreateUploadRequest {
            metadata: Some(UploadMetadata {
                filename: "resumed.mkv".into(),
                ..Default::default()
            }),
            total_bytes: bytes.len() as u64,
        }))
        .await
        .unwrap()
        .into_inner()
        .upload
        .unwrap()
        .job_id;
    let mut offset = 0;
    let mut last = None;
    for part in bytes.chunks(bytes.len().div_ceil(4)) {
        let start = AppendUploadRequest {
            payload: Some(Payload::Start(AppendStart {
                job_id: id.clone(),
                offset,
                sha256: Default::default(),
            })),
        };
        let msgs: Vec<_> = std::iter::once(start)
            .chain(part.chunks(1 << 20).map(|c| AppendUploadRequest {
                payload: Some(Payload::Chunk(bytes::Bytes::copy_from_slice(c))),
            }))
            .collect();
        let mut req = tonic::Request::new(futures::stream::iter(msgs));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let upload = media
            .append_upload(req)
            .await
            .unwrap()
            .into_inner()
            .upload
            .unwrap();
        offset = upload.offset;
        last = upload.job;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let job = last.expect("the last append queues the job");
    assert_eq!(
        job.state,
        JobState::Converting as i32,
        "committed as {job:?}: not converted as it arrived"
    );
    let text = mesh.email(&email).await;
    assert!(text.contains("fid="), "{text}");
    mesh.wait_notified(&id).await;
    assert_eq!(mp3_count(&mesh).await, 1);
    empty_work_dir(&mesh, Duration::from_secs(5)).await;
    mesh.stop().await;
}
