//! Upload throughput through the gateway — REST (multipart), tus (resumable,
//! 32 MiB PATCHes) and gRPC (client stream) — side by side with writing the same bytes straight to GridFS with
//! the driver (the limit), and the gateway's peak RSS per upload size.
//!
//! auth-svc and gateway-svc run as release processes (so the gateway's memory
//! is its own); the stack must be up (`scripts/stack up`).
//!
//!     cargo build --release -p auth-svc -p gateway-svc
//!     cargo run --release -p bench --bin gateway-bench -- --sizes 100MiB,1GiB

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use bench::{
    Proc,
    services::{self, Listeners},
    wait_for_port,
};
use clap::Parser;
use futures::{AsyncWriteExt, StreamExt};
use media_store::{Store, mongodb::bson::doc};
use mp3converter_proto::media::v1::{
    UploadCommit, UploadMetadata, UploadRequest, media_service_client::MediaServiceClient,
    upload_request::Payload,
};
use rand::RngCore;
use std::time::Instant;
use svc_kit::config::{Secret, parse_size};
use test_kit::users::Admin;

#[derive(Debug, Parser)]
struct Args {
    /// Upload sizes.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "100MiB,1GiB")]
    sizes: Vec<u64>,
    /// Another gateway-svc build (e.g. an older commit's) measured beside
    /// this one: its gRPC and REST rows follow this build's for each size.
    #[arg(long)]
    compare_gateway_bin: Option<std::path::PathBuf>,
    /// Rounds of the upload table; with a build to compare, every other
    /// round measures that build first.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

const CHUNK: usize = 1 << 20;

/// `size` bytes as 1 MiB chunks cut from one random buffer: generated as sent,
/// never held whole.
fn chunks(size: u64, block: bytes::Bytes) -> impl futures::Stream<Item = bytes::Bytes> {
    let n = size.div_ceil(CHUNK as u64);
    futures::stream::iter((0..n).map(move |i| {
        let len = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
        block.slice(..len)
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = test_kit::Stack::from_env();
    let auth_db = stack.fresh_database("gwbench").await;
    let mongo_db = test_kit::unique_name("gwbench").replace('-', "_");
    let jobs_db = stack.database(&mongo_db).await;
    let queue = test_kit::unique_name("video-bench");
    let auth_addr = services::local_addr();

    let _auth = Proc::start(
        "auth-svc",
        &services::auth_vars(&auth_addr, auth_db, services::JWT_SECRET, services::ADMIN),
    )?;
    // A gateway process with the common settings plus `extra`; returns it
    // with its gRPC and HTTP ports.
    let start_build = |bin: Option<&std::path::Path>, extra: &[(&'static str, String)]| {
        let listeners = Listeners::new();
        let mut env = listeners.gateway_vars(&auth_addr);
        env.extend(services::store_vars(&stack, &mongo_db, &jobs_db));
        env.push(("VIDEO_QUEUE", queue.clone()));
        env.extend_from_slice(extra);
        match bin {
            None => Proc::start("gateway-svc", &env),
            Some(bin) => Proc::start_bin(bin, &env),
        }
        .map(|p| (p, listeners.grpc, listeners.http))
    };
    let start_gateway = |extra: &[(&'static str, String)]| start_build(None, extra);
    let big = [("MAX_UPLOAD_SIZE", "4GiB".to_owned())];
    let (gateway, grpc_port, http_port) = start_gateway(&big)?;
    wait_for_port(&auth_addr).await?;
    wait_for_port(&format!("127.0.0.1:{http_port}")).await?;
    // The build compared with (it migrates nothing new: this one went first).
    let other = match &args.compare_gateway_bin {
        Some(bin) => {
            let (p, grpc, http) = start_build(Some(bin), &big)?;
            wait_for_port(&format!("127.0.0.1:{http}")).await?;
            Some((p, grpc, http, bin.display().to_string()))
        }
        None => None,
    };

    // The admin is the bench's user.
    let token = Admin::connect(&auth_addr, services::ADMIN)
        .await?
        .token()
        .to_owned();
    let store = Store::new(
        &Secret::new(stack.mongodb_uri.clone()),
        &mongo_db,
        "gateway-bench",
        media_store::Timeouts::default(),
    )
    .await?;
    let mut block = vec![0u8; CHUNK];
    rand::rng().fill_bytes(&mut block);
    let block = bytes::Bytes::from(block);

    let mut rows = Vec::new();
    let sizes =
        (0..args.rounds).flat_map(|round| args.sizes.iter().map(move |&size| (round, size)));
    for (round, size) in sizes {
        let mib = size as f64 / f64::from(1u32 << 20);

        // The limit: the driver writing to GridFS, 1 MiB at a time.
        let t = Instant::now();
        let id = media_store::mongodb::bson::oid::ObjectId::new();
        let mut up = store
            .videos
            .open_upload_stream("raw.bin")
            .id(id.into())
            .await?;
        let mut s = std::pin::pin!(chunks(size, block.clone()));
        while let Some(c) = s.next().await {
            up.write_all(&c).await?;
        }
        up.close().await?;
        let raw = t.elapsed();
        rows.push((mib, "GridFS driver (the limit)".into(), raw, raw, f64::NAN));
        clean(&store, &jobs_db).await?;

        // gRPC client stream, then REST multipart (streamed by the client
        // too); then the same through the build compared with, if any.
        let mut gateways = vec![(&gateway, grpc_port, http_port, String::new())];
        if let Some((p, grpc, http, bin)) = &other {
            gateways.push((p, *grpc, *http, format!(" ({bin})")));
        }
        if round % 2 == 1 {
            gateways.reverse();
        }
        for (proc, grpc, http, label) in gateways {
            proc.reset_peak();
            let took = grpc_upload(grpc, &token, size, &block).await?;
            rows.push((
                mib,
                format!("gateway gRPC Upload{label}"),
                took,
                raw,
                proc.peak_rss_mib(),
            ));
            clean(&store, &jobs_db).await?;

            proc.reset_peak();
            let took = rest_upload(http, &token, size, &block).await?;
            rows.push((
                mib,
                format!("gateway REST /upload{label}"),
                took,
                raw,
                proc.peak_rss_mib(),
            ));
            clean(&store, &jobs_db).await?;
        }

        // tus: POST /uploads, then PATCHes of 32 MiB, as the web app sends them.
        gateway.reset_peak();
        let t = Instant::now();
        tus_upload(http_port, &token, size, &block).await?;
        rows.push((
            mib,
            "gateway tus /uploads (32 MiB PATCHes)".into(),
            t.elapsed(),
            raw,
            gateway.peak_rss_mib(),
        ));
        clean(&store, &jobs_db).await?;
    }

    // What the validation cache buys: ListJobs over gRPC with the cache (the
    // default, 30 s) and without it (every call asks auth-svc).
    let (_nocache, nocache_grpc, _) = start_gateway(&[("AUTH_CACHE_TTL", "0s".into())])?;
    wait_for_port(&format!("127.0.0.1:{nocache_grpc}")).await?;
    let mut cache_rows = Vec::new();
    for (label, port) in [("cache on (30 s)", grpc_port), ("cache off", nocache_grpc)] {
        let (rate, s) = list_jobs_rate(port, &token).await?;
        cache_rows.push((label, rate, s));
    }

    // What tracing costs per request: the same gateway with spans off
    // (TRACE_FILTER=off), recorded but not exported (the default above), and
    // exported over OTLP/gRPC to a real receiver.
    let receiver = test_kit::otlp::Receiver::start().await;
    let (_off, off_port, _) = start_gateway(&[("TRACE_FILTER", "off".into())])?;
    let (_exporting, exporting_port, _) =
        start_gateway(&[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())])?;
    wait_for_port(&format!("127.0.0.1:{off_port}")).await?;
    wait_for_port(&format!("127.0.0.1:{exporting_port}")).await?;
    let mut trace_rows = Vec::new();
    // Twice each, interleaved, so drift on a shared machine hits all three.
    for _ in 0..2 {
        for (label, port) in [
            ("spans off (TRACE_FILTER=off)", off_port),
            ("spans recorded, not exported (default)", grpc_port),
            ("spans exported over OTLP", exporting_port),
        ] {
            let (rate, s) = list_jobs_rate(port, &token).await?;
            trace_rows.push((label, rate, s));
        }
    }
    let exported = receiver.spans().len();

    println!(
        "\ngateway-svc upload throughput ({} cores, the stack's GridFS server: FerretDB on PostgreSQL)\n",
        std::thread::available_parallelism()?
    );
    println!("| size (MiB) | path | seconds | MiB/s | vs driver | gateway peak RSS (MiB) |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (mib, path, took, raw, rss) in rows {
        let rss = if rss.is_nan() {
            "–".into()
        } else {
            format!("{rss:.1}")
        };
        println!(
            "| {mib:.0} | {path} | {:.2} | {:.1} | {:.2} | {rss} |",
            took.as_secs_f64(),
            mib / took.as_secs_f64(),
            raw.as_secs_f64() / took.as_secs_f64(),
        );
    }
    println!(
        "\nListJobs over gRPC, 8 concurrent callers, 2000 calls: what the validation cache buys\n"
    );
    println!("| auth cache | calls/s | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|");
    for (label, rate, s) in cache_rows {
        println!(
            "| {label} | {rate:.0} | {} | {} |",
            bench::ms(s.p50),
            bench::ms(s.p99)
        );
    }
    println!(
        "\nListJobs over gRPC as above (cache on), two rounds: what tracing costs per request ({exported} spans received by the OTLP receiver)\n"
    );
    println!("| tracing | calls/s | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|");
    for (label, rate, s) in trace_rows {
        println!(
            "| {label} | {rate:.0} | {} | {} |",
            bench::ms(s.p50),
            bench::ms(s.p99)
        );
    }
    let _ = store.db.drop().await;
    Ok(())
}

/// A gRPC `Upload` of `size` bytes (metadata, 1 MiB chunks, commit): how long.
async fn grpc_upload(
    port: u16,
    token: &str,
    size: u64,
    block: &bytes::Bytes,
) -> anyhow::Result<std::time::Duration> {
    let mut media = MediaServiceClient::connect(format!("http://127.0.0.1:{port}")).await?;
    let msgs = futures::stream::once(async move {
        UploadRequest {
            payload: Some(Payload::Metadata(UploadMetadata {
                filename: "bench.mkv".into(),
                content_type: "video/x-matroska".into(),
                declared_size_bytes: Some(size),
                options: None,
            })),
        }
    })
    .chain(chunks(size, block.clone()).map(|c| UploadRequest {
        payload: Some(Payload::Chunk(c)),
    }))
    .chain(futures::stream::once(async move {
        UploadRequest {
            payload: Some(Payload::Commit(UploadCommit { total_bytes: size })),
        }
    }));
    let mut req = tonic::Request::new(msgs);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let t = Instant::now();
    media.upload(req).await?;
    Ok(t.elapsed())
}

/// A REST multipart `POST /upload` of `size` bytes, streamed: how long.
async fn rest_upload(
    port: u16,
    token: &str,
    size: u64,
    block: &bytes::Bytes,
) -> anyhow::Result<std::time::Duration> {
    let body = reqwest::Body::wrap_stream(chunks(size, block.clone()).map(Ok::<_, std::io::Error>));
    let part = reqwest::multipart::Part::stream_with_length(body, size).file_name("bench.mkv");
    let t = Instant::now();
    let res = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/upload"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await?;
    anyhow::ensure!(
        res.status().is_success(),
        "REST upload: {}",
        res.text().await?
    );
    Ok(t.elapsed())
}

/// 8 concurrent callers × 250 ListJobs calls over gRPC: calls per second and
/// latencies.
async fn list_jobs_rate(port: u16, token: &str) -> anyhow::Result<(f64, bench::Summary)> {
    let media = MediaServiceClient::connect(format!("http://127.0.0.1:{port}")).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut media = media.clone();
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for _ in 0..250 {
                let mut req =
                    tonic::Request::new(mp3converter_proto::media::v1::ListJobsRequest::default());
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                let t = Instant::now();
                media.list_jobs(req).await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed();
    let s = bench::Summary::of(all);
    Ok((s.count as f64 / elapsed.as_secs_f64(), s))
}

/// A tus upload of `size` bytes: the creation, then 32 MiB PATCHes.
async fn tus_upload(port: u16, token: &str, size: u64, block: &bytes::Bytes) -> anyhow::Result<()> {
    const PATCH: u64 = 32 << 20;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("http://127.0.0.1:{port}/uploads"))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", size.to_string())
        .header("Upload-Metadata", "filename YmVuY2gubWt2") // bench.mkv
        .send()
        .await?;
    anyhow::ensure!(res.status() == 201, "tus creation: {}", res.text().await?);
    let url = format!(
        "http://127.0.0.1:{port}{}",
        res.headers()["location"].to_str()?
    );
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(PATCH);
        let body =
            reqwest::Body::wrap_stream(chunks(len, block.clone()).map(Ok::<_, std::io::Error>));
        let res = client
            .patch(&url)
            .bearer_auth(token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .header("Content-Length", len.to_string())
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 204, "tus PATCH: {}", res.text().await?);
        offset += len;
    }
    Ok(())
}

/// Removes every stored video and job between runs (disk space).
async fn clean(store: &Store, jobs_db: &str) -> anyhow::Result<()> {
    store.video_files.files.delete_many(doc! {}).await?;
    store.video_files.chunks.delete_many(doc! {}).await?;
    let (client, conn) = tokio_postgres::connect(jobs_db, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute("DELETE FROM outbox; DELETE FROM jobs")
        .await?;
    Ok(())
}
