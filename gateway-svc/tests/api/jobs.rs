//! Jobs, ids, health and reflection.

use crate::helpers::*;
use std::path::PathBuf;

async fn get(app: &TestApp, path: &str, token: &str) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = res.status().as_u16();
    (s, res.json().await.unwrap_or_default())
}

#[tokio::test]
async fn jobs_are_listed_newest_first_with_pages() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let res = reqwest::Client::new()
            .post(app.url("/upload"))
            .bearer_auth(&user.token)
            .multipart(reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(random_bytes(1000)).file_name(format!("{i}.mkv")),
            ))
            .send()
            .await
            .unwrap();
        let job: serde_json::Value = res.json().await.unwrap();
        ids.push(job["job_id"].as_str().unwrap().to_owned());
    }
    let (s, page1) = get(&app, "/jobs?page_size=2", &user.token).await;
    assert_eq!(s, 200);
    let listed: Vec<&str> = page1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    let token = page1["next_page_token"].as_str().unwrap();
    let (_, page2) = get(
        &app,
        &format!("/jobs?page_size=2&page_token={token}"),
        &user.token,
    )
    .await;
    assert_eq!(page2["jobs"][0]["job_id"], ids[0].as_str());
    assert!(page2.get("next_page_token").is_none());

    let (s, job) = get(&app, &format!("/jobs/{}", ids[0]), &user.token).await;
    assert_eq!(s, 200);
    assert_eq!(job["state"], "queued");
    assert_eq!(job["filename"], "0.mkv");
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn malformed_or_unknown_ids_are_400_or_404_never_500() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let unknown = media_store::mongodb::bson::oid::ObjectId::new().to_hex();
    let cases = [
        ("/jobs/not-an-id".to_owned(), 400),
        (format!("/jobs/{unknown}"), 404),
        ("/download?fid=zzz".to_owned(), 400),
        (format!("/download?fid={unknown}"), 404),
        ("/download".to_owned(), 400),
        ("/jobs?page_token=bogus".to_owned(), 400),
    ];
    for (path, want) in cases {
        let (s, body) = get(&app, &path, &user.token).await;
        assert_eq!(s, want, "{path}: {body}");
        assert!(
            body["message"].is_string(),
            "{path}: JSON error body expected"
        );
    }
    app.stop().await;
    auth.stop().await;
}

// Runs grpcurl/curl as a blocking child process: a second worker thread
// keeps the in-process server answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_need_no_token() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    test_kit::wait_until("ready", std::time::Duration::from_secs(15), || async {
        let r = reqwest::get(app.url("/readyz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert_eq!(
        reqwest::get(app.url("/healthz")).await.unwrap().status(),
        200
    );
    let admin = reqwest::get(format!("http://{}/readyz", app.admin))
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);

    let grpcurl = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/grpcurl");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&grpcurl)
            .arg("-plaintext")
            .args(args)
            .output()
            .expect("grpcurl (scripts/stack up installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let addr = app.grpc.to_string();
    let list = run(&[&addr, "list"]);
    assert!(
        list.contains("mp3converter.media.v1.MediaService"),
        "{list}"
    );
    let desc = run(&[&addr, "describe", "mp3converter.media.v1.MediaService"]);
    assert!(desc.contains("rpc Upload ( stream"), "{desc}");
    let health = run(&[&addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    app.stop().await;
    auth.stop().await;
}
