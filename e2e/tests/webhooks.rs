#![allow(clippy::unwrap_used)]

//! Webhooks end to end: a receiver on 127.0.0.1 (the tests' mesh allows it,
//! and http://), real jobs through the whole mesh, and every message checked
//! by the Standard Webhooks reference library (PyPI `standardwebhooks`,
//! installed by scripts/stack).

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
};
use e2e::{Mesh, Rest, SAMPLE, T};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Debug, Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// `/ok` answers 204; `/flaky` 500 twice, then 200; `/moved` redirects
    /// to `/ok` (which must not be followed); `/slow` never answers in time;
    /// `/huge` answers 200 with an endless body.
    async fn start() -> (Self, SocketAddr) {
        let r = Self::default();
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, addr)
    }

    fn at(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

async fn receive(
    State(r): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = uri.path().to_owned();
    let seen = {
        let mut got = r.got.lock().unwrap();
        got.push(Received {
            path: path.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        got.iter().filter(|g| g.path == path).count()
    };
    match path.as_str() {
        "/ok" => StatusCode::NO_CONTENT.into_response(),
        "/flaky" if seen <= 2 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "/flaky" => StatusCode::OK.into_response(),
        "/moved" => (
            StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, "/ok")],
        )
            .into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        "/huge" => {
            let chunk = Bytes::from(vec![b'x'; 64 << 10]);
            let endless = futures::stream::repeat_with(move || {
                Ok::<_, std::convert::Infallible>(chunk.clone())
            });
            (StatusCode::OK, axum::body::Body::from_stream(endless)).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The reference library's verdict on each message (with `secret`).
fn verify(messages: &[(String, &Received)]) -> Vec<Value> {
    let input: Vec<Value> = messages
        .iter()
        .map(|(secret, r)| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            json!({"secret": secret, "headers": headers, "body": r.body})
        })
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = std::process::Command::new(root.join(".tools/venv/bin/python"))
        .arg(root.join("e2e/tests/support/verify_webhook.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the venv's python (scripts/stack up installs standardwebhooks)");
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "verify_webhook.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Client {
    rest: Rest,
    token: String,
}

impl Client {
    async fn new(mesh: &Mesh) -> Self {
        let (email, password) = mesh.user().await;
        let rest = Rest::new(mesh.http);
        let token = rest.login(&email, &password).await;
        Self { rest, token }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .rest
            .http
            .request(method, format!("{}{path}", self.rest.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers `url`; its id and secret.
    async fn register(&self, url: &str) -> (String, String) {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/webhooks",
                Some(json!({"url": url, "description": "e2e"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// The deliveries of endpoint `id`, once `done` says they are settled.
    async fn deliveries_when(&self, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        test_kit::wait_until(&format!("the deliveries of {id}"), T, || async {
            let (_, body) = self
                .send(
                    reqwest::Method::GET,
                    &format!("/webhooks/deliveries?webhook_id={id}"),
                    None,
                )
                .await;
            let list = body["deliveries"].as_array().cloned().unwrap_or_default();
            done(&list).then_some(list)
        })
        .await
    }
}

fn settled(list: &[Value], n: usize) -> bool {
    list.len() == n
        && list
            .iter()
            .all(|d| d["state"] == "delivered" || d["state"] == "failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_outcomes_reach_every_endpoint_signed_once_each() {
    let mesh = Mesh::start().await;
    let (receiver, addr) = Receiver::start().await;
    let alice = Client::new(&mesh).await;
    let (ok_id, ok_secret) = alice.register(&format!("http://{addr}/ok")).await;
    let (flaky_id, flaky_secret) = alice.register(&format!("http://{addr}/flaky")).await;

    // Someone else's endpoint hears nothing of alice's jobs.
    let bob = Client::new(&mesh).await;
    let (bob_id, _) = bob.register(&format!("http://{addr}/bob")).await;

    let video = mesh.sample("clip.mkv", SAMPLE);
    let job = alice
        .rest
        .upload(&alice.token, "clip.mkv", std::fs::read(&video).unwrap())
        .await;
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    let broken = alice
        .rest
        .upload(
            &alice.token,
            "broken.mkv",
            b"just some text, not a video\n".repeat(1000),
        )
        .await;
    let broken_id = broken["job_id"].as_str().unwrap().to_owned();

    let ok = alice.deliveries_when(&ok_id, |l| settled(l, 2)).await;
    let flaky = alice.deliveries_when(&flaky_id, |l| settled(l, 2)).await;
    for d in ok.iter().chain(&flaky) {
        assert_eq!(d["state"], "delivered", "{d}");
    }
    // The flaky endpoint failed twice first: retried with backoff.
    let flaky_attempts: u64 = flaky.iter().map(|d| d["attempts"].as_u64().unwrap()).sum();
    assert_eq!(flaky_attempts, 4, "{flaky:?}");
    assert!(
        ok.iter()
            .all(|d| d["attempts"] == 1 && d["response_status"] == 204)
    );

    // What arrived is what the reference library accepts, once per event
    // and endpoint (the /flaky copies repeat the same webhook-id).
    let at_ok = receiver.at("/ok");
    assert_eq!(at_ok.len(), 2);
    let at_flaky = receiver.at("/flaky");
    let verdicts = verify(
        &at_ok
            .iter()
            .map(|r| (ok_secret.clone(), r))
            .chain(at_flaky.iter().map(|r| (flaky_secret.clone(), r)))
            .collect::<Vec<_>>(),
    );
    assert!(
        verdicts.iter().all(|v| v.get("payload").is_some()),
        "{verdicts:?}"
    );
    let mut by_type: Vec<(String, Value)> = verdicts[..2]
        .iter()
        .map(|v| {
            (
                v["payload"]["type"].as_str().unwrap().to_owned(),
                v["payload"]["data"].clone(),
            )
        })
        .collect();
    by_type.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(by_type[0].0, "job.done");
    assert_eq!(by_type[0].1["job_id"], job_id.as_str());
    let mp3 = by_type[0].1["mp3_id"].as_str().unwrap();
    assert_eq!(
        by_type[0].1["download_url"],
        format!("http://{}/download?fid={mp3}", mesh.http)
    );
    assert_eq!(by_type[1].0, "job.failed");
    assert_eq!(by_type[1].1["job_id"], broken_id.as_str());
    assert!(by_type[1].1["reason"].as_str().unwrap().len() > 3);
    let ids = |rs: &[Received]| {
        let mut v: Vec<String> = rs
            .iter()
            .map(|r| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == "webhook-id")
                    .unwrap()
                    .1
                    .clone()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(
        ids(&at_ok),
        ids(&at_flaky),
        "one id per event, on every endpoint and attempt"
    );

    // A body changed on the way, or the wrong secret, is refused by the
    // reference library: the check above is not one that passes anything.
    let mut tampered = at_ok[0].clone();
    tampered.body = tampered.body.replace("job.", "jab.");
    let refused = verify(&[
        (ok_secret.clone(), &tampered),
        (flaky_secret.clone(), &at_ok[1]),
    ]);
    assert!(
        refused.iter().all(|v| v.get("error").is_some()),
        "{refused:?}"
    );

    // Bob's endpoint got nothing, and alice cannot see or touch it.
    assert!(receiver.at("/bob").is_empty());
    for (method, path) in [
        (reqwest::Method::GET, format!("/webhooks/{bob_id}")),
        (reqwest::Method::DELETE, format!("/webhooks/{bob_id}")),
        (reqwest::Method::POST, format!("/webhooks/{bob_id}/test")),
    ] {
        let (status, body) = alice.send(method.clone(), &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    let (_, listed) = alice.send(reqwest::Method::GET, "/webhooks", None).await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 2);
    assert!(
        listed.to_string().find("whsec_").is_none(),
        "secrets are shown once"
    );
    let (_, theirs) = alice
        .send(
            reqwest::Method::GET,
            &format!("/webhooks/deliveries?webhook_id={bob_id}"),
            None,
        )
        .await;
    assert_eq!(theirs["deliveries"], json!([]));

    // The janitor announcing an outcome again makes no second delivery.
    mesh.wait_notified(&job_id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.at("/ok").len(), 2);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_message_is_signed_and_failures_are_retried_then_given_up() {
    let mesh = Mesh::start().await;
    let (receiver, addr) = Receiver::start().await;
    let user = Client::new(&mesh).await;

    // The test endpoint: a webhook.test, signed like any message.
    let (ok_id, ok_secret) = user.register(&format!("http://{addr}/ok")).await;
    let (status, sent) = user
        .send(
            reqwest::Method::POST,
            &format!("/webhooks/{ok_id}/test"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    assert_eq!(sent["event_type"], "webhook.test");
    user.deliveries_when(&ok_id, |l| settled(l, 1)).await;
    let got = receiver.at("/ok");
    let v = verify(&[(ok_secret, &got[0])]);
    assert_eq!(v[0]["payload"]["type"], "webhook.test", "{v:?}");
    assert_eq!(v[0]["payload"]["data"]["webhook_id"], ok_id.as_str());

    // A redirect is not followed, a stalled endpoint times out, an endless
    // answer is cut short: each attempt is bounded. The redirect and the
    // stall fail every attempt (1 + 3 retries), then the delivery fails.
    let (moved, _) = user.register(&format!("http://{addr}/moved")).await;
    let (slow, _) = user.register(&format!("http://{addr}/slow")).await;
    let (huge, _) = user.register(&format!("http://{addr}/huge")).await;
    for id in [&moved, &slow, &huge] {
        let (status, _) = user
            .send(reqwest::Method::POST, &format!("/webhooks/{id}/test"), None)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let m = user.deliveries_when(&moved, |l| settled(l, 1)).await;
    assert_eq!(m[0]["state"], "failed", "{m:?}");
    assert_eq!(m[0]["attempts"], 4);
    assert_eq!(m[0]["response_status"], 307);
    assert!(
        m[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed")
    );
    assert_eq!(receiver.at("/moved").len(), 4);
    assert_eq!(receiver.at("/ok").len(), 1, "the redirect was not followed");
    // Its message is dead-lettered; an operator's replay attempts it again.
    let url = svc_kit::config::Secret::new(mesh.stack.amqp_url.clone());
    let dlq = format!("{}.dlq", mesh.webhook_queue);
    let due = format!("due-{}", m[0]["id"].as_str().unwrap());
    test_kit::wait_until("the dead letter", T, || async {
        let l = amqp_kit::dlq::list(&url, &dlq, 100).await.ok()?;
        let mine = l
            .iter()
            .filter(|d| d.message_id.as_deref() == Some(due.as_str()));
        (mine.count() == 1).then_some(())
    })
    .await;
    let replayed = amqp_kit::dlq::replay(&url, &dlq, &mesh.webhook_queue, Some(&due))
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    user.deliveries_when(&moved, |l| l[0]["attempts"].as_u64() > Some(4))
        .await;
    let s = user.deliveries_when(&slow, |l| settled(l, 1)).await;
    assert_eq!(s[0]["state"], "failed", "{s:?}");
    assert!(
        s[0]["last_error"].as_str().unwrap().contains("timed out"),
        "{s:?}"
    );
    let h = user.deliveries_when(&huge, |l| settled(l, 1)).await;
    assert_eq!(h[0]["state"], "delivered", "{h:?}");

    // A deleted endpoint is gone, and so is its log.
    let (status, _) = user
        .send(reqwest::Method::DELETE, &format!("/webhooks/{moved}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = user
        .send(reqwest::Method::GET, &format!("/webhooks/{moved}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_would_reach_inside_are_refused() {
    let mesh = Mesh::start().await;
    let user = Client::new(&mesh).await;
    // 127.0.0.1 is allowed here (the tests' receivers); nothing else inside.
    for url in [
        "http://127.0.0.2:8080/",
        "http://[::1]:8080/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.10/",
        "http://0x7f000002/",
        "gopher://127.0.0.1/",
        "http://user:pw@127.0.0.1/",
        "not a url",
    ] {
        let (status, body) = user
            .send(
                reqwest::Method::POST,
                "/webhooks",
                Some(json!({"url": url})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["code"], "invalid_argument", "{url}: {body}");
    }
    let (status, _) = user
        .send(
            reqwest::Method::POST,
            "/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/", "description": "a\u{0}b"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // At most MAX_WEBHOOKS_PER_USER (10) each.
    for _ in 0..10 {
        user.register("http://127.0.0.1:9/").await;
    }
    let (status, body) = user
        .send(
            reqwest::Method::POST,
            "/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/"})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    mesh.stop().await;
}
