//! Uploads and downloads through REST and gRPC, and every way an upload can
//! go wrong without leaving anything behind.

use crate::helpers::*;
use futures::StreamExt;
use mp3converter_proto::media::v1::{
    DownloadRequest, UploadCommit, UploadMetadata, UploadRequest, download_response,
    upload_request::Payload,
};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tonic::{Code, Request};

const MIB: usize = 1 << 20;

fn multipart_one(bytes: Vec<u8>, name: &str) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_owned())
            .mime_str("video/x-matroska")
            .unwrap(),
    )
}

fn grpc_upload_stream(
    bytes: Vec<u8>,
    commit: Option<u64>,
) -> impl futures::Stream<Item = UploadRequest> + Send + 'static {
    let meta = UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: "clip.mkv".into(),
            content_type: "video/x-matroska".into(),
            declared_size_bytes: Some(bytes.len() as u64),
            options: None,
        })),
    };
    let chunks: Vec<UploadRequest> = bytes
        .chunks(MIB)
        .map(|c| UploadRequest {
            payload: Some(Payload::Chunk(bytes::Bytes::copy_from_slice(c))),
        })
        .collect();
    let commit = commit.map(|n| UploadRequest {
        payload: Some(Payload::Commit(UploadCommit { total_bytes: n })),
    });
    futures::stream::iter(std::iter::once(meta).chain(chunks).chain(commit))
}

fn authed<T>(user: &User, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", user.token).parse().unwrap(),
    );
    req
}

#[tokio::test]
async fn rest_upload_and_download_of_100_mib_keep_every_byte() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let video = random_bytes(100 * MIB);

    let res = reqwest::Client::new()
        .post(app.url("/upload"))
        .bearer_auth(&user.token)
        .multipart(multipart_one(video.clone(), "big.mkv"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let job: serde_json::Value = res.json().await.unwrap();
    assert_eq!(job["state"], "queued");
    assert_eq!(job["size_bytes"], 100 * MIB as u64);
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    assert!(
        app.stored_video(&job_id).await == video,
        "stored video differs"
    );
    app.wait_queued(1).await;

    // The converter's part, done by hand: a 100 MiB "MP3" for this job.
    let mp3 = random_bytes(100 * MIB);
    let mp3_id = app.put_mp3(&user, Some(&job_id), &mp3).await;
    let res = reqwest::Client::new()
        .get(app.url(&format!("/download?fid={mp3_id}")))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "audio/mpeg");
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=\"clip.mp3\"; filename*=UTF-8''clip.mp3"
    );
    let body = res.bytes().await.unwrap();
    assert!(
        body.len() == mp3.len() && body[..] == mp3[..],
        "downloaded MP3 differs"
    );
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn grpc_upload_and_download_of_100_mib_keep_every_byte() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let video = random_bytes(100 * MIB);
    let mut media = app.media().await;
    let job = media
        .upload(authed(
            &user,
            grpc_upload_stream(video.clone(), Some(video.len() as u64)),
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert!(app.stored_video(&job.job_id).await == video);

    let mp3 = random_bytes(100 * MIB);
    let mp3_id = app.put_mp3(&user, Some(&job.job_id), &mp3).await;
    let mut stream = media
        .download(authed(
            &user,
            DownloadRequest {
                mp3_id: mp3_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let Some(download_response::Payload::Metadata(meta)) = first.payload else {
        panic!("metadata must come first: {first:?}");
    };
    assert_eq!(meta.size_bytes, mp3.len() as u64);
    assert_eq!(meta.content_type, "audio/mpeg");
    let mut got = Vec::with_capacity(mp3.len());
    while let Some(msg) = stream.next().await {
        match msg.unwrap().payload {
            Some(download_response::Payload::Chunk(c)) => {
                assert!(c.len() <= MIB);
                got.extend_from_slice(&c);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got == mp3, "downloaded MP3 differs");
    app.stop().await;
    auth.stop().await;
}

// Runs grpcurl/curl as a blocking child process: a second worker thread
// keeps the in-process server answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorials_curl_commands_work_unchanged() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.mkv"), random_bytes(3 * MIB)).unwrap();
    let host = app.http.to_string();
    let curl = |args: Vec<String>| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let token = curl(vec![
        "-X".into(),
        "POST".into(),
        format!("http://{host}/login"),
        "-u".into(),
        format!("{}:{}", user.email, user.password),
    ]);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let job = curl(vec![
        "-X".into(),
        "POST".into(),
        "-F".into(),
        "file=@./test.mkv".into(),
        "-H".into(),
        format!("Authorization: Bearer {token}"),
        format!("http://{host}/upload"),
    ]);
    let job: serde_json::Value = serde_json::from_str(&job).unwrap();
    let job_id = job["job_id"].as_str().unwrap();
    assert_eq!(job["filename"], "test.mkv");

    let mp3 = random_bytes(MIB + 17);
    let fid = app.put_mp3(&user, Some(job_id), &mp3).await;
    curl(vec![
        "--output".into(),
        "out.mp3".into(),
        "-X".into(),
        "GET".into(),
        "-H".into(),
        format!("Authorization: Bearer {token}"),
        format!("http://{host}/download?fid={fid}"),
    ]);
    assert!(std::fs::read(dir.path().join("out.mp3")).unwrap() == mp3);
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn two_files_or_none_are_refused_and_nothing_is_kept() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let part =
        |n: &str| reqwest::multipart::Part::bytes(random_bytes(2 * MIB)).file_name(n.to_owned());
    let two = reqwest::multipart::Form::new()
        .part("file", part("a.mkv"))
        .part("file2", part("b.mkv"));
    let none = reqwest::multipart::Form::new().text("bitrate", "128");
    for form in [two, none] {
        let res = reqwest::Client::new()
            .post(app.url("/upload"))
            .bearer_auth(&user.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["message"], "exactly 1 file required");
        assert_eq!(body["code"], "invalid_argument");
    }
    eventually_empty(&app).await;
    assert_eq!(app.queued_messages().await, 0);
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn a_rest_upload_cut_halfway_leaves_nothing() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let boundary = "XcutX";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.mkv\"\r\n\
         Content-Type: video/x-matroska\r\n\r\n"
    );
    let full_len = head.len() + 20 * MIB + format!("\r\n--{boundary}--\r\n").len();
    let mut sock = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {full_len}\r\n\r\n{head}",
        app.http, user.token
    );
    sock.write_all(request.as_bytes()).await.unwrap();
    sock.write_all(&random_bytes(10 * MIB)).await.unwrap();
    sock.flush().await.unwrap();
    // Wait until the gateway has started storing, then cut the connection.
    test_kit::wait_until("the upload to start", Duration::from_secs(10), || async {
        (app.video_chunk_count().await > 0).then_some(())
    })
    .await;
    drop(sock);
    eventually_empty(&app).await;
    assert_eq!(app.queued_messages().await, 0);
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn a_grpc_upload_cancelled_halfway_leaves_nothing() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let mut media = app.media().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(4);
    let call = tokio::spawn(async move {
        media
            .upload(authed(
                &user,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .await
    });
    let mut stream = Box::pin(grpc_upload_stream(random_bytes(40 * MIB), None));
    for _ in 0..11 {
        tx.send(stream.next().await.unwrap()).await.unwrap();
    }
    test_kit::wait_until("the upload to start", Duration::from_secs(10), || async {
        (app.video_chunk_count().await > 0).then_some(())
    })
    .await;
    call.abort(); // the client gives up: the HTTP/2 stream is reset
    drop(tx);
    eventually_empty(&app).await;
    assert_eq!(app.queued_messages().await, 0);
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn a_grpc_upload_without_commit_or_with_a_wrong_count_is_aborted() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let mut media = app.media().await;
    let data = random_bytes(3 * MIB);
    for commit in [None, Some(data.len() as u64 - 1)] {
        let err = media
            .upload(authed(&user, grpc_upload_stream(data.clone(), commit)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Aborted, "{err:?}");
    }
    eventually_empty(&app).await;
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn bad_upload_streams_are_invalid_argument() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let mut media = app.media().await;
    let chunk = |n: usize| UploadRequest {
        payload: Some(Payload::Chunk(bytes::Bytes::from(vec![1u8; n]))),
    };
    let meta = || UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: "x.mkv".into(),
            ..Default::default()
        })),
    };
    let commit = |n: u64| UploadRequest {
        payload: Some(Payload::Commit(UploadCommit { total_bytes: n })),
    };
    let cases: Vec<(&str, Vec<UploadRequest>)> = vec![
        ("chunk before metadata", vec![chunk(10), commit(10)]),
        (
            "metadata twice",
            vec![meta(), meta(), chunk(10), commit(10)],
        ),
        (
            "chunk over 1 MiB",
            vec![meta(), chunk(MIB + 1), commit(MIB as u64 + 1)],
        ),
        ("empty file", vec![meta(), commit(0)]),
        (
            "message after commit",
            vec![meta(), chunk(10), commit(10), chunk(1)],
        ),
    ];
    for (what, msgs) in cases {
        let err = media
            .upload(authed(&user, futures::stream::iter(msgs)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    eventually_empty(&app).await;
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn uploads_over_the_limit_are_413_and_nothing_is_kept() {
    let auth = Auth::start().await;
    let app = spawn_app_with(&auth, &["--max-upload-size", "4MiB"]).await;
    let user = app.user().await;
    let res = reqwest::Client::new()
        .post(app.url("/upload"))
        .bearer_auth(&user.token)
        .multipart(multipart_one(random_bytes(6 * MIB), "big.mkv"))
        .send()
        .await;
    // The gateway may answer before the client has finished sending.
    if let Ok(res) = res {
        assert_eq!(res.status(), 413);
    }
    let mut media = app.media().await;
    let data = random_bytes(5 * MIB);
    let err = media
        .upload(authed(
            &user,
            grpc_upload_stream(data, Some(5 * MIB as u64)),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    eventually_empty(&app).await;
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn twenty_parallel_uploads_make_twenty_jobs_and_messages() {
    let auth = Auth::start().await;
    // One user here, so the per-user quotas are raised for the test.
    let app = spawn_app_with(
        &auth,
        &[
            "--max-uploads-per-user",
            "20",
            "--max-waiting-jobs-per-user",
            "20",
        ],
    )
    .await;
    let user = app.user().await;
    let client = reqwest::Client::new();
    let uploads = (0..20).map(|i| {
        let client = client.clone();
        let url = app.url("/upload");
        let token = user.token.clone();
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .multipart(multipart_one(random_bytes(256 << 10), &format!("v{i}.mkv")))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures::future::join_all(uploads).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.job_count().await, 20);
    assert_eq!(app.video_count().await, 20);
    app.wait_queued(20).await;
    assert!(
        app.all_jobs()
            .await
            .iter()
            .all(|j| j.state == media_store::JobState::Queued)
    );
    // One VideoUploaded each, marked sent once the broker confirmed it.
    test_kit::wait_until("20 events sent", Duration::from_secs(10), || async {
        let events = app.jobs.events().await.unwrap();
        (events.len() == 20 && events.iter().all(|(_, _, sent)| *sent)).then_some(())
    })
    .await;
    app.stop().await;
    auth.stop().await;
}
