//! The job store with data in it: ListJobs p50/p99 for a user with 10,000
//! jobs among 200,000 jobs of 1,000 users (through the gateway's gRPC API
//! and the store call alone), and the janitor's round time on the same data
//! (the gateway's `mp3converter_janitor_round_duration_seconds`).
//!
//!     cargo build --release -p auth-svc -p gateway-svc -p bench
//!     target/release/jobs-bench

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use bench::{
    Proc, Summary, ms,
    services::{self, Listeners},
    wait_for_port,
};
use clap::Parser;
use media_store::{DatabaseArgs, Jobs, Routes};
use mp3converter_proto::media::v1::{ListJobsRequest, media_service_client::MediaServiceClient};
use std::time::{Duration, Instant};
use svc_kit::config::Secret;
use test_kit::users::Admin;

#[derive(Parser)]
struct Args {
    /// Jobs in all.
    #[arg(long, default_value_t = 200_000)]
    jobs: i64,
    /// Users they belong to.
    #[arg(long, default_value_t = 1_000)]
    users: i64,
    /// Jobs of the user whose list is timed.
    #[arg(long, default_value_t = 10_000)]
    mine: i64,
    /// Calls timed per measurement.
    #[arg(long, default_value_t = 500)]
    calls: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = test_kit::Stack::from_env();
    let name = test_kit::unique_name("jobsbench").replace('-', "_");
    let jobs_url = stack.database(&name).await;
    let jobs = Jobs::connect(
        &DatabaseArgs {
            database_url: Secret::new(jobs_url.clone()),
            db_pool_size: 4,
            db_timeout: Duration::from_secs(10),
        },
        "jobs-bench",
        Routes {
            video_queue: "video".into(),
            mp3_queue: "mp3".into(),
            webhook_queue: "webhooks".into(),
            delete_sources: true,
        },
    )
    .await?;

    // auth-svc and a gateway, as processes of their own.
    let (_auth, auth_addr) = services::start_auth(&stack, "jobsbenchauth").await?;
    wait_for_port(&auth_addr).await?;
    let lister = Admin::connect(&auth_addr, services::ADMIN)
        .await?
        .user("lister@example.com", "lister password")
        .await?;
    let (me, token) = (lister.id, lister.token);

    // The data: the lister's jobs, then everyone else's, in every state.
    let t = Instant::now();
    let client = jobs.pool().get().await?;
    client
        .execute(
            "INSERT INTO jobs (id, owner_id, owner_email, filename, content_type, size_bytes, \
               state, options, mp3_id, mp3_size_bytes, announced_at, notified, expires_at, \
               created_at, updated_at) \
             SELECT lpad(to_hex(g), 24, '0'), \
               CASE WHEN g <= $1::bigint THEN $3::text ELSE 'user-' || (g % $2::bigint) END, \
               'u@example.com', 'clip ' || g || '.mp4', 'video/mp4', 20000000, \
               s.state, '{\"encoding\": {\"vbr\": {\"quality\": 2}}}', \
               CASE WHEN s.state = 'done' THEN lpad(to_hex(g), 24, 'f') END, \
               CASE WHEN s.state = 'done' THEN 1000000 END, \
               now() - interval '1 hour', true, now() + (g || ' s')::interval, \
               now() - (g || ' s')::interval, now() - (g || ' s')::interval \
             FROM generate_series(1, $4::bigint) g, \
               LATERAL (SELECT (ARRAY['done','done','done','failed','queued','deleted'])[1 + g % 6] AS state) s",
            &[&args.mine, &(args.users - 1), &me, &args.jobs],
        )
        .await?;
    client.batch_execute("ANALYZE jobs").await?;
    println!(
        "{} jobs of {} users ({} of the lister's) written in {:.1} s",
        args.jobs,
        args.users,
        args.mine,
        t.elapsed().as_secs_f64()
    );

    let listeners = Listeners::new();
    let (grpc, admin_port) = (listeners.grpc, listeners.admin);
    let mut env = listeners.gateway_vars(&auth_addr);
    env.extend(services::store_vars(&stack, &name, &jobs_url));
    env.extend([
        ("VIDEO_QUEUE", test_kit::unique_name("jobsbench-video")),
        ("JANITOR_INTERVAL", "1s".into()),
    ]);
    let _gateway = Proc::start("gateway-svc", &env)?;
    wait_for_port(&format!("127.0.0.1:{grpc}")).await?;
    let mut media = MediaServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await?;
    let list = |page_token: String| {
        let mut r = tonic::Request::new(ListJobsRequest {
            page_size: 20,
            page_token,
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };

    // First pages and deep pages (a token 5,000 jobs in), through the API.
    let mut first = Vec::new();
    let mut deep = Vec::new();
    let deep_token = format!("{:0>24}", format!("{:x}", args.mine / 2));
    for _ in 0..args.calls {
        let t = Instant::now();
        let res = media.list_jobs(list(String::new())).await?.into_inner();
        first.push(t.elapsed());
        assert_eq!(res.jobs.len(), 20);
        let t = Instant::now();
        media.list_jobs(list(deep_token.clone())).await?;
        deep.push(t.elapsed());
    }
    // The store call alone.
    let mut store = Vec::new();
    for _ in 0..args.calls {
        let t = Instant::now();
        jobs.list_visible(&me, None, 21).await?;
        store.push(t.elapsed());
    }
    println!(
        "\n## ListJobs, a user with {} jobs among {}\n",
        args.mine, args.jobs
    );
    println!("| call | n | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|---:|");
    for (what, s) in [
        ("gRPC ListJobs, first page (20)", first),
        ("gRPC ListJobs, a page 5,000 jobs in", deep),
        ("the store's list_visible alone", store),
    ] {
        let s = Summary::of(s);
        println!(
            "| {what} | {} | {} | {} | {} |",
            s.count,
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }

    // The janitor's rounds on the same data: read off the gateway's metrics.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await?
        .text()
        .await?;
    let value = |key: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let count = value("mp3converter_janitor_round_duration_seconds_count");
    let sum = value("mp3converter_janitor_round_duration_seconds_sum");
    // The smallest bucket every round fits in.
    let all_within = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("mp3converter_janitor_round_duration_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once('"')?;
            Some((
                le.parse::<f64>().ok()?,
                rest.rsplit(' ').next()?.parse::<f64>().ok()?,
            ))
        })
        .find(|(_, n)| *n >= count)
        .map_or(f64::NAN, |(le, _)| le);
    println!("\n## The janitor on the same data\n");
    println!(
        "Its rounds (each deletes up to 100 sources and 100 tombstones' files in GridFS): \
         {count} rounds, mean {:.1} ms, every one within {:.0} ms.\n",
        sum / count * 1000.0,
        all_within * 1000.0
    );
    // Its queries alone (read-only ones), each a batch of 100.
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let mut table = Vec::new();
    for what in [
        "stuck",
        "unnotified",
        "abandoned uploads",
        "sources to delete",
        "old tombstones",
    ] {
        let mut t = Vec::new();
        for _ in 0..50 {
            let s = Instant::now();
            match what {
                "stuck" => drop(jobs.stuck(hour_ago, 100).await?),
                "unnotified" => drop(jobs.unnotified(hour_ago, 3, 100).await?),
                "abandoned uploads" => drop(jobs.abandoned_uploads(hour_ago, 100).await?),
                "sources to delete" => drop(jobs.sources_to_delete(hour_ago, 100).await?),
                _ => drop(jobs.old_tombstones(hour_ago, 100).await?),
            }
            t.push(s.elapsed());
        }
        table.push((what, Summary::of(t)));
    }
    println!("| janitor query (batch of 100) | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|");
    for (what, s) in table {
        println!("| {what} | {} | {} |", ms(s.p50), ms(s.p99));
    }
    drop(client);
    stack.drop_database(&name).await;
    Ok(())
}
