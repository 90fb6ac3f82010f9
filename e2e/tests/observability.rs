#![allow(unreachable_pub, clippy::unwrap_used)]

//! Observability of the whole mesh, with the four services as separate
//! processes (each its own tracer provider, `service.name` and metrics
//! registry, as in production):
//!
//! - one upload is one trace: every service exports to a real OTLP/gRPC
//!   receiver, and the spans of the upload share the trace id the client
//!   sent, with the right parents across both RabbitMQ hops; the JSON logs
//!   carry the same trace id;
//! - every service's `/metrics` moves with the journey.

use e2e::{ADMIN, Rest, SAMPLE, SECRET, T, create_user, ffprobe, fid_in, sample};
use mp3converter_proto::auth::v1::{LoginRequest, auth_service_client::AuthServiceClient};
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};
use test_kit::{
    Stack,
    mailpit::Mailpit,
    otlp::{ReceivedSpan, Receiver, render_tree},
    prom, unique_name, wait_until,
};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Proc {
    service: &'static str,
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

/// The four services as processes of the `mp3converter` binary.
struct ProcMesh {
    procs: Vec<Proc>,
    auth: SocketAddr,
    http: SocketAddr,
    grpc: SocketAddr,
    video_queue: String,
    mp3_queue: String,
    notified_queue: String,
    stack: Stack,
    mailpit: Mailpit,
    dir: tempfile::TempDir,
}

impl ProcMesh {
    async fn start(otlp: Option<String>) -> Self {
        let stack = Stack::from_env();
        let dir = tempfile::tempdir().unwrap();
        let mongo_db = unique_name("obs").replace('-', "_");
        let video_queue = unique_name("video");
        let mp3_queue = unique_name("mp3");
        let notified_queue = unique_name("notified");
        let auth_db = stack.fresh_database("obsauth").await;
        let notify_db = stack.fresh_database("obsnotify").await;
        let media_db = stack.fresh_database("obsmedia").await;
        let (auth, http, grpc) = (free_addr(), free_addr(), free_addr());
        let mut mesh = Self {
            procs: Vec::new(),
            auth,
            http,
            grpc,
            video_queue: video_queue.clone(),
            mp3_queue: mp3_queue.clone(),
            notified_queue: notified_queue.clone(),
            mailpit: Mailpit::new(&stack.mailpit_api_url),
            stack: stack.clone(),
            dir,
        };
        let s = |v: &str| v.to_owned();
        mesh.spawn(
            "auth-svc",
            vec![
                s("--grpc-addr"),
                auth.to_string(),
                s("--database-url"),
                auth_db,
                s("--admin-email"),
                s(ADMIN.0),
            ],
            &[("JWT_SECRET", SECRET), ("ADMIN_PASSWORD", ADMIN.1)],
            otlp.as_deref(),
        );
        mesh.spawn(
            "gateway-svc",
            vec![
                s("--grpc-addr"),
                grpc.to_string(),
                s("--follow-addr"),
                free_addr().to_string(),
                s("--http-addr"),
                http.to_string(),
                s("--auth-url"),
                format!("http://{auth}"),
                s("--mongodb-uri"),
                stack.mongodb_uri.clone(),
                s("--mongodb-database"),
                mongo_db.clone(),
                s("--database-url"),
                media_db.clone(),
                s("--amqp-url"),
                stack.amqp_url.clone(),
                s("--video-queue"),
                video_queue.clone(),
                s("--mp3-queue"),
                mp3_queue.clone(),
                s("--notified-queue"),
                notified_queue.clone(),
                s("--amqp-retry-delays"),
                s(e2e::RETRY_DELAYS),
                // The trace of a conversion after the upload: a live one
                // (started by the upload's announcement) races the commit
                // here, so its shape would depend on timing.
                s("--live-conversion"),
                s("false"),
            ],
            &[],
            otlp.as_deref(),
        );
        mesh.spawn(
            "converter-svc",
            vec![
                s("--amqp-url"),
                stack.amqp_url.clone(),
                s("--video-queue"),
                video_queue,
                s("--mp3-queue"),
                mp3_queue.clone(),
                s("--amqp-retry-delays"),
                s(e2e::RETRY_DELAYS),
                s("--mongodb-uri"),
                stack.mongodb_uri.clone(),
                s("--mongodb-database"),
                mongo_db,
                s("--database-url"),
                media_db,
            ],
            &[],
            otlp.as_deref(),
        );
        mesh.spawn(
            "notify-svc",
            vec![
                s("--amqp-url"),
                stack.amqp_url.clone(),
                s("--mp3-queue"),
                mp3_queue,
                s("--notified-queue"),
                notified_queue.clone(),
                s("--amqp-retry-delays"),
                s(e2e::RETRY_DELAYS),
                s("--database-url"),
                notify_db,
                s("--smtp-host"),
                stack.smtp_host.clone(),
                s("--smtp-port"),
                stack.smtp_port.to_string(),
                s("--smtp-tls"),
                s("none"),
                s("--download-base-url"),
                format!("http://{http}"),
            ],
            &[],
            otlp.as_deref(),
        );
        let client = reqwest::Client::new();
        for p in &mesh.procs {
            let url = format!("http://{}/readyz", p.admin);
            let log = p.log.clone();
            wait_until(&format!("{} to be ready", p.service), T, || async {
                let ok = client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("failed")) {
                    panic!(
                        "{url} did not start:\n{}",
                        std::fs::read_to_string(&log).unwrap()
                    );
                }
                ok.then_some(())
            })
            .await;
        }
        mesh
    }

    fn spawn(
        &mut self,
        service: &'static str,
        mut args: Vec<String>,
        env: &[(&str, &str)],
        otlp: Option<&str>,
    ) {
        let admin = free_addr();
        args.extend(["--admin-addr".to_owned(), admin.to_string()]);
        let log = self.dir.path().join(format!("{service}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mp3converter"));
        cmd.arg(service)
            .args(&args)
            .envs(env.iter().copied())
            // As in the cluster: JSON lines.
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // Only what this test sets: nothing from the caller's environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        if let Some(endpoint) = otlp {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        let child = cmd.spawn().unwrap();
        self.procs.push(Proc {
            service,
            child,
            admin,
            log,
        });
    }

    async fn scrape(&self) -> HashMap<&'static str, String> {
        let client = reqwest::Client::new();
        let mut out = HashMap::new();
        for p in &self.procs {
            let text = client
                .get(format!("http://{}/metrics", p.admin))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            out.insert(p.service, text);
        }
        out
    }

    fn logs(&self) -> HashMap<&'static str, String> {
        self.procs
            .iter()
            .map(|p| (p.service, std::fs::read_to_string(&p.log).unwrap()))
            .collect()
    }

    /// The text of the one email to `to`.
    async fn email(&self, to: &str) -> String {
        e2e::only_email(&self.mailpit, to).await
    }

    /// SIGTERM to each process, as Kubernetes does; each must drain, flush
    /// its spans and exit 0.
    async fn stop(&mut self) {
        for p in &self.procs {
            let ok = Command::new("kill")
                .args(["-TERM", &p.child.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "signalling {}", p.service);
        }
        for p in &mut self.procs {
            let status = wait_until(&format!("{} to exit", p.service), T, || {
                let s = p.child.try_wait().unwrap();
                async move { s }
            })
            .await;
            assert!(
                status.success(),
                "{} exited with {status}:\n{}",
                p.service,
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        e2e::delete_queues(
            &self.stack.amqp_url,
            &[&self.video_queue, &self.mp3_queue, &self.notified_queue],
        )
        .await;
    }
}

impl Drop for ProcMesh {
    fn drop(&mut self) {
        // A failed assertion must not leave services running.
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// The user's journey over REST; returns the login token and the upload's
/// job id. `traceparent`, if given, goes with the upload.
async fn journey(mesh: &ProcMesh, traceparent: Option<&str>) -> (String, String, u64) {
    let (email, password) = create_user(mesh.auth).await;
    let video = sample(mesh.dir.path(), "obs.mp4", SAMPLE);
    let rest = Rest::new(mesh.http);
    let token = rest.login(&email, &password).await;
    let headers: Vec<(&str, &str)> = traceparent
        .map(|t| ("traceparent", t))
        .into_iter()
        .collect();
    let job = rest
        .upload_with(&token, "obs.mp4", std::fs::read(&video).unwrap(), &headers)
        .await;
    let fid = fid_in(&mesh.email(&email).await);
    let mp3 = rest
        .get(&token, &format!("/download?fid={fid}"))
        .await
        .bytes()
        .await
        .unwrap();
    let out = mesh.dir.path().join("obs.mp3");
    std::fs::write(&out, &mp3).unwrap();
    assert_eq!(ffprobe(&out).0, "mp3");
    (
        token,
        job["job_id"].as_str().unwrap().to_owned(),
        mp3.len() as u64,
    )
}

/// Random lowercase hex, `bytes` bytes long.
fn random_hex(bytes: usize) -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.truncate(bytes * 2);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_is_one_trace_across_all_services_and_both_queues() {
    test_kit::init_tracing();
    let receiver = Receiver::start().await;
    let mut mesh = ProcMesh::start(Some(receiver.endpoint())).await;

    // The client starts the trace; the REST edge must continue it.
    let trace_id = random_hex(16);
    let client_span = random_hex(8);
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let (token, job_id, _) = journey(&mesh, Some(&traceparent)).await;
    // Spans are batched for seconds; a clean shutdown must flush them.
    mesh.stop().await;

    let spans = receiver.trace(&trace_id);
    let tree = render_tree(&spans);
    println!("trace {trace_id}:\n{tree}");
    let find = |service: &str, name: &str, parent: &str| -> ReceivedSpan {
        let found: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.service == service && s.name == name && s.parent_span_id == parent)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one `{name}` span of {service} under {parent:?} in\n{tree}"
        );
        found[0].clone()
    };
    // The outbox relay of any replica may publish an event (the writer's own
    // usually does first): which service it ran in does not matter.
    let relayed = |parent: &str| -> ReceivedSpan {
        let found: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.name == "outbox.relay" && s.parent_span_id == parent)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one `outbox.relay` under {parent:?} in\n{tree}"
        );
        found[0].clone()
    };
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    const PRODUCER: i32 = 4;
    const CONSUMER: i32 = 5;

    // gateway: the HTTP request, continuing the client's context.
    let http = find("gateway-svc", "POST /upload", &client_span);
    assert_eq!(http.kind, SERVER);
    assert_eq!(http.attr("http.route"), Some("/upload"));
    assert_eq!(http.attr("http.response.status_code"), Some("200"));
    // Its token check, which asks auth-svc (gRPC metadata carries the context).
    let check = find("gateway-svc", "auth.check_token", &http.span_id);
    assert_eq!(check.attr("result"), Some("valid"));
    let validate = find(
        "gateway-svc",
        "mp3converter.auth.v1.AuthService/Validate",
        &check.span_id,
    );
    assert_eq!(validate.kind, CLIENT);
    let validated = find(
        "auth-svc",
        "mp3converter.auth.v1.AuthService/Validate",
        &validate.span_id,
    );
    assert_eq!(validated.kind, SERVER);
    assert_eq!(validated.attr("rpc.grpc.status_code"), Some("0"));
    // The REST edge calls MediaService.Upload over gRPC.
    let upload_call = find(
        "gateway-svc",
        "mp3converter.media.v1.MediaService/Upload",
        &http.span_id,
    );
    assert_eq!(upload_call.kind, CLIENT);
    let upload = find(
        "gateway-svc",
        "mp3converter.media.v1.MediaService/Upload",
        &upload_call.span_id,
    );
    assert_eq!(upload.kind, SERVER);
    find("gateway-svc", "auth.check_token", &upload.span_id);
    let write = find("gateway-svc", "gridfs.write videos", &upload.span_id);
    assert_eq!(write.attr("video_id"), Some(job_id.as_str()));
    // The commit writes VideoUploaded to the outbox; the relay publishes it
    // in the commit's trace.
    let relay = relayed(&upload.span_id);
    assert_eq!(
        relay.attr("event.kind"),
        Some("mp3converter.events.v1.VideoUploaded")
    );
    let publish = find(
        &relay.service,
        &format!("publish {}", mesh.video_queue),
        &relay.span_id,
    );
    assert_eq!(publish.kind, PRODUCER);

    // First RabbitMQ hop: the consume is the publish's child.
    let consume = find(
        "converter-svc",
        &format!("process {}", mesh.video_queue),
        &publish.span_id,
    );
    assert_eq!(consume.kind, CONSUMER);
    assert_eq!(consume.attr("outcome"), Some("acked"));
    let convert = find("converter-svc", "convert", &consume.span_id);
    find("converter-svc", "gridfs.read videos", &convert.span_id);
    let ffmpeg = find("converter-svc", "ffmpeg to_mp3", &convert.span_id);
    assert!(ffmpeg.end_unix_nano > ffmpeg.start_unix_nano);
    find("converter-svc", "gridfs.write mp3s", &convert.span_id);
    let relay_mp3 = relayed(&convert.span_id);
    let publish_mp3 = find(
        &relay_mp3.service,
        &format!("publish {}", mesh.mp3_queue),
        &relay_mp3.span_id,
    );
    assert_eq!(publish_mp3.kind, PRODUCER);

    // Second hop.
    let consume_mp3 = find(
        "notify-svc",
        &format!("process {}", mesh.mp3_queue),
        &publish_mp3.span_id,
    );
    assert_eq!(consume_mp3.kind, CONSUMER);
    let email = find("notify-svc", "smtp.send", &consume_mp3.span_id);
    assert_eq!(email.kind, CLIENT);
    assert_eq!(email.attr("smtp.result"), Some("accepted"));

    // Nothing dangles: every parent is in the trace (or is the client's).
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for s in &spans {
        assert!(
            s.parent_span_id == client_span || ids.contains(s.parent_span_id.as_str()),
            "`{}` of {} has a parent outside the trace:\n{tree}",
            s.name,
            s.service
        );
    }

    // The JSON log lines written inside those spans carry the trace id, and
    // no line anywhere holds the user's token.
    let logs = mesh.logs();
    for (service, message) in [
        ("gateway-svc", "video uploaded and queued"),
        ("converter-svc", "converted"),
        ("notify-svc", "email sent"),
    ] {
        let line = logs[service]
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("`{message}` in {service}'s log:\n{}", logs[service]));
        assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    }
    for (service, log) in &logs {
        assert!(!log.contains(&token), "{service} logged a token");
        assert!(!log.contains(SECRET), "{service} logged the JWT secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exposes_metrics_that_the_journey_moves() {
    test_kit::init_tracing();
    let mut mesh = ProcMesh::start(None).await;
    let before = mesh.scrape().await;
    let (_, _, mp3_bytes) = journey(&mesh, None).await;

    // Refusals are counted with their status too.
    let rest = Rest::new(mesh.http);
    let res = rest
        .http
        .get(format!("{}/jobs/000000000000000000000000", rest.base))
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // A path the gateway does not serve: counted, under one `unknown` series.
    let mut wrong = AuthServiceClient::connect(format!("http://{}", mesh.grpc))
        .await
        .unwrap();
    let err = wrong
        .login(LoginRequest {
            email: "a@b.c".into(),
            password: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    // A message no consumer can read: dead-lettered, and counted.
    let publisher = amqp_kit::Publisher::new(
        svc_kit::config::Secret::new(mesh.stack.amqp_url.as_str()),
        "observability-test",
        Duration::from_secs(10),
    );
    publisher
        .publish(
            &mesh.mp3_queue,
            b"\xff not protobuf",
            amqp_kit::event_properties(
                "mp3converter.events.v1.Mp3Ready",
                "garbage-1",
                Default::default(),
            ),
        )
        .await
        .unwrap();
    let dead = ("queue", mesh.mp3_queue.as_str());
    wait_until("the garbage to be dead-lettered", T, || async {
        let m = mesh.scrape().await;
        (prom::sum(
            &m["notify-svc"],
            "mp3converter_amqp_dead_lettered_total",
            &[dead],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    // The download's metrics are recorded when the server sees its stream
    // end, which can be after the client has every byte: wait for it.
    let download = [("grpc_method", "Download"), ("grpc_code", "OK")];
    let downloads = |m: &HashMap<&'static str, String>| {
        prom::sum(&m["gateway-svc"], "grpc_server_handled_total", &download)
    };
    let after = wait_until("the download's metrics", T, || async {
        let m = mesh.scrape().await;
        (downloads(&m) > downloads(&before)).then_some(m)
    })
    .await;
    // The REST edge reads the gRPC stream to its trailers: a whole download
    // is never counted as cancelled.
    let cancelled = [("grpc_method", "Download"), ("grpc_code", "Cancelled")];
    assert_eq!(
        prom::sum(
            &after["gateway-svc"],
            "grpc_server_handled_total",
            &cancelled
        ),
        prom::sum(
            &before["gateway-svc"],
            "grpc_server_handled_total",
            &cancelled
        ),
        "a download through the REST edge was counted as cancelled"
    );

    let video = mesh.video_queue.clone();
    let mp3 = mesh.mp3_queue.clone();
    // (service, metric, labels it must have, least it must have moved by)
    type Check<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, f64);
    let checks: Vec<Check<'_>> = vec![
        // auth-svc
        (
            "auth-svc",
            "mp3converter_auth_logins_total",
            vec![("result", "ok")],
            2.0,
        ),
        (
            "auth-svc",
            "mp3converter_auth_validations_total",
            vec![("result", "valid")],
            1.0,
        ),
        (
            "auth-svc",
            "grpc_server_handled_total",
            vec![("grpc_method", "Validate"), ("grpc_code", "OK")],
            1.0,
        ),
        (
            "auth-svc",
            "grpc_server_handling_seconds_count",
            vec![("grpc_method", "Login")],
            2.0,
        ),
        // gateway-svc: REST edge, gRPC API, bytes, auth cache, publishes
        (
            "gateway-svc",
            "http_server_requests_total",
            vec![("method", "POST"), ("route", "/upload"), ("status", "200")],
            1.0,
        ),
        (
            "gateway-svc",
            "http_server_request_duration_seconds_count",
            vec![("route", "/download"), ("status", "200")],
            1.0,
        ),
        (
            "gateway-svc",
            "http_server_requests_total",
            vec![("route", "/login"), ("status", "200")],
            1.0,
        ),
        (
            "gateway-svc",
            "http_server_requests_total",
            vec![("route", "/jobs/{id}"), ("status", "401")],
            1.0,
        ),
        (
            "gateway-svc",
            "mp3converter_gateway_auth_validations_total",
            vec![("result", "rejected")],
            1.0,
        ),
        (
            "auth-svc",
            "grpc_server_handled_total",
            vec![
                ("grpc_method", "Validate"),
                ("grpc_code", "Unauthenticated"),
            ],
            1.0,
        ),
        (
            "gateway-svc",
            "grpc_server_handled_total",
            vec![("grpc_method", "Upload"), ("grpc_code", "OK")],
            1.0,
        ),
        (
            "gateway-svc",
            "grpc_server_handled_total",
            vec![("grpc_service", "unknown"), ("grpc_code", "Unimplemented")],
            1.0,
        ),
        (
            "gateway-svc",
            "grpc_server_handled_total",
            vec![("grpc_method", "Download"), ("grpc_code", "OK")],
            1.0,
        ),
        // What the gateway's dependencies cost it: client-side gRPC metrics.
        (
            "gateway-svc",
            "grpc_client_handled_total",
            vec![("grpc_method", "Validate"), ("grpc_code", "OK")],
            1.0,
        ),
        (
            "gateway-svc",
            "grpc_client_handling_seconds_count",
            vec![("grpc_method", "Login"), ("grpc_code", "OK")],
            1.0,
        ),
        (
            "gateway-svc",
            "grpc_client_handled_total",
            vec![("grpc_method", "Upload"), ("grpc_code", "OK")],
            1.0,
        ),
        (
            "gateway-svc",
            "mp3converter_gateway_upload_bytes_total",
            vec![],
            1000.0,
        ),
        (
            "gateway-svc",
            "mp3converter_gateway_download_bytes_total",
            vec![],
            mp3_bytes as f64,
        ),
        (
            "gateway-svc",
            "mp3converter_gateway_auth_validations_total",
            vec![("result", "valid")],
            1.0,
        ),
        (
            "gateway-svc",
            "mp3converter_gateway_auth_cache_lookups_total",
            vec![("result", "hit")],
            1.0,
        ),
        (
            "gateway-svc",
            "mp3converter_amqp_published_total",
            vec![("queue", &video), ("outcome", "confirmed")],
            1.0,
        ),
        // converter-svc
        (
            "converter-svc",
            "mp3converter_conversions_total",
            vec![("outcome", "done")],
            1.0,
        ),
        (
            "converter-svc",
            "mp3converter_conversion_duration_seconds_count",
            vec![],
            1.0,
        ),
        (
            "converter-svc",
            "mp3converter_amqp_consumed_total",
            vec![("queue", &video)],
            1.0,
        ),
        (
            "converter-svc",
            "mp3converter_amqp_acked_total",
            vec![("queue", &video)],
            1.0,
        ),
        (
            "converter-svc",
            "mp3converter_amqp_published_total",
            vec![("queue", &mp3), ("outcome", "confirmed")],
            1.0,
        ),
        // notify-svc
        (
            "notify-svc",
            "mp3converter_emails_total",
            vec![("kind", "mp3_ready"), ("outcome", "sent")],
            1.0,
        ),
        (
            "notify-svc",
            "mp3converter_amqp_consumed_total",
            vec![("queue", &mp3)],
            2.0,
        ),
        (
            "notify-svc",
            "mp3converter_amqp_acked_total",
            vec![("queue", &mp3)],
            1.0,
        ),
        (
            "notify-svc",
            "mp3converter_amqp_dead_lettered_total",
            vec![("queue", &mp3)],
            1.0,
        ),
        (
            "notify-svc",
            "mp3converter_amqp_process_duration_seconds_count",
            vec![("queue", &mp3)],
            2.0,
        ),
    ];
    let mut failures = Vec::new();
    for (service, name, labels, at_least) in &checks {
        let moved =
            prom::sum(&after[service], name, labels) - prom::sum(&before[service], name, labels);
        if moved < *at_least {
            failures.push(format!(
                "{service} {name}{labels:?} moved by {moved}, expected ≥ {at_least}"
            ));
        }
    }
    let unserved = [("grpc_service", "mp3converter.auth.v1.AuthService")];
    if prom::sum(
        &after["gateway-svc"],
        "grpc_server_handled_total",
        &unserved,
    ) != 0.0
    {
        failures.push("an unserved path got its own series on the gateway".into());
    }
    // Gauges: which build runs, and nothing left in progress once idle.
    for (service, text) in &after {
        let build = prom::sum(text, "mp3converter_build_info", &[("service", service)]);
        if build != 1.0 {
            failures.push(format!("{service} mp3converter_build_info is {build}"));
        }
    }
    for (service, name) in [
        ("gateway-svc", "http_server_active_requests"),
        ("gateway-svc", "grpc_server_active_requests"),
        ("gateway-svc", "mp3converter_gateway_uploads_in_progress"),
        ("converter-svc", "mp3converter_conversions_in_progress"),
    ] {
        let text = &after[service];
        if !text.contains(&format!("\n{name}")) || prom::sum(text, name, &[]) != 0.0 {
            failures.push(format!("{service} {name} should be present and 0"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Histograms have buckets, so they aggregate across pods.
    assert!(after["gateway-svc"].contains("http_server_request_duration_seconds_bucket{"));
    assert!(after["converter-svc"].contains("mp3converter_conversion_duration_seconds_bucket{"));
    mesh.stop().await;
}
