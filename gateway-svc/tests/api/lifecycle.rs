//! A job's life beyond the upload: its options, deletion, quotas, live
//! watchers on any replica, shutdown mid-upload, and the janitor that makes
//! sure every job ends and nothing is kept that should not be.

use crate::helpers::*;
use media_store::{
    Job, JobState,
    mongodb::bson::{Binary, Document, doc, oid::ObjectId, spec::BinarySubtype},
};
use mp3converter_proto::{
    EventType,
    events::v1::{ConversionFailed, FailureKind, Mp3Ready, UserNotified},
    media::v1::{
        self as pb, DeleteJobRequest, OutputOptions, UploadMetadata, UploadRequest,
        WatchJobsRequest, upload_request::Payload, watch_jobs_response::Event,
    },
};
use std::time::{Duration, SystemTime};
use tonic::{Code, Request};

fn authed<T>(user: &User, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", user.token).parse().unwrap(),
    );
    req
}

/// A multipart form of option fields, then the file.
fn form(fields: &[(&str, &str)], name: &str, bytes: Vec<u8>) -> reqwest::multipart::Form {
    let mut f = reqwest::multipart::Form::new();
    for (k, v) in fields {
        f = f.text(k.to_string(), v.to_string());
    }
    f.part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
    )
}

async fn upload(
    app: &TestApp,
    user: &User,
    form: reqwest::multipart::Form,
) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .post(app.url("/upload"))
        .bearer_auth(&user.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

async fn delete(app: &TestApp, user: &User, id: &str) -> u16 {
    reqwest::Client::new()
        .delete(app.url(&format!("/jobs/{id}")))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_job_is_deleted_with_its_files_by_its_owner_only_and_again_harmlessly() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let (owner, other) = (app.user().await, app.user().await);
    let (s, job) = upload(&app, &owner, form(&[], "clip.mkv", random_bytes(5000))).await;
    assert_eq!(s, 200);
    let id = job["job_id"].as_str().unwrap().to_owned();
    let mp3 = app.put_mp3(&owner, Some(&id), &random_bytes(3000)).await;

    assert_eq!(
        delete(&app, &other, &id).await,
        404,
        "someone else's is not found"
    );
    assert_eq!(app.video_count().await, 1);
    assert_eq!(delete(&app, &owner, &id).await, 204);
    assert_eq!(delete(&app, &owner, &id).await, 204, "again: still fine");
    let get = |path: String| {
        let token = owner.token.clone();
        async move {
            reqwest::Client::new()
                .get(path)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(app.url(&format!("/jobs/{id}"))).await, 404);
    assert_eq!(get(app.url(&format!("/download?fid={mp3}"))).await, 404);
    assert_eq!(app.video_count().await, 0, "the video is gone");
    assert_eq!(app.video_chunk_count().await, 0);
    let (_, list) = {
        let res = reqwest::Client::new()
            .get(app.url("/jobs"))
            .bearer_auth(&owner.token)
            .send()
            .await
            .unwrap();
        (res.status(), res.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);

    // The same over gRPC.
    let mut media = app.media().await;
    let err = media
        .delete_job(authed(
            &owner,
            DeleteJobRequest {
                job_id: ObjectId::new().to_hex(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = media
        .delete_job(authed(
            &owner,
            DeleteJobRequest {
                job_id: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    media
        .delete_job(authed(&owner, DeleteJobRequest { job_id: id }))
        .await
        .unwrap();
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn output_options_are_checked_before_a_byte_is_stored_and_kept_on_the_job() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let fields = [
        ("bitrate", "128"),
        ("channels", "mono"),
        ("sample_rate", "48000"),
        ("trim_start", "1.5"),
        ("trim_end", "9"),
    ];
    let (s, job) = upload(&app, &user, form(&fields, "talk.mp4", random_bytes(2000))).await;
    assert_eq!(s, 200, "{job}");
    assert_eq!(
        job["options"],
        serde_json::json!({ "bitrate_kbps": 128, "channels": "mono", "sample_rate": "48000", "trim_start": 1.5, "trim_end": 9.0 })
    );
    let (_, plain) = upload(&app, &user, form(&[], "plain.mp4", random_bytes(2000))).await;
    assert_eq!(
        plain["options"],
        serde_json::json!({ "quality": 2, "channels": "source", "sample_rate": "source" })
    );
    assert_eq!(app.video_count().await, 2);

    for (fields, field, words) in [
        (vec![("bitrate", "32")], "bitrate", vec!["64", "320"]),
        (vec![("quality", "10")], "quality", vec!["0", "9"]),
        (
            vec![("bitrate", "128"), ("quality", "2")],
            "bitrate",
            vec!["not both"],
        ),
        (
            vec![("channels", "quad")],
            "channels",
            vec!["mono", "stereo"],
        ),
        (
            vec![("sample_rate", "22050")],
            "sample_rate",
            vec!["44100", "48000"],
        ),
        (
            vec![("trim_start", "5"), ("trim_end", "4")],
            "trim_end",
            vec!["after"],
        ),
        (vec![("trim_start", "-1")], "trim_start", vec![">= 0"]),
    ] {
        let (s, err) = upload(&app, &user, form(&fields, "x.mp4", random_bytes(2000))).await;
        assert_eq!(s, 400, "{fields:?}: {err}");
        let msg = err["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}:")), "{msg}");
        for w in words {
            assert!(msg.contains(w), "{msg} lacks {w}");
        }
    }
    // A field after the file cannot be honoured: refused, nothing kept.
    let late = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(random_bytes(2000)).file_name("late.mp4"),
        )
        .text("bitrate", "128");
    let (s, err) = upload(&app, &user, late).await;
    assert_eq!(s, 400);
    assert!(
        err["message"].as_str().unwrap().contains("before the file"),
        "{err}"
    );
    assert_eq!(
        app.video_count().await,
        2,
        "nothing stored for refused uploads"
    );

    // gRPC: the options in the metadata, checked the same way.
    let mut media = app.media().await;
    let bad = UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: "x.mp4".into(),
            options: Some(OutputOptions {
                encoding: Some(pb::output_options::Encoding::Quality(12)),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let err = media
        .upload(authed(&user, futures::stream::iter([bad])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("quality:"), "{}", err.message());
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn quotas_refuse_with_the_quota_named_and_keep_nothing() {
    let auth = Auth::start().await;
    let app = spawn_app_with(
        &auth,
        &[
            "--max-waiting-jobs-per-user",
            "1",
            "--max-stored-per-user",
            "8KiB",
            "--max-uploads-per-user",
            "1",
        ],
    )
    .await;
    // Jobs waiting: no converter runs, so the first stays queued.
    let a = app.user().await;
    assert_eq!(
        upload(&app, &a, form(&[], "1.mkv", random_bytes(1000)))
            .await
            .0,
        200
    );
    let (s, err) = upload(&app, &a, form(&[], "2.mkv", random_bytes(1000))).await;
    assert_eq!(s, 429, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("at most 1 jobs may wait"),
        "{err}"
    );

    // Bytes stored: over the quota mid-upload is stopped and removed.
    let b = app.user().await;
    let (s, err) = upload(&app, &b, form(&[], "big.mkv", random_bytes(20_000))).await;
    assert_eq!(s, 429, "{err}");
    assert!(err["message"].as_str().unwrap().contains("8 KiB"), "{err}");
    // ...and one declared over it is refused before a byte is sent.
    let mut media = app.media().await;
    let declared = UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: "big.mkv".into(),
            declared_size_bytes: Some(1 << 20),
            ..Default::default()
        })),
    };
    let err = media
        .upload(authed(&b, futures::stream::iter([declared])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    // Uploads at once: a second one while the first is still streaming.
    let c = app.user().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(4);
    tx.send(UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: "slow.mkv".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    tx.send(UploadRequest {
        payload: Some(Payload::Chunk(random_bytes(1000).into())),
    })
    .await
    .unwrap();
    let mut slow_client = app.media().await;
    let req = authed(&c, tokio_stream::wrappers::ReceiverStream::new(rx));
    let slow = tokio::spawn(async move { slow_client.upload(req).await });
    test_kit::wait_until(
        "the slow upload to be recorded",
        Duration::from_secs(10),
        || async {
            app.all_jobs()
                .await
                .iter()
                .any(|j| j.state == JobState::Uploading)
                .then_some(())
        },
    )
    .await;
    let (s, err) = upload(&app, &c, form(&[], "second.mkv", random_bytes(1000))).await;
    assert_eq!(s, 429, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("at most 1 uploads at once"),
        "{err}"
    );
    drop(tx); // the slow upload ends without a commit: discarded
    let res = slow.await.unwrap();
    assert_eq!(res.unwrap_err().code(), Code::Aborted);
    test_kit::wait_until(
        "the aborted upload to be gone",
        Duration::from_secs(10),
        || async {
            app.all_jobs()
                .await
                .iter()
                .all(|j| j.state != JobState::Uploading)
                .then_some(())
        },
    )
    .await;
    assert_eq!(app.video_count().await, 1, "only a's first upload is kept");
    app.stop().await;
    auth.stop().await;
}

/// Reads Server-Sent Events from a streaming response until `want` holds of
/// the (event, data) pairs seen so far.
async fn sse_until(
    res: &mut reqwest::Response,
    seen: &mut Vec<(String, serde_json::Value)>,
    want: impl Fn(&[(String, serde_json::Value)]) -> bool,
) {
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !want(seen) {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .unwrap_or_else(|_| panic!("no such events in time; saw {seen:?}"))
            .unwrap()
            .expect("the event stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !event.is_empty() {
                seen.push((event, serde_json::from_str(&data).unwrap_or_default()));
            }
        }
    }
}

#[tokio::test]
async fn watchers_on_any_replica_see_every_change_of_their_own_jobs() {
    let auth = Auth::start().await;
    let db = test_kit::unique_name("gw").replace('-', "_");
    let queue = test_kit::unique_name("video");
    let exchange = test_kit::unique_name("job-events");
    let args = ["--job-events-exchange", exchange.as_str()];
    let a = spawn_app_on(&auth, &db, &queue, &args).await;
    let b = spawn_app_on(&auth, &db, &queue, &args).await;
    let (user, stranger) = (a.user().await, a.user().await);
    tokio::time::sleep(Duration::from_millis(500)).await; // both listening

    // gRPC on replica b; Server-Sent Events on replica a.
    let mut watch = b
        .media()
        .await
        .watch_jobs(authed(&user, WatchJobsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut sse = reqwest::Client::new()
        .get(a.url("/jobs/events"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut strangers = b
        .media()
        .await
        .watch_jobs(authed(&stranger, WatchJobsRequest::default()))
        .await
        .unwrap()
        .into_inner();

    // Uploaded through a: both watchers see it queued.
    let (s, job) = upload(&a, &user, form(&[], "live.mkv", random_bytes(1000))).await;
    assert_eq!(s, 200);
    let id = job["job_id"].as_str().unwrap().to_owned();
    match next(&mut watch).await {
        Event::Job(j) => {
            assert_eq!(j.job_id, id);
            assert_eq!(j.state, pb::JobState::Queued as i32);
        }
        other => panic!("{other:?}"),
    }
    let mut seen = Vec::new();
    sse_until(&mut sse, &mut seen, |s| {
        s.iter()
            .any(|(e, d)| e == "job" && d["job_id"] == id.as_str())
    })
    .await;

    // A converter's progress (any replica's listener hears it) and the
    // deletion through b reach both.
    let mut changed: Job = a
        .jobs
        .get(ObjectId::parse_str(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    changed.state = JobState::Converting;
    changed.progress = Some(42.0);
    changed.updated_at = SystemTime::now();
    publish_change(&a, &exchange, &changed).await;
    match next(&mut watch).await {
        Event::Job(j) => assert_eq!(j.progress_percent, Some(42.0)),
        other => panic!("{other:?}"),
    }
    assert_eq!(delete(&b, &user, &id).await, 204);
    match next(&mut watch).await {
        Event::DeletedJobId(d) => assert_eq!(d, id),
        other => panic!("{other:?}"),
    }
    sse_until(&mut sse, &mut seen, |s| {
        s.iter().any(|(e, d)| e == "job" && d["progress"] == 42.0)
            && s.iter()
                .any(|(e, d)| e == "deleted" && d["job_id"] == id.as_str())
    })
    .await;

    // Nothing of it reached the other user.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), strangers.message())
            .await
            .is_err(),
        "a stranger saw someone else's job"
    );
    // A watcher arriving later starts with the current state.
    let (_, again) = upload(&b, &user, form(&[], "second.mkv", random_bytes(1000))).await;
    let mut late = a
        .media()
        .await
        .watch_jobs(authed(&user, WatchJobsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    match next(&mut late).await {
        Event::Job(j) => assert_eq!(j.job_id, again["job_id"].as_str().unwrap()),
        other => panic!("{other:?}"),
    }
    drop((watch, late, strangers, sse));
    b.shutdown().await;
    a.stop().await;
    auth.stop().await;
}

/// The next event of a watch stream.
async fn next(w: &mut tonic::Streaming<pb::WatchJobsResponse>) -> Event {
    tokio::time::timeout(Duration::from_secs(20), w.message())
        .await
        .expect("a change in time")
        .unwrap()
        .unwrap()
        .event
        .unwrap()
}

/// Publishes a job change as a converter would.
async fn publish_change(app: &TestApp, exchange: &str, job: &Job) {
    let b = amqp_kit::broadcast::Broadcaster::start(
        svc_kit::config::Secret::new(app.stack.amqp_url.clone()),
        "test-converter",
        exchange,
    );
    b.send(
        mp3converter_proto::events::v1::JobChanged::TYPE,
        prost::Message::encode_to_vec(&media_store::proto::job_changed(job, false)),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_gateway_stopped_mid_upload_leaves_nothing_behind() {
    let auth = Auth::start().await;
    let app = spawn_app_with(&auth, &["--shutdown-grace", "1s"]).await;
    let user = app.user().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(4);
    tx.send(UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: "interrupted.mkv".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    for _ in 0..3 {
        tx.send(UploadRequest {
            payload: Some(Payload::Chunk(random_bytes(1 << 20).into())),
        })
        .await
        .unwrap();
    }
    let mut media = app.media().await;
    let req = authed(&user, tokio_stream::wrappers::ReceiverStream::new(rx));
    let call = tokio::spawn(async move { media.upload(req).await });
    test_kit::wait_until("chunks stored", Duration::from_secs(10), || async {
        (app.video_chunk_count().await > 0).then_some(())
    })
    .await;
    // SIGTERM, with the client still sending: after the grace period the
    // upload is aborted and cleaned up before the process exits.
    let stopped = app.shutdown().await;
    for c in ["videos.chunks", "videos.files"] {
        let n = stopped
            .store
            .db
            .collection::<Document>(c)
            .count_documents(doc! {})
            .await
            .unwrap();
        assert_eq!(n, 0, "nothing left in {c}");
    }
    assert!(stopped.jobs.all().await.unwrap().is_empty(), "no job left");
    drop(tx);
    let _ = call.await;
    stopped.remove().await;
    auth.stop().await;
}

#[tokio::test]
async fn the_gridfs_and_job_indexes_exist() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let names = |c: &str| {
        let coll = app.store.db.collection::<Document>(c);
        async move { coll.list_index_names().await.unwrap() }
    };
    for bucket in ["videos", "mp3s"] {
        assert!(
            names(&format!("{bucket}.chunks"))
                .await
                .contains(&"files_id_1_n_1".to_owned())
        );
        assert!(
            names(&format!("{bucket}.files"))
                .await
                .contains(&"filename_1_uploadDate_1".to_owned())
        );
    }
    assert!(
        names("mp3s.files")
            .await
            .contains(&"one_mp3_per_video".to_owned())
    );
    app.stop().await;
    auth.stop().await;
}

/// A job document as another service (or an earlier crash) left it.
fn job_in(user: &User, state: JobState, updated: SystemTime) -> Job {
    let mut j = Job::uploading(
        ObjectId::new(),
        &user.id,
        &user.email,
        "x.mkv",
        "video/x-matroska",
        Default::default(),
    );
    j.state = state;
    j.size_bytes = 100;
    j.updated_at = updated;
    j.created_at = updated;
    if state == JobState::Converting {
        // A converter that died.
        j.lease_holder = Some("a-dead-converter".into());
        j.lease_until = Some(updated);
    }
    j
}

/// Chunks of video `files_id`, in its bucket.
async fn put_chunks(app: &TestApp, files_id: ObjectId, written: SystemTime, n: u32) {
    let secs = u32::try_from(
        written
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    for i in 0..n {
        // A chunk id says when it was written: the orphan sweep goes by it.
        let mut id = ObjectId::new().bytes();
        id[..4].copy_from_slice(&secs.to_be_bytes());
        app.store
            .video_files
            .chunks
            .insert_one(doc! {
                "_id": ObjectId::from_bytes(id),
                "files_id": files_id,
                "n": i,
                "data": Binary { subtype: BinarySubtype::Generic, bytes: vec![1; 10] },
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_janitor_ends_every_job_and_removes_what_is_not_wanted() {
    let auth = Auth::start().await;
    let mp3_queue = test_kit::unique_name("mp3");
    let app = spawn_app_with(
        &auth,
        &[
            "--janitor-interval",
            "300ms",
            "--stuck-after",
            "0s",
            "--max-republish",
            "1",
            "--upload-stale-after",
            "1s",
            "--orphan-age",
            "60s",
            "--orphan-interval",
            "300ms",
            "--mp3-queue",
            &mp3_queue,
        ],
    )
    .await;
    let user = app.user().await;
    let long_ago = SystemTime::now() - Duration::from_secs(3600);

    // A job whose message was lost: re-published once, then failed and the
    // user told.
    let stuck = job_in(&user, JobState::Queued, long_ago);
    app.jobs.insert(&stuck).await.unwrap();
    // A job its converter died converting, whose redeliveries ran out.
    let mut dead = job_in(&user, JobState::Converting, long_ago);
    dead.republished = 1;
    app.jobs.insert(&dead).await.unwrap();
    // An upload whose gateway died: removed with its chunks.
    let abandoned = job_in(&user, JobState::Uploading, long_ago);
    app.jobs.insert(&abandoned).await.unwrap();
    put_chunks(&app, abandoned.id, long_ago, 3).await;
    // An MP3 past its retention: removed with its job.
    let mut expired = job_in(&user, JobState::Done, long_ago);
    expired.expires_at = Some(long_ago);
    expired.notified = true;
    let mp3 = app.put_mp3(&user, None, &random_bytes(100)).await;
    expired.mp3_id = Some(ObjectId::parse_str(&mp3).unwrap());
    app.jobs.insert(&expired).await.unwrap();
    app.store
        .mp3_files
        .files
        .update_one(
            doc! { "_id": expired.mp3_id.unwrap() },
            doc! { "$set": { "metadata.video_id": expired.id } },
        )
        .await
        .unwrap();
    // Finished jobs whose converter could not delete their sources: deleted
    // (in one query per collection).
    let mut sourced = Vec::new();
    for _ in 0..3 {
        let mut job = job_in(&user, JobState::Done, long_ago);
        job.mp3_id = Some(ObjectId::new());
        job.notified = true;
        app.jobs.insert(&job).await.unwrap();
        put_chunks(&app, job.id, long_ago, 2).await;
        app.store
            .video_files
            .files
            .insert_one(doc! { "_id": job.id, "length": 2i64, "chunkSize": 1, "uploadDate": media_store::mongodb::bson::DateTime::from_system_time(long_ago), "filename": "v.mp4" })
            .await
            .unwrap();
        sourced.push(job.id);
    }
    // Chunks of uploads that died with the GridFS server, old and recent.
    let (old_orphan, young) = (ObjectId::new(), ObjectId::new());
    put_chunks(&app, old_orphan, long_ago, 2).await;
    put_chunks(&app, young, SystemTime::now(), 2).await;

    let mut outcomes: Vec<(String, Vec<u8>)> = Vec::new();
    let mut republished = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        republished += app.messages_in(&app.queue).await.len();
        outcomes.extend(app.messages_in(&mp3_queue).await);
        let jobs = app.all_jobs().await;
        let state = |id: ObjectId| jobs.iter().find(|j| j.id == id).map(|j| j.state);
        if state(stuck.id) == Some(JobState::Failed)
            && state(dead.id) == Some(JobState::Failed)
            && state(abandoned.id).is_none()
            && state(expired.id) == Some(JobState::Deleted)
            && outcomes.len() >= 2
            && app.video_chunk_count().await == 2
            && sourced
                .iter()
                .all(|id| jobs.iter().any(|j| j.id == *id && j.source_deleted))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the janitor did not finish: {jobs:?} {outcomes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(republished >= 1, "re-published before giving up");
    for id in &sourced {
        assert!(
            app.store
                .videos
                .find_one(doc! { "_id": id })
                .await
                .unwrap()
                .is_none(),
            "the sources' files documents are gone with their chunks"
        );
    }
    let failed: Vec<ConversionFailed> = outcomes
        .iter()
        .filter(|(k, _)| k == ConversionFailed::TYPE)
        .map(|(_, d)| <ConversionFailed as prost::Message>::decode(d.as_slice()).unwrap())
        .collect();
    let mut told: Vec<String> = failed.iter().map(|f| f.job_id.clone()).collect();
    told.sort();
    let mut want = vec![stuck.id.to_hex(), dead.id.to_hex()];
    want.sort();
    assert_eq!(told, want, "each user told once: {failed:?}");
    assert!(
        failed
            .iter()
            .all(|f| f.kind == FailureKind::TimedOut as i32),
        "{failed:?}"
    );
    assert!(
        app.store
            .mp3s
            .find_one(doc! { "_id": expired.mp3_id.unwrap() })
            .await
            .unwrap()
            .is_none(),
        "the expired MP3 is gone"
    );
    let left: Vec<Document> = futures::TryStreamExt::try_collect(
        app.store.video_files.chunks.find(doc! {}).await.unwrap(),
    )
    .await
    .unwrap();
    assert!(
        left.iter()
            .all(|c| c.get_object_id("files_id").unwrap() == young),
        "only the recent orphan's chunks remain (an upload may still write them)"
    );
    let topology = app.topology.clone();
    app.stop().await;
    delete_queue_like(&topology, &mp3_queue).await;
    auth.stop().await;
}

/// The end-to-end check on the emails: an outcome whose receipt never comes
/// back (lost between the `mp3` queue and the inbox) is announced again, a
/// bounded number of times; a receipt settles a job for good.
#[tokio::test]
async fn an_outcome_without_a_receipt_is_announced_again_until_one_comes() {
    let auth = Auth::start().await;
    let mp3_queue = test_kit::unique_name("mp3");
    let app = spawn_app_with(
        &auth,
        &[
            "--janitor-interval",
            "200ms",
            "--unnotified-after",
            "1s",
            "--max-reannounce",
            "2",
            "--mp3-queue",
            &mp3_queue,
        ],
    )
    .await;
    let user = app.user().await;
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    let announced = |mut j: Job, at: SystemTime| {
        j.mp3_id = Some(ObjectId::new());
        j.announced_at = Some(at);
        j.notified = false;
        j
    };
    // Its email went out (the receipt comes back): never announced again.
    // (Announced "in an hour" until its receipt is in, so the janitor cannot
    // get to it first on a slow machine.)
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    let told = announced(job_in(&user, JobState::Done, long_ago), in_an_hour);
    app.jobs.insert(&told).await.unwrap();
    publish_receipt(&app, &told).await;
    test_kit::wait_until("the receipt recorded", T, || async {
        let j = app.jobs.get(told.id).await.unwrap()?;
        j.notified.then_some(())
    })
    .await;
    app.sql(
        "UPDATE jobs SET announced_at = $2 WHERE id = $1",
        &[&told.id.to_hex(), &long_ago],
    )
    .await;
    // Its message was lost: announced twice more, then given up on.
    let lost = announced(job_in(&user, JobState::Done, long_ago), long_ago);
    app.jobs.insert(&lost).await.unwrap();

    let mut outcomes: Vec<(String, Vec<u8>)> = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        outcomes.extend(app.messages_in(&mp3_queue).await);
        let j = app.jobs.get(lost.id).await.unwrap().unwrap();
        if j.reannounced == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not given up on: {j:?} {outcomes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A round or two more: nothing else goes out.
    tokio::time::sleep(Duration::from_millis(600)).await;
    outcomes.extend(app.messages_in(&mp3_queue).await);
    let ids: Vec<String> = outcomes
        .iter()
        .map(|(kind, d)| {
            assert_eq!(kind, Mp3Ready::TYPE);
            <Mp3Ready as prost::Message>::decode(d.as_slice())
                .unwrap()
                .event_id
        })
        .collect();
    let same = format!("mp3ready-{}", lost.id.to_hex());
    assert_eq!(ids, vec![same.clone(), same], "the same event id each time");

    // Its receipt comes late after all: recorded.
    publish_receipt(&app, &lost).await;
    test_kit::wait_until("the late receipt recorded", T, || async {
        let j = app.jobs.get(lost.id).await.unwrap()?;
        j.notified.then_some(())
    })
    .await;
    let topology = app.topology.clone();
    app.stop().await;
    delete_queue_like(&topology, &mp3_queue).await;
}

const T: Duration = Duration::from_secs(20);

async fn publish_receipt(app: &TestApp, job: &Job) {
    let outcome = format!("mp3ready-{}", job.id.to_hex());
    let receipt = UserNotified {
        event_id: format!("notified-{outcome}"),
        job_id: job.id.to_hex(),
        outcome_event_id: outcome,
        result: "sent".into(),
        occur_time: None,
    };
    // Declares the receipts queue as the gateway's consumer does: that
    // consumer may not have declared it yet, and a publish before then would
    // come back unroutable.
    let queue = notified_queue(&app.queue);
    amqp_kit::Publisher::with_topology(
        svc_kit::config::Secret::new(app.stack.amqp_url.as_str()),
        "gateway-tests",
        Duration::from_secs(10),
        vec![amqp_kit::WorkQueue {
            name: queue.clone(),
            ..app.topology.clone()
        }],
    )
    .publish_event(&queue, &receipt.event_id, &receipt)
    .await
    .unwrap();
}

/// Deletes a work queue declared with the same arguments as `like`.
async fn delete_queue_like(like: &amqp_kit::WorkQueue, name: &str) {
    let q = amqp_kit::WorkQueue {
        name: name.to_owned(),
        ..like.clone()
    };
    let stack = test_kit::Stack::from_env();
    test_kit::delete_work_queues(&stack.amqp_url, &[q]).await;
}
