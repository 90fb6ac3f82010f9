//! How often a job is claimed by two converters at once: 8 claimers on
//! separate connections race `claim` on one queued job, 200 rounds.
//!
//!     cargo run --release -p bench --bin claim-race -- --mongodb-uri mongodb://127.0.0.1:57017/

use clap::Parser;
use media_store::{Claim, Job, JobState, OutputOptions, Store, mongodb::bson::oid::ObjectId};
use std::{sync::Arc, time::Duration};
use tokio::sync::Barrier;

#[derive(Parser)]
struct Args {
    #[arg(long, env = "MONGODB_URI")]
    mongodb_uri: String,
    #[arg(long, default_value_t = 8)]
    claimers: usize,
    #[arg(long, default_value_t = 200)]
    rounds: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = test_kit::unique_name("race").replace('-', "_");
    let uri = svc_kit::config::Secret::new(args.mongodb_uri.clone());
    let mut stores = Vec::new();
    for _ in 0..args.claimers {
        stores.push(Store::new(&uri, &db, "claim-race", media_store::Timeouts::default()).await?);
    }
    let (mut doubled, mut extra, mut none) = (0, 0, 0);
    for _ in 0..args.rounds {
        let id = ObjectId::new();
        let mut job = Job::uploading(id, "u", "u@example.com", "f", "c", OutputOptions::default());
        job.state = JobState::Queued;
        job.published = true;
        stores[0].jobs.insert(&job).await?;
        let barrier = Arc::new(Barrier::new(args.claimers));
        let claims = stores.iter().enumerate().map(|(i, s)| {
            let (jobs, barrier) = (s.jobs.clone(), barrier.clone());
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
        "| {} | {} | {} | {doubled} | {extra} | {none} |",
        args.mongodb_uri, args.claimers, args.rounds
    );
    stores[0].db.drop().await?;
    Ok(())
}
