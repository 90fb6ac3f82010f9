//! How often a job is claimed by two converters at once: 8 claimers on
//! separate connections race `claim` on one queued job, 200 rounds, against
//! the job store (PostgreSQL). (Against the MongoDB store this replaced,
//! see this file at 2aab250: FerretDB let 198–199 of 200 rounds be won
//! twice or more.)
//!
//!     cargo run --release -p bench --bin claim-race

#![allow(clippy::print_stdout)]

use clap::Parser;
use media_store::{Claim, DatabaseArgs, Job, JobState, Jobs, Routes, mongodb::bson::oid::ObjectId};
use std::{sync::Arc, time::Duration};
use svc_kit::config::Secret;
use tokio::sync::Barrier;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 8)]
    claimers: usize,
    #[arg(long, default_value_t = 200)]
    rounds: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = test_kit::Stack::from_env();
    let db = test_kit::unique_name("race").replace('-', "_");
    let url = stack.database(&db).await;
    let routes = || Routes {
        video_queue: "video".into(),
        mp3_queue: "mp3".into(),
        webhook_queue: "webhooks".into(),
        delete_sources: true,
    };
    let mut claimers = vec![
        Jobs::connect(
            &DatabaseArgs {
                database_url: Secret::new(url.clone()),
                db_pool_size: 1,
                db_timeout: Duration::from_secs(10),
            },
            "claim-race",
            routes(),
        )
        .await?,
    ];
    for _ in 1..args.claimers {
        let pool = svc_kit::pg::pool(
            &Secret::new(url.clone()),
            1,
            Duration::from_secs(10),
            "claim-race",
        )?;
        claimers.push(Jobs::new(pool, routes()));
    }
    let (mut doubled, mut extra, mut none) = (0, 0, 0);
    for _ in 0..args.rounds {
        let mut job = Job::uploading(
            ObjectId::new(),
            "u",
            "u@example.com",
            "f",
            "c",
            Default::default(),
        );
        job.state = JobState::Queued;
        claimers[0].insert(&job).await?;
        let barrier = Arc::new(Barrier::new(args.claimers));
        let claims = claimers.iter().enumerate().map(|(i, jobs)| {
            let (jobs, barrier, id) = (jobs.clone(), barrier.clone(), job.id);
            tokio::spawn(async move {
                barrier.wait().await;
                jobs.claim(id, &format!("claimer-{i}"), Duration::from_secs(30))
                    .await
            })
        });
        let won = futures::future::join_all(claims)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(Claim::Claimed(_)))))
            .count();
        match won {
            0 => none += 1,
            1 => {}
            n => {
                doubled += 1;
                extra += n - 1;
            }
        }
    }
    println!(
        "| store | claimers | rounds | rounds won twice or more | extra winners | rounds nobody won |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| PostgreSQL | {} | {} | {doubled} | {extra} | {none} |",
        args.claimers, args.rounds
    );
    stack.drop_database(&db).await;
    Ok(())
}
