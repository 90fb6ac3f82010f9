//! What probing the edge from outside found, each through the real
//! interface: multipart framing that was buffered without a limit, a declared
//! length over the limit answered with `100 Continue`, live streams that
//! outlived a logout, and watcher slots kept by clients that had left.

use crate::helpers::*;
use futures::StreamExt;
use mp3converter_proto::media::v1::WatchJobsRequest;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request};

const BOUNDARY: &str = "probe-boundary";

/// A raw HTTP/1.1 exchange: writes `head`, then `body` piece by piece until
/// the server answers (or the socket breaks); returns the status and body
/// of the answer.
async fn raw_exchange(
    addr: std::net::SocketAddr,
    head: String,
    body: impl futures::Stream<Item = Vec<u8>> + Send + 'static,
) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let mut body = std::pin::pin!(body);
        while let Some(piece) = body.next().await {
            wr.write_all(&piece).await?;
        }
        // Keep our side open, as clients do (a half-close ends the exchange
        // for the server).
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(())
    });
    let answer = tokio::time::timeout(Duration::from_secs(20), read_response(&mut rd))
        .await
        .expect("an answer within 20 s");
    writer.abort();
    answer
}

async fn read_response(rd: &mut (impl AsyncReadExt + Unpin)) -> (u16, String) {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let head_end = loop {
        let n = rd.read(&mut piece).await.unwrap();
        assert!(
            n > 0,
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&piece[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = rd.read(&mut piece).await.unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&piece[..n]);
    }
    (
        status,
        String::from_utf8_lossy(&buf[head_end..]).to_string(),
    )
}

fn upload_head(app_http: std::net::SocketAddr, token: &str, length: u64) -> String {
    format!(
        "POST /upload HTTP/1.1\r\nHost: {app_http}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// `prefix`, then `filler` bytes (64 KiB at a time) up to `total` bytes.
fn padded(prefix: String, filler: u8, total: usize) -> impl futures::Stream<Item = Vec<u8>> {
    let first = prefix.into_bytes();
    let rest = total.saturating_sub(first.len());
    futures::stream::iter(
        std::iter::once(first)
            .chain((0..rest.div_ceil(64 << 10)).map(move |_| vec![filler; 64 << 10])),
    )
}

/// The three hostile bodies the probe sent: a huge preamble, a huge part
/// header, a huge file name.
fn hostile(kind: usize, total: usize) -> impl futures::Stream<Item = Vec<u8>> {
    match kind {
        0 => padded(String::new(), b'p', total),
        1 => padded(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\nX-Pad: "
            ),
            b'h',
            total,
        ),
        _ => padded(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\""),
            b'n',
            total,
        ),
    }
}

#[tokio::test]
async fn multipart_framing_is_bounded_and_refused_clearly() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let user = app.user().await;
    let total = 4 << 20;
    for (kind, status, says) in [
        (0, 400, "before its first boundary"),
        (1, 431, "headers are longer than"),
        (2, 431, "headers are longer than"),
    ] {
        let (code, body) = raw_exchange(
            app.http,
            upload_head(app.http, &user.token, total as u64),
            hostile(kind, total),
        )
        .await;
        assert_eq!(code, status, "case {kind}: {body}");
        assert!(body.contains(says), "case {kind}: {body}");
    }

    // A long file name that fits the header bound is refused by its length,
    // before it goes anywhere.
    let name = "n".repeat(2000);
    let form = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}.mkv\"\r\n\r\nxyz\r\n--{BOUNDARY}--\r\n"
    );
    let (code, body) = raw_exchange(
        app.http,
        upload_head(app.http, &user.token, form.len() as u64),
        futures::stream::iter([form.into_bytes()]),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("filename: is longer than 1024 bytes"),
        "{body}"
    );

    // A `file` part without a file name is the file (not an option field).
    let form = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nsome bytes\r\n--{BOUNDARY}--\r\n"
    );
    let (code, body) = raw_exchange(
        app.http,
        upload_head(app.http, &user.token, form.len() as u64),
        futures::stream::iter([form.into_bytes()]),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["size_bytes"], 10, "{body}");
    assert_eq!(job["filename"], "upload", "{body}");
    app.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn an_over_limit_length_is_refused_before_100_continue() {
    let auth = Auth::start().await;
    let app = spawn_app_with(&auth, &["--max-upload-size", "4MiB"]).await;
    let user = app.user().await;
    let mut s = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let head = upload_head(app.http, &user.token, 3 << 30)
        .replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let (code, body) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
        .await
        .unwrap();
    assert_eq!(code, 413, "the first answer, not 100 Continue: {body}");
    assert!(body.contains("larger than"), "{body}");
    app.stop().await;
    auth.stop().await;
}

/// The gateway as its own process (so its memory is its own), against the
/// in-process auth-svc; returns it and its REST address.
async fn gateway_process(
    auth: &Auth,
    db: &str,
    queue: &str,
) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let stack = test_kit::Stack::from_env();
    let jobs_db = stack.database(db).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-svc"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--follow-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(["--auth-url", &format!("http://{}", auth.addr)])
        .args([
            "--mongodb-uri",
            &stack.mongodb_uri,
            "--mongodb-database",
            db,
        ])
        .args(["--database-url", &jobs_db])
        .args(["--amqp-url", &stack.amqp_url, "--video-queue", queue])
        .args(["--notified-queue", &notified_queue(queue)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = out.lines();
    let http = loop {
        let line = lines.next().expect("the gateway's log").unwrap();
        if let Some(rest) = line.split("http=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, http)
}

/// (VmRSS, VmHWM) of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    (kib("VmRSS:") << 10, kib("VmHWM:") << 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_uploads_in_parallel_keep_the_gateway_small() {
    let auth = Auth::start().await;
    let db = test_kit::unique_name("gwmem").replace('-', "_");
    let queue = test_kit::unique_name("video");
    let (mut child, http) = gateway_process(&auth, &db, &queue).await;
    // One in-process replica on the same database makes the user and cleans
    // up after.
    let app = spawn_app_on(&auth, &db, &queue, &[]).await;
    let user = app.user().await;
    // Warm up: a first request of each kind the probe sends.
    let (code, _) = raw_exchange(
        http,
        upload_head(http, &user.token, 1 << 20),
        hostile(0, 1 << 20),
    )
    .await;
    assert_eq!(code, 400);
    let (_, peak_before) = memory(child.id());

    // What grew the gateway by 350 MB before: four of them at once, 100 MB
    // each, twice over.
    let total = 100 << 20;
    for _ in 0..2 {
        let probes = (0..4).map(|i| {
            let token = user.token.clone();
            tokio::spawn(async move {
                raw_exchange(
                    http,
                    upload_head(http, &token, total as u64),
                    hostile(i % 3, total),
                )
                .await
            })
        });
        for (i, p) in futures::future::join_all(probes)
            .await
            .into_iter()
            .enumerate()
        {
            let (code, body) = p.unwrap();
            assert!(code == 400 || code == 431, "probe {i}: {code} {body}");
        }
    }
    let (rss, peak) = memory(child.id());
    let grew = peak.saturating_sub(peak_before);
    assert!(
        grew < 32 << 20,
        "the gateway's peak memory grew by {} MiB (now {} MiB resident)",
        grew >> 20,
        rss >> 20
    );
    let _ = child.kill();
    let _ = child.wait();
    app.stop().await;
    auth.stop().await;
}

/// Reads an SSE body until it ends; how long that took.
async fn sse_ends_within(res: reqwest::Response, max: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut body = res.bytes_stream();
    tokio::time::timeout(max, async { while let Some(Ok(_)) = body.next().await {} })
        .await
        .ok()
        .map(|()| start.elapsed())
}

async fn open_sse(app: &TestApp, token: &str) -> reqwest::Response {
    let res = reqwest::Client::new()
        .get(app.url("/jobs/events"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// How long a WatchJobs stream went on before it failed, and its code.
async fn watch_ends_within(
    mut stream: tonic::Streaming<mp3converter_proto::media::v1::WatchJobsResponse>,
    max: Duration,
) -> Option<(Duration, Code)> {
    let start = Instant::now();
    tokio::time::timeout(max, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Code::Ok,
                Err(s) => return s.code(),
            }
        }
    })
    .await
    .ok()
    .map(|code| (start.elapsed(), code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_end_after_logout_disable_and_expiry() {
    let ttl = Duration::from_secs(2);
    let slack = Duration::from_millis(1500);
    let auth = Auth::start_with(&["--token-ttl", "6s"]).await;
    let app = spawn_app_with(&auth, &["--auth-cache-ttl", "2s"]).await;
    let mut media = app.media().await;

    // Logout: over REST, through this replica.
    let user = app.user().await;
    let sse = open_sse(&app, &user.token).await;
    let watch = media
        .watch_jobs(authed(&user.token, WatchJobsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let res = reqwest::Client::new()
        .post(app.url("/logout"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let (sse_took, watch_took) = tokio::join!(
        sse_ends_within(sse, ttl + slack),
        watch_ends_within(watch, ttl + slack)
    );
    assert!(sse_took.is_some(), "the SSE stream outlived the logout");
    let (_, code) = watch_took.expect("WatchJobs outlived the logout");
    assert_eq!(code, Code::Unauthenticated);

    // Disabled by an admin, straight through auth-svc (so this replica's
    // cache still trusts the token).
    let user = app.user().await;
    let sse = open_sse(&app, &user.token).await;
    let watch = media
        .watch_jobs(authed(&user.token, WatchJobsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    app.disable_user(&user.email).await;
    let (sse_took, watch_took) = tokio::join!(
        sse_ends_within(sse, ttl + slack),
        watch_ends_within(watch, ttl + slack)
    );
    assert!(sse_took.is_some(), "the SSE stream outlived the disable");
    assert_eq!(
        watch_took.expect("WatchJobs outlived the disable").1,
        Code::Unauthenticated
    );

    // Expiry: a token valid for 6 s; its stream ends then, not later.
    let user = app.user().await;
    let issued = Instant::now();
    let watch = media
        .watch_jobs(authed(&user.token, WatchJobsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let (_, code) = watch_ends_within(watch, Duration::from_secs(6) + slack)
        .await
        .expect("WatchJobs outlived the token");
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        issued.elapsed() >= Duration::from_secs(5),
        "{:?}",
        issued.elapsed()
    );
    app.stop().await;
    auth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_slots_are_freed_when_clients_leave() {
    let auth = Auth::start().await;
    let app = spawn_app_with(&auth, &["--max-watchers-per-user", "8"]).await;
    let user = app.user().await;
    for round in 0..3 {
        let mut open = Vec::new();
        for _ in 0..8 {
            open.push(open_sse(&app, &user.token).await);
        }
        let res = reqwest::Client::new()
            .get(app.url("/jobs/events"))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 429, "round {round}: the ninth is refused");
        // The clients go away without a job having moved.
        drop(open);
        test_kit::wait_until(
            "the slots to be free again",
            Duration::from_secs(3),
            || async {
                let res = reqwest::Client::new()
                    .get(app.url("/jobs/events"))
                    .bearer_auth(&user.token)
                    .send()
                    .await
                    .ok()?;
                (res.status() == 200).then_some(())
            },
        )
        .await;
    }
    // And over gRPC: a watcher that hangs up frees its slot.
    let mut media = app.media().await;
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(
            media
                .watch_jobs(authed(&user.token, WatchJobsRequest::default()))
                .await
                .unwrap(),
        );
    }
    let err = media
        .watch_jobs(authed(&user.token, WatchJobsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    drop(open);
    test_kit::wait_until(
        "the gRPC slots to be free",
        Duration::from_secs(3),
        || async {
            media
                .clone()
                .watch_jobs(authed(&user.token, WatchJobsRequest::default()))
                .await
                .ok()
                .map(drop)
        },
    )
    .await;
    app.stop().await;
    auth.stop().await;
}
