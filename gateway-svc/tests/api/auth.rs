//! The JWT layer on both stacks, and ownership.

use crate::helpers::*;
use mp3converter_proto::media::v1::{GetJobRequest, ListJobsRequest};
use tonic::{Code, Request};

async fn rest_status(app: &TestApp, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().get(app.url(path));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

#[tokio::test]
async fn missing_garbage_and_expired_tokens_are_401_on_both_stacks() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let expired = expired_token(&user);
    let cases = [
        (None, "TOKEN_MISSING"),
        (Some("garbage"), "TOKEN_MALFORMED"),
        (Some(expired.as_str()), "TOKEN_EXPIRED"),
    ];
    for (token, reason) in cases {
        let (status, body) = rest_status(&app, "/jobs", token).await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(body["code"], "unauthenticated");
        assert_eq!(body["reason"], reason, "{body}");

        let mut req = Request::new(ListJobsRequest::default());
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let err = app.media().await.list_jobs(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(svc_kit::error::status_reason(&err).as_deref(), Some(reason));
    }
    // The REST upload is refused before its body is read.
    let res = reqwest::Client::new()
        .post(app.url("/upload"))
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(vec![0u8; 1024]).file_name("x.mkv"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(app.video_count().await, 0);
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn users_reach_only_their_own_jobs_and_mp3s() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let alice = app.user().await;
    let bob = app.user().await;
    let res = reqwest::Client::new()
        .post(app.url("/upload"))
        .bearer_auth(&alice.token)
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(random_bytes(4096)).file_name("a.mkv"),
        ))
        .send()
        .await
        .unwrap();
    let job: serde_json::Value = res.json().await.unwrap();
    let job_id = job["job_id"].as_str().unwrap();
    let mp3_id = app.put_mp3(&alice, Some(job_id), b"ID3 alice's mp3").await;

    // Alice sees hers.
    assert_eq!(
        rest_status(&app, &format!("/jobs/{job_id}"), Some(&alice.token))
            .await
            .0,
        200
    );
    let (s, _) = rest_status(&app, &format!("/download?fid={mp3_id}"), Some(&alice.token)).await;
    assert_eq!(s, 200);
    // Bob gets 404 for both, exactly as for ids that do not exist.
    for path in [format!("/jobs/{job_id}"), format!("/download?fid={mp3_id}")] {
        let (s, body) = rest_status(&app, &path, Some(&bob.token)).await;
        assert_eq!(s, 404, "{path}: {body}");
        assert_eq!(body["code"], "not_found");
    }
    let (_, list) = rest_status(&app, "/jobs", Some(&bob.token)).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);
    let mut req = Request::new(GetJobRequest {
        job_id: job_id.to_owned(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", bob.token).parse().unwrap(),
    );
    assert_eq!(
        app.media().await.get_job(req).await.unwrap_err().code(),
        Code::NotFound
    );
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn auth_service_down_is_503_never_a_pass() {
    let auth = Auth::start().await;
    // No cache, so every request asks auth-svc.
    let app = spawn_app_with(&auth, &["--auth-cache-ttl", "0s", "--auth-timeout", "1s"]).await;
    let user = app.user().await;
    assert_eq!(rest_status(&app, "/jobs", Some(&user.token)).await.0, 200);
    auth.stop().await;

    let (status, body) = rest_status(&app, "/jobs", Some(&user.token)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable");
    let mut req = Request::new(ListJobsRequest::default());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", user.token).parse().unwrap(),
    );
    assert_eq!(
        app.media().await.list_jobs(req).await.unwrap_err().code(),
        Code::Unavailable
    );
    let res = reqwest::Client::new()
        .post(app.url("/login"))
        .basic_auth(&user.email, Some(&user.password))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    app.stop().await;
}

#[tokio::test]
async fn login_takes_basic_credentials_and_answers_the_jwt() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let client = reqwest::Client::new();
    let res = client
        .post(app.url("/login"))
        .basic_auth(&user.email, Some(&user.password))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let token = res.text().await.unwrap();
    assert_eq!(rest_status(&app, "/jobs", Some(&token)).await.0, 200);

    let res = client
        .post(app.url("/login"))
        .basic_auth(&user.email, Some("wrong password"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client.post(app.url("/login")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
    app.stop().await;
    auth.stop().await;
}
