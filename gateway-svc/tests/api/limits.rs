//! Every door has a timeout and a limit: slow clients, floods of connections
//! and requests, hostile methods and paths, dependencies that die.

use crate::helpers::*;
use mp3converter_proto::media::v1::{
    ListJobsRequest, UploadMetadata, UploadRequest, upload_request::Payload,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request};

fn authed<T>(user: &User, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", user.token).parse().unwrap(),
    );
    req
}

/// Reads what the server says until it closes the connection (or `limit`).
async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    limit: Duration,
) -> (String, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

#[tokio::test]
async fn slow_headers_and_silent_bodies_are_cut_off() {
    let auth = Auth::start().await;
    let app = spawn_app_with(
        &auth,
        &["--header-read-timeout", "1s", "--body-idle-timeout", "1s"],
    )
    .await;
    let user = app.user().await;

    // Slowloris: a header line trickling in, never finished.
    let (mut r, mut w) = tokio::net::TcpStream::connect(app.http)
        .await
        .unwrap()
        .into_split();
    w.write_all(b"GET /jobs HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if w.write_all(b"X").await.is_err() {
                break;
            }
        }
    });
    let (answer, took) = read_until_closed(&mut r, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"code\":\"deadline_exceeded\""),
        "{answer}"
    );
    trickle.abort();

    // A client that connects and says nothing: the same answer.
    let mut s = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let (answer, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A head that arrives in pieces, in time, is served as usual.
    let mut s = tokio::net::TcpStream::connect(app.http).await.unwrap();
    for piece in [
        "GET /healthz HT",
        "TP/1.1\r\nHost: x\r\n",
        "Connection: close\r\n\r\n",
    ] {
        s.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A kept-alive connection: its second head begun and never finished is
    // answered 408 too; one that stays idle is closed without an answer.
    for (second, answered) in [("GET /healthz HTTP/1.1\r\nHo", true), ("", false)] {
        let mut s = tokio::net::TcpStream::connect(app.http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = Vec::new();
        while !first.ends_with(b"\r\n\r\nok") {
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&first));
            first.extend_from_slice(&buf[..n]);
        }
        assert!(first.starts_with(b"HTTP/1.1 200"));
        s.write_all(second.as_bytes()).await.unwrap();
        let (answer, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(4), "closed after {took:?}");
        if answered {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        } else {
            assert_eq!(answer, "");
        }
    }

    // A body that stops: 408, and nothing kept.
    let mut s = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.mkv\"\r\n\r\nabc",
        user.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (answer, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"code\":\"deadline_exceeded\""),
        "{answer}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    eventually_empty(&app).await;

    // The same over gRPC: an upload stream that goes silent.
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(2);
    tx.send(UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: "silent.mkv".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut media = app.media().await;
    let err = media
        .upload(authed(
            &user,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    drop(tx);
    eventually_empty(&app).await;
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn connections_and_requests_beyond_the_limits_are_refused_not_queued() {
    let auth = Auth::start().await;
    let app = spawn_app_with(
        &auth,
        &["--max-connections", "2", "--max-requests-in-flight", "1"],
    )
    .await;
    let user = app.user().await;

    // Two connections held open: a third is answered 503 at once.
    let _a = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let _b = tokio::net::TcpStream::connect(app.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let (answer, _) = read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    drop((_a, _b));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // One request in flight (an upload held open): the next is 503 JSON.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    tx.send(Ok(bytes::Bytes::from_static(
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"held.mkv\"\r\n\r\nabc",
    )))
    .await
    .unwrap();
    let held = tokio::spawn({
        let url = app.url("/upload");
        let token = user.token.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .header("content-type", "multipart/form-data; boundary=B")
                .body(reqwest::Body::wrap_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let res = reqwest::Client::new()
        .get(app.url("/jobs"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
    drop(tx);
    let _ = held.await;
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn unary_calls_have_a_deadline_and_streams_do_not() {
    let auth = Auth::start().await;
    // A deadline no query can meet: the jobs table is locked while the call
    // runs (as a long migration or a stuck transaction would hold it).
    let app = spawn_app_with(&auth, &["--request-timeout", "300ms"]).await;
    let user = app.user().await;
    let mut blocker = app.jobs.pool().get().await.unwrap();
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let err = app
        .media()
        .await
        .list_jobs(authed(&user, ListJobsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    let res = reqwest::Client::new()
        .get(app.url("/jobs"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504, "the REST edge passes it on");
    lock.commit().await.unwrap();
    // An upload (a stream) is not cut by it.
    let res = reqwest::Client::new()
        .post(app.url("/upload"))
        .bearer_auth(&user.token)
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(random_bytes(3 << 20)).file_name("big.mkv"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn metrics_do_not_grow_with_what_clients_send() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let http = reqwest::Client::new();
    let series = || async {
        let text = http
            .get(format!("http://{}/metrics", app.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Each series by name and labels, without its value.
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                l.rsplit_once(' ')
                    .map_or(l, |(series, _)| series)
                    .to_owned()
            })
            .collect::<std::collections::BTreeSet<String>>()
    };
    // One of each kind first, so every label value that may exist does.
    let hostile = |i: usize| {
        let http = http.clone();
        let base = format!("http://{}", app.http);
        async move {
            let method = reqwest::Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
            let _ = http.request(method, format!("{base}/jobs")).send().await;
            let _ = http.get(format!("{base}/random/{i}/path")).send().await;
            let _ = http.post(format!("{base}/jobs/{i}")).send().await;
        }
    };
    let grpc_junk = |i: usize| {
        let addr = app.grpc;
        async move {
            let mut client = tonic::client::Grpc::new(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
            client.ready().await.unwrap();
            let path: http::uri::PathAndQuery =
                format!("/evil.Service{i}/Method{i}").parse().unwrap();
            let _ = client
                .unary::<(), (), _>(Request::new(()), path, tonic_prost::ProstCodec::default())
                .await;
        }
    };
    hostile(0).await;
    grpc_junk(0).await;
    let before = series().await;
    for i in 1..=1000 {
        hostile(i).await;
    }
    for i in 1..=50 {
        grpc_junk(i).await;
    }
    let after = series().await;
    // The service's own background work (consumers, the janitor) may add a
    // series of its own meanwhile; what clients sent must add none, and the
    // count must not follow the 1050 requests.
    let new: Vec<&String> = after.difference(&before).collect();
    let followed_by_digit = |s: &str, p: &str| {
        s.match_indices(p)
            .any(|(i, _)| s[i + p.len()..].starts_with(|c: char| c.is_ascii_digit()))
    };
    let from_clients = |s: &str| {
        s.contains("evil")
            || s.contains("random")
            || followed_by_digit(s, "\"M")
            || followed_by_digit(s, "/jobs/")
    };
    assert!(
        new.len() <= 3 && !new.iter().any(|s| from_clients(s)),
        "1000 hostile methods and paths grew the metrics: {new:?}"
    );
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn readiness_follows_a_dead_dependency_within_two_seconds() {
    let auth = Auth::start().await;
    let stack = test_kit::Stack::from_env();
    let mongo = stack
        .mongodb_uri
        .trim_start_matches("mongodb://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = test_kit::proxy::Proxy::start(&mongo).await;
    let uri = format!("mongodb://{}/", proxy.addr);
    let app = spawn_app_with(
        &auth,
        &["--mongodb-uri", &uri, "--health-interval", "500ms"],
    )
    .await;
    let ready = || async {
        reqwest::get(format!("http://{}/readyz", app.admin))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    test_kit::wait_until("ready", Duration::from_secs(10), || async {
        (ready().await == 200).then_some(())
    })
    .await;
    proxy.down();
    let t = Instant::now();
    test_kit::wait_until("not ready", Duration::from_secs(10), || async {
        (ready().await == 503).then_some(())
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        t.elapsed()
    );
    proxy.up();
    test_kit::wait_until("ready again", Duration::from_secs(15), || async {
        (ready().await == 200).then_some(())
    })
    .await;
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn framework_rejections_are_json_too() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let http = reqwest::Client::new();
    for (req, status) in [
        (
            http.post(app.url("/upload"))
                .bearer_auth(&user.token)
                .body("not multipart"),
            400,
        ),
        (
            http.get(app.url("/jobs?page_size=abc"))
                .bearer_auth(&user.token),
            400,
        ),
        (http.put(app.url("/jobs")).bearer_auth(&user.token), 405),
        (http.get(app.url("/nowhere")), 404),
    ] {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), status);
        assert_eq!(res.headers()["content-type"], "application/json");
        if status == 405 {
            assert_eq!(res.headers()["allow"], "GET,HEAD");
        }
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(
            body["code"].is_string() && body["message"].is_string(),
            "{body}"
        );
        let code = match status {
            400 => "invalid_argument",
            404 => "not_found",
            405 => "unimplemented",
            _ => unreachable!(),
        };
        assert_eq!(body["code"], code, "{body}");
    }
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn a_download_nobody_reads_is_dropped() {
    let auth = Auth::start().await;
    let app = spawn_app_with(&auth, &["--download-stall-timeout", "1s"]).await;
    let user = app.user().await;
    let mp3 = app.put_mp3(&user, None, &random_bytes(40 << 20)).await;
    let dropped = || async {
        let text = reqwest::get(format!("http://{}/metrics", app.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        test_kit::prom::sum(&text, "mp3converter_gateway_downloads_dropped_total", &[])
    };
    let before = dropped().await;
    // Ask, read the head, then never read again.
    let mut s = tokio::net::TcpStream::connect(app.http).await.unwrap();
    s.write_all(
        format!(
            "GET /download?fid={mp3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            user.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 512];
    let n = s.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    test_kit::wait_until(
        "the stalled download dropped",
        Duration::from_secs(30),
        || async { (dropped().await > before).then_some(()) },
    )
    .await;
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn a_stalled_grpc_download_ends_with_an_error_not_ok() {
    use mp3converter_proto::media::v1::{DownloadRequest, download_response};
    use tokio_stream::StreamExt;
    let auth = Auth::start().await;
    let app = spawn_app_with(&auth, &["--download-stall-timeout", "1s"]).await;
    let user = app.user().await;
    // Far more than the HTTP/2 windows and the queue hold.
    let mp3 = random_bytes(40 << 20);
    let mp3_id = app.put_mp3(&user, None, &mp3).await;
    let mut stream = app
        .media()
        .await
        .download(authed(&user, DownloadRequest { mp3_id }))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(
        first.payload,
        Some(download_response::Payload::Metadata(_))
    ));
    // Stop reading past the stall timeout, then read what is left.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = 0usize;
    let end = loop {
        match stream.next().await {
            Some(Ok(msg)) => {
                if let Some(download_response::Payload::Chunk(c)) = msg.payload {
                    got += c.len();
                }
            }
            Some(Err(status)) => break Some(status),
            None => break None,
        }
    };
    assert!(got < mp3.len(), "the stall cut the download short");
    let status = end.expect("a cut-off download must not end OK");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("cut off"), "{status:?}");
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn grpc_connections_that_say_nothing_do_not_keep_their_slot() {
    let auth = Auth::start().await;
    let app = spawn_app_with(
        &auth,
        &["--header-read-timeout", "1s", "--max-connections", "2"],
    )
    .await;
    let user = app.user().await;
    // Two sockets that never send the HTTP/2 preface, or only part of it,
    // take both slots for a while, then are closed.
    let mut silent = tokio::net::TcpStream::connect(app.grpc).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(app.grpc).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for s in [&mut silent, &mut partial] {
        let (answer, took) = read_until_closed(s, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(4), "closed after {took:?}");
        assert!(answer.is_empty(), "{answer:?}");
    }
    // The slots are free again: a real client is served.
    let mut media = app.media().await;
    media
        .list_jobs(authed(&user, ListJobsRequest::default()))
        .await
        .unwrap();
    app.stop().await;
    auth.stop().await;
}
