#![allow(unreachable_pub, clippy::unwrap_used)]

//! The tutorial's journey, end to end, with the four real services started
//! in-process against the stack: log in, upload, get the email, download the
//! MP3 named in it, check it with ffprobe. Once over REST with the tutorial's
//! request shapes, once over gRPC with tonic clients, and once with a file
//! that is not a video.

use e2e::{Mesh, Rest, SAMPLE, ffprobe, fid_in};
use futures::StreamExt;
use mp3converter_proto::{
    auth::v1::{LoginRequest, auth_service_client::AuthServiceClient},
    media::v1::{
        DownloadRequest, GetJobRequest, JobState, UploadCommit, UploadMetadata, UploadRequest,
        download_response, media_service_client::MediaServiceClient, upload_request::Payload,
    },
};
use tonic::Request;

fn authed<T>(bearer: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    r
}

#[tokio::test]
async fn the_tutorial_journey_over_rest() {
    let mesh = Mesh::start().await;
    let (email, password) = mesh.user().await;
    let video = mesh.sample("test.mkv", SAMPLE);
    let rest = Rest::new(mesh.http);

    let token = rest.login(&email, &password).await;
    let job = rest
        .upload(&token, "test.mkv", std::fs::read(&video).unwrap())
        .await;

    // The email names the MP3.
    let text = mesh.email(&email).await;
    let fid = fid_in(&text);
    assert!(
        text.contains(&format!("{}/download?fid={fid}", rest.base)),
        "{text}"
    );

    // The email's own two commands, run by a shell with the real curl
    // (curl would ask for the password at a terminal; here it is given).
    let commands = test_kit::shell::email_commands(&text);
    let quoted = |p: &str| format!("-u '{email}':'{p}'");
    let with = |p: &str| commands.replace(&format!("-u '{email}'"), &quoted(p));
    let (out, dir) = tokio::task::spawn_blocking({
        let script = with("not the password");
        move || test_kit::shell::run_real(&script)
    })
    .await
    .unwrap();
    assert!(
        !out.status.success(),
        "a wrong password must fail the commands"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "and save nothing (no error saved as the MP3)"
    );
    let (out, dir) = tokio::task::spawn_blocking({
        let script = with(&password);
        move || test_kit::shell::run_real(&script)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mp3 = dir.path().join("test.mp3");
    let (format, duration) = ffprobe(&mp3);
    assert_eq!(format, "mp3");
    assert!((duration - 4.0).abs() < 0.2, "{duration}");

    let job_id = job["job_id"].as_str().unwrap();
    let done: serde_json::Value = rest
        .get(&token, &format!("/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["state"], "done");
    assert_eq!(done["mp3_id"], fid.as_str());
    mesh.wait_notified(job_id).await;
    mesh.stop().await;
}

#[tokio::test]
async fn the_journey_over_grpc() {
    let mesh = Mesh::start().await;
    let (email, password) = mesh.user().await;
    let video = std::fs::read(mesh.sample("clip.mp4", SAMPLE)).unwrap();
    let mut auth = AuthServiceClient::connect(format!("http://{}", mesh.auth))
        .await
        .unwrap();
    let token = auth
        .login(LoginRequest {
            email: email.clone(),
            password,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let bearer = format!("Bearer {token}");
    let mut media = MediaServiceClient::connect(format!("http://{}", mesh.grpc))
        .await
        .unwrap();

    // Client-streaming upload: metadata, 64 KiB chunks, commit.
    let mut msgs = vec![UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: "clip.mp4".into(),
            content_type: "video/mp4".into(),
            declared_size_bytes: Some(video.len() as u64),
            options: None,
        })),
    }];
    msgs.extend(video.chunks(64 << 10).map(|c| UploadRequest {
        payload: Some(Payload::Chunk(bytes::Bytes::copy_from_slice(c))),
    }));
    msgs.push(UploadRequest {
        payload: Some(Payload::Commit(UploadCommit {
            total_bytes: video.len() as u64,
        })),
    });
    let job = media
        .upload(authed(&bearer, futures::stream::iter(msgs)))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let text = mesh.email(&email).await;
    let fid = fid_in(&text);
    let got = media
        .get_job(authed(
            &bearer,
            GetJobRequest {
                job_id: job.job_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(got.state, JobState::Done as i32);
    assert_eq!(got.mp3_id, fid);

    // Server-streaming download: metadata, then chunks.
    let mut stream = media
        .download(authed(
            &bearer,
            DownloadRequest {
                mp3_id: fid.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    let mut size = 0;
    while let Some(msg) = stream.next().await {
        match msg.unwrap().payload.unwrap() {
            download_response::Payload::Metadata(m) => size = m.size_bytes,
            download_response::Payload::Chunk(c) => bytes.extend_from_slice(&c),
        }
    }
    assert_eq!(bytes.len() as u64, size);
    let out = mesh.dir.path().join("grpc.mp3");
    std::fs::write(&out, &bytes).unwrap();
    let (format, duration) = ffprobe(&out);
    assert_eq!(format, "mp3");
    assert!((duration - 4.0).abs() < 0.2, "{duration}");
    mesh.stop().await;
}

#[tokio::test]
async fn a_file_that_is_not_a_video_ends_in_a_failure_email() {
    let mesh = Mesh::start().await;
    let (email, password) = mesh.user().await;
    let rest = Rest::new(mesh.http);
    let token = rest.login(&email, &password).await;
    let job = rest
        .upload(
            &token,
            "notes.mkv",
            b"just some text, not a video\n".repeat(1000),
        )
        .await;
    let text = mesh.email(&email).await;
    assert!(text.contains("could not convert \"notes.mkv\""), "{text}");
    assert!(text.contains("not a media file"), "{text}");

    let job_id = job["job_id"].as_str().unwrap();
    let failed: serde_json::Value = rest
        .get(&token, &format!("/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed["state"], "failed");
    mesh.wait_notified(job_id).await;
    assert!(
        failed["failure_reason"]
            .as_str()
            .unwrap()
            .contains("not a media file")
    );

    // Nothing left in the video queue: the job was acked, not requeued.
    let conn = amqp_kit::connect(
        &svc_kit::config::Secret::new(mesh.stack.amqp_url.clone()),
        "e2e",
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            mesh.video_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    assert_eq!(q.consumer_count(), 1);
    mesh.stop().await;
}

/// A long conversion, watched the way the web app watches it (the SSE
/// stream) and the way a script would (GET /jobs/{id}): the percentage moves
/// while it converts, forwards only, then the job is done at 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_conversion_shows_its_progress_over_sse_and_rest() {
    let mesh = Mesh::start_with(&[("converter-svc", "--progress-interval", "100ms")]).await;
    let (email, password) = mesh.user().await;
    // 40 minutes of sound in a few MB: seconds of ffmpeg's work.
    let video = mesh.sample(
        "talk.mkv",
        "-f lavfi -i testsrc=duration=2400:size=32x24:rate=1 -f lavfi -i sine=frequency=300:duration=2400 -shortest -c:v mpeg4 -c:a aac -b:a 32k",
    );
    let rest = Rest::new(mesh.http);
    let token = rest.login(&email, &password).await;

    let sse = rest.get(&token, "/jobs/events").await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Option<f64>)>::new()));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut body = sse.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:"))
                        && let Ok(job) = serde_json::from_str::<serde_json::Value>(data.trim())
                        && job["state"].is_string()
                    {
                        seen.lock().unwrap().push((
                            job["state"].as_str().unwrap().to_owned(),
                            job["progress"].as_f64(),
                        ));
                    }
                }
            }
        })
    };
    let job = rest
        .upload(&token, "talk.mkv", std::fs::read(&video).unwrap())
        .await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    let mut polled = Vec::new();
    let deadline = tokio::time::Instant::now() + e2e::T;
    loop {
        let j: serde_json::Value = rest
            .get(&token, &format!("/jobs/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if j["state"] == "converting"
            && let Some(p) = j["progress"].as_f64()
        {
            polled.push(p);
        }
        if j["state"] == "done" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not done: {j}");
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    mesh.wait_notified(&id).await;
    reader.abort();

    let seen = seen.lock().unwrap().clone();
    let live: Vec<f64> = seen
        .iter()
        .filter(|(s, _)| s == "converting")
        .filter_map(|(_, p)| *p)
        .filter(|p| *p > 0.0 && *p < 100.0)
        .collect();
    let mut distinct = live.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 3,
        "at least three percentages while converting over SSE: {seen:?}"
    );
    assert!(
        live.windows(2).all(|w| w[0] <= w[1]),
        "never backwards: {live:?}"
    );
    assert_eq!(
        seen.last().cloned(),
        Some(("done".to_owned(), Some(100.0))),
        "ends done at 100: {seen:?}"
    );
    let mut polled_distinct: Vec<f64> = polled.into_iter().filter(|p| *p > 0.0).collect();
    polled_distinct.dedup();
    assert!(
        polled_distinct.len() >= 2,
        "GET /jobs/{{id}} shows it moving too: {polled_distinct:?}"
    );
    mesh.stop().await;
}
