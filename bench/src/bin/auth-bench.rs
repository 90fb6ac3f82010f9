//! auth-svc over gRPC: Validate throughput and latency at several concurrency
//! levels, and Login latency (the Argon2id cost).
//!
//! Starts auth-svc in-process on a fresh database of the stack's PostgreSQL
//! (`scripts/stack up`), so client and server share this machine's cores: the
//! figures are a floor for a dedicated server.
//!
//!     cargo run --release -p bench --bin auth-bench -- --duration 5s

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use auth_svc::{app::App, config::Cli};
use bench::{Summary, ms};
use clap::Parser;
use mp3converter_proto::auth::v1::{
    LoginRequest, ValidateRequest, auth_service_client::AuthServiceClient,
};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// How long each Validate level runs.
    #[arg(long, value_parser = svc_duration, default_value = "5s")]
    duration: Duration,
    /// Concurrency levels for Validate.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    concurrency: Vec<usize>,
    /// Logins measured (sequentially).
    #[arg(long, default_value_t = 30)]
    logins: usize,
}

fn svc_duration(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| e.to_string())
}

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "bench password 123";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = test_kit::Stack::from_env()
        .fresh_database("authbench")
        .await;
    let cli = Cli::try_parse_from([
        "auth-svc",
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--jwt-secret",
        "bench-secret-bench-secret-bench-secret",
        "--admin-email",
        EMAIL,
        "--admin-password",
        PASSWORD,
        "--log-filter",
        "warn",
    ])?;
    let app = App::build(cli.config).await?;
    let addr = format!("http://{}", app.grpc_addr());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until(stop.clone()));
    let client = AuthServiceClient::connect(addr).await?;

    // Login: sequential, so each figure is one Argon2id verification plus a
    // query and a signature.
    let mut login = Vec::new();
    let mut token = String::new();
    for _ in 0..args.logins {
        let t = Instant::now();
        token = client
            .clone()
            .login(LoginRequest {
                email: EMAIL.into(),
                password: PASSWORD.into(),
            })
            .await?
            .into_inner()
            .token;
        login.push(t.elapsed());
    }
    let mut wrong = Vec::new();
    for _ in 0..args.logins {
        let t = Instant::now();
        let _ = client
            .clone()
            .login(LoginRequest {
                email: EMAIL.into(),
                password: "not the password".into(),
            })
            .await;
        wrong.push(t.elapsed());
    }
    let mut unknown = Vec::new();
    for _ in 0..args.logins {
        let t = Instant::now();
        let _ = client
            .clone()
            .login(LoginRequest {
                email: "nobody@example.com".into(),
                password: PASSWORD.into(),
            })
            .await;
        unknown.push(t.elapsed());
    }

    println!(
        "\nauth-svc benchmark (in-process server, {} cores)\n",
        std::thread::available_parallelism()?
    );
    println!(
        "| operation | concurrency | requests | throughput (req/s) | p50 (ms) | p99 (ms) | max (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, samples) in [
        ("Login (valid)", login),
        ("Login (wrong password)", wrong),
        ("Login (unknown email)", unknown),
    ] {
        let s = Summary::of(samples);
        println!(
            "| {name} | 1 | {} | {:.1} | {} | {} | {} |",
            s.count,
            1.0 / s.p50.as_secs_f64(),
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }

    for &c in &args.concurrency {
        let deadline = Instant::now() + args.duration;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..c {
            let mut client = client.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    client
                        .validate(ValidateRequest {
                            token: token.clone(),
                        })
                        .await
                        .unwrap();
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
        let s = Summary::of(all);
        println!(
            "| Validate | {c} | {} | {:.0} | {} | {} | {} |",
            s.count,
            s.count as f64 / elapsed.as_secs_f64(),
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }
    stop.cancel();
    server.await??;
    Ok(())
}
