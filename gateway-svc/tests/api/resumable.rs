//! Resumable uploads: the tus routes and MediaService's CreateUpload,
//! GetUpload, AppendUpload and CancelUpload, against the real stores.

use crate::helpers::*;
use base64::Engine;
use mp3converter_proto::media::v1::{
    AppendStart, AppendUploadRequest, CreateUploadRequest, GetUploadRequest, UploadMetadata,
    append_upload_request::Payload,
};
use reqwest::{Client, Response, StatusCode};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tonic::{Code, Request};

const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn header(res: &Response, name: &str) -> String {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {res:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// `POST /uploads` for a file of `length` bytes: the upload's URL.
async fn create(app: &TestApp, user: &User, length: usize) -> String {
    let res = try_create(app, user, length).await;
    assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
    let location = header(&res, "location");
    assert!(location.starts_with("/uploads/"), "{location}");
    assert!(res.headers().contains_key("upload-expires"));
    app.url(&location)
}

async fn try_create(app: &TestApp, user: &User, length: usize) -> Response {
    Client::new()
        .post(app.url("/uploads"))
        .bearer_auth(&user.token)
        .header(TUS.0, TUS.1)
        .header("Upload-Length", length.to_string())
        .header(
            "Upload-Metadata",
            format!(
                "filename {},filetype {},bitrate {}",
                b64(b"holiday.mkv"),
                b64(b"video/x-matroska"),
                b64(b"128")
            ),
        )
        .send()
        .await
        .unwrap()
}

async fn head(user: &User, url: &str) -> Response {
    Client::new()
        .head(url)
        .bearer_auth(&user.token)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap()
}

async fn offset_of(user: &User, url: &str) -> u64 {
    let res = head(user, url).await;
    assert_eq!(res.status(), StatusCode::OK);
    header(&res, "upload-offset").parse().unwrap()
}

async fn patch(
    user: &User,
    url: &str,
    offset: u64,
    body: &[u8],
    checksum: Option<String>,
) -> Response {
    let mut req = Client::new()
        .patch(url)
        .bearer_auth(&user.token)
        .header(TUS.0, TUS.1)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", offset.to_string());
    if let Some(c) = checksum {
        req = req.header("Upload-Checksum", c);
    }
    req.body(body.to_vec()).send().await.unwrap()
}

fn job_id(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

/// Sends a PATCH whose body stops half-way, and hangs up.
async fn cut_patch(app: &TestApp, user: &User, url: &str, offset: u64, body: &[u8], sent: usize) {
    let path = url.trim_start_matches(&format!("http://{}", app.http));
    let mut conn = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n\
         Content-Length: {}\r\n\r\n",
        user.token,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..sent]).await.unwrap();
    conn.flush().await.unwrap();
    // Let the bytes arrive, then drop the connection mid-body.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(conn);
}

#[tokio::test]
async fn a_tus_upload_in_pieces_keeps_every_byte_and_queues_the_job_once_whole() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;

    // Discovery needs no token.
    let res = Client::new()
        .request(reqwest::Method::OPTIONS, app.url("/uploads"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "tus-version"), "1.0.0");
    assert_eq!(header(&res, "tus-checksum-algorithm"), "sha256");
    for ext in ["creation", "termination", "expiration", "checksum"] {
        assert!(header(&res, "tus-extension").contains(ext));
    }

    // Pieces that do not fall on GridFS chunk boundaries (255 KiB).
    let video = random_bytes(3 * 1024 * 1024 + 12_345);
    let url = create(&app, &user, video.len()).await;
    assert_eq!(offset_of(&user, &url).await, 0);
    let mut at = 0;
    for piece in [100_000, 1_000_000, 261_121] {
        let res = patch(&user, &url, at as u64, &video[at..at + piece], None).await;
        assert_eq!(
            res.status(),
            StatusCode::NO_CONTENT,
            "{:?}",
            res.text().await
        );
        at += piece;
        assert_eq!(header(&res, "upload-offset"), at.to_string());
        assert_eq!(offset_of(&user, &url).await, at as u64);
    }
    // Nothing is queued, or listed, before the last byte.
    assert_eq!(app.queued_messages().await, 0);
    assert_eq!(app.video_count().await, 0);
    let digest = Sha256::digest(&video[at..]);
    let res = patch(
        &user,
        &url,
        at as u64,
        &video[at..],
        Some(format!("sha256 {}", b64(&digest))),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "upload-offset"), video.len().to_string());
    assert_eq!(header(&res, "tus-resumable"), "1.0.0");

    app.wait_queued(1).await;
    let id = job_id(&url);
    assert_eq!(app.stored_video(&id).await, video);
    let job: serde_json::Value = Client::new()
        .get(app.url(&format!("/jobs/{id}")))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["filename"], "holiday.mkv");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["options"]["bitrate_kbps"], 128, "{job}");
    // Complete: HEAD says so; a PATCH more is a conflict, DELETE too.
    assert_eq!(offset_of(&user, &url).await, video.len() as u64);
    assert_eq!(
        patch(&user, &url, video.len() as u64, b"x", None)
            .await
            .status(),
        StatusCode::CONFLICT
    );
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn wrong_offsets_bad_checksums_and_strangers_are_refused_and_keep_nothing() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let (user, stranger) = (app.user().await, app.user().await);
    let video = random_bytes(600_000);
    let url = create(&app, &user, video.len()).await;
    assert_eq!(
        patch(&user, &url, 0, &video[..300_000], None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    // Not where the upload is.
    for offset in [0, 299_999, 300_001] {
        let res = patch(&user, &url, offset, &video[offset as usize..], None).await;
        assert_eq!(res.status(), StatusCode::CONFLICT, "{offset}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("300000"),
            "{body}"
        );
    }
    // A checksum that does not match: 460, nothing kept.
    let wrong = b64(&Sha256::digest(b"something else"));
    let res = patch(
        &user,
        &url,
        300_000,
        &video[300_000..],
        Some(format!("sha256 {wrong}")),
    )
    .await;
    assert_eq!(res.status().as_u16(), 460);
    assert_eq!(offset_of(&user, &url).await, 300_000);
    // Unknown algorithm, more than the length, wrong type, no version.
    let res = patch(&user, &url, 300_000, b"x", Some("md5 AAAA".into())).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = patch(&user, &url, 300_000, &random_bytes(300_001), None).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(offset_of(&user, &url).await, 300_000);
    let res = Client::new()
        .patch(&url)
        .bearer_auth(&user.token)
        .header(TUS.0, TUS.1)
        .header("Upload-Offset", "300000")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = Client::new()
        .head(&url)
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&res, "tus-version"), "1.0.0");
    let res = Client::new()
        .head(&url)
        .bearer_auth(&user.token)
        .header(TUS.0, "0.2.2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(header(&res, "tus-version"), "1.0.0");
    // Someone else's upload does not exist for them; no token is 401.
    assert_eq!(head(&stranger, &url).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        patch(&stranger, &url, 300_000, &video[300_000..], None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let res = Client::new()
        .head(&url)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&res, "tus-resumable"), "1.0.0");

    // Termination removes the upload and its bytes.
    let res = Client::new()
        .delete(&url)
        .bearer_auth(&user.token)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(head(&user, &url).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.video_chunk_count().await, 0);
    assert_eq!(app.job_count().await, 0);
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn a_cut_patch_keeps_what_arrived_and_the_upload_resumes_on_another_replica() {
    let auth = Auth::start().await;
    let a = spawn_app(&auth).await;
    let b = spawn_app_on(&auth, &a.db, &a.queue, &[]).await;
    let user = a.user().await;
    let video = random_bytes(2_000_000);
    let url = create(&a, &user, video.len()).await;

    // The connection drops after 1,234,567 bytes: they are kept.
    cut_patch(&a, &user, &url, 0, &video, 1_234_567).await;
    let on_b = b.url(&format!("/uploads/{}", job_id(&url)));
    let at = test_kit::wait_until(
        "the cut PATCH's bytes stored",
        Duration::from_secs(10),
        || async {
            let at = offset_of(&user, &on_b).await;
            (at == 1_234_567).then_some(at)
        },
    )
    .await;
    // Chunks past the offset that a gateway dying before its checkpoint
    // would leave: scratch, replaced as the upload goes on.
    let first = at / u64::from(media_store::gridfs::CHUNK_SIZE) + 1;
    for n in first..first + 2 {
        b.store
            .video_files
            .chunks
            .insert_one(media_store::mongodb::bson::doc! {
                "files_id": media_store::mongodb::bson::oid::ObjectId::parse_str(job_id(&url)).unwrap(),
                "n": n as i32,
                "data": media_store::mongodb::bson::Binary {
                    subtype: media_store::mongodb::bson::spec::BinarySubtype::Generic,
                    bytes: vec![0xEE; 1000],
                },
            })
            .await
            .unwrap();
    }
    // Replica B continues it from there.
    let res = patch(&user, &on_b, at, &video[at as usize..], None).await;
    assert_eq!(
        res.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        res.text().await
    );
    b.wait_queued(1).await;
    assert_eq!(b.stored_video(&job_id(&url)).await, video);
    b.stop().await;
    a.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn a_second_patch_while_one_is_at_work_is_locked_out() {
    let auth = Auth::start().await;
    // A PATCH is a stream: it may last longer than a unary call's deadline.
    let app = spawn_app_with(&auth, &["--request-timeout", "1s"]).await;
    let user = app.user().await;
    let video = random_bytes(1_000_000);
    let url = create(&app, &user, video.len()).await;
    let path = url
        .trim_start_matches(&format!("http://{}", app.http))
        .to_owned();
    // A PATCH that sends half its body and waits.
    let mut slow = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let head_lines = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n\
         Content-Length: {}\r\n\r\n",
        user.token,
        video.len()
    );
    slow.write_all(head_lines.as_bytes()).await.unwrap();
    slow.write_all(&video[..500_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let res = patch(&user, &url, 0, &video, None).await;
    assert_eq!(res.status(), StatusCode::LOCKED);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The first one finishes.
    slow.write_all(&video[500_000..]).await.unwrap();
    let mut answer = vec![0; 512];
    let n = tokio::io::AsyncReadExt::read(&mut slow, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    app.wait_queued(1).await;
    assert_eq!(app.stored_video(&job_id(&url)).await, video);
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn unfinished_uploads_count_against_quotas_and_expire_with_their_bytes() {
    let auth = Auth::start().await;
    let app = spawn_app_with(
        &auth,
        &[
            "--max-uploads-per-user",
            "1",
            "--max-stored-per-user",
            "1MiB",
            "--upload-expires",
            "2s",
            "--janitor-interval",
            "300ms",
        ],
    )
    .await;
    let user = app.user().await;
    // Larger than the room left: refused before a byte.
    let res = try_create(&app, &user, 2 << 20).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        res.text().await
    );
    let url = create(&app, &user, 600_000).await;
    assert_eq!(
        patch(&user, &url, 0, &random_bytes(300_000), None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    // It counts as an upload at once, and its whole length as stored.
    let res = try_create(&app, &user, 1000).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(app.video_chunk_count().await > 0);

    // Not continued within UPLOAD_EXPIRES: the janitor removes it and its
    // chunks, and the quota is free again.
    test_kit::wait_until(
        "the expired upload removed",
        Duration::from_secs(20),
        || async {
            (app.job_count().await == 0 && app.video_chunk_count().await == 0).then_some(())
        },
    )
    .await;
    assert_eq!(head(&user, &url).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        try_create(&app, &user, 1000).await.status(),
        StatusCode::CREATED
    );
    app.stop().await;
    auth.stop().await;
}

fn authed<T>(user: &User, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", user.token).parse().unwrap(),
    );
    req
}

fn append(job_id: &str, offset: u64, bytes: &[u8], sha256: Vec<u8>) -> Vec<AppendUploadRequest> {
    let start = AppendUploadRequest {
        payload: Some(Payload::Start(AppendStart {
            job_id: job_id.to_owned(),
            offset,
            sha256: sha256.into(),
        })),
    };
    std::iter::once(start)
        .chain(bytes.chunks(1 << 20).map(|c| AppendUploadRequest {
            payload: Some(Payload::Chunk(bytes::Bytes::copy_from_slice(c))),
        }))
        .collect()
}

#[tokio::test]
async fn grpc_clients_resume_with_get_upload_and_append_upload() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let mut media = app.media().await;
    let video = random_bytes(2_500_000);
    let upload = media
        .create_upload(authed(
            &user,
            CreateUploadRequest {
                metadata: Some(UploadMetadata {
                    filename: "talk.mp4".into(),
                    content_type: "video/mp4".into(),
                    ..Default::default()
                }),
                total_bytes: video.len() as u64,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .upload
        .unwrap();
    assert_eq!(upload.offset, 0);
    let id = upload.job_id.clone();

    let first = media
        .append_upload(authed(
            &user,
            futures::stream::iter(append(&id, 0, &video[..1_000_000], vec![])),
        ))
        .await
        .unwrap()
        .into_inner()
        .upload
        .unwrap();
    assert_eq!(first.offset, 1_000_000);
    assert!(first.job.is_none());
    let at = media
        .get_upload(authed(&user, GetUploadRequest { job_id: id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .upload
        .unwrap()
        .offset;
    assert_eq!(at, 1_000_000);
    let e = media
        .append_upload(authed(
            &user,
            futures::stream::iter(append(&id, 0, &video, vec![])),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let rest = &video[at as usize..];
    let done = media
        .append_upload(authed(
            &user,
            futures::stream::iter(append(&id, at, rest, Sha256::digest(rest).to_vec())),
        ))
        .await
        .unwrap()
        .into_inner()
        .upload
        .unwrap();
    assert_eq!(done.offset, video.len() as u64);
    assert_eq!(done.job.unwrap().job_id, id);
    app.wait_queued(1).await;
    assert_eq!(app.stored_video(&id).await, video);
    app.stop().await;
    auth.stop().await;
}
