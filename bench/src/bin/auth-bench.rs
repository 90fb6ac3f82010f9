//! auth-svc over gRPC: Validate throughput and latency at several concurrency
//! levels, and Login latency (the Argon2id cost).
//!
//! Starts auth-svc in-process on a fresh database of the stack's PostgreSQL
//! (`scripts/stack up`), so client and server share this machine's cores: the
//! figures are a floor for a dedicated server.
//!
//!     cargo run --release -p bench --bin auth-bench -- --duration 5s
//!
//! `--flood`: a login flood against auth-svc as its own release process (so
//! its memory can be measured): many concurrent wrong-password logins from
//! one address, while other users log in from other addresses. Reports the
//! process's peak RSS and the valid logins' latency, with the login limits
//! on and off.
//!
//!     cargo build --release -p auth-svc -p bench
//!     cargo run --release -p bench --bin auth-bench -- --flood
//!
//! The binary is `--auth-svc-bin` (or AUTH_SVC_BIN), by default
//! `$CARGO_TARGET_DIR/release/auth-svc`, else `target/release/auth-svc`.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use auth_svc::{app::App, config::Cli};
use bench::{Summary, free_port, ms, services::JWT_SECRET, wait_for_port};
use clap::Parser;
use mp3converter_proto::auth::v1::{
    LoginRequest, ValidateRequest, auth_service_client::AuthServiceClient,
};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use test_kit::users::Admin;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, transport::Channel};

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

    /// Run the login flood instead (see the module doc).
    #[arg(long)]
    flood: bool,
    /// The auth-svc binary the flood runs.
    #[arg(long, env = "AUTH_SVC_BIN")]
    auth_svc_bin: Option<PathBuf>,
    /// What to call that binary in the table.
    #[arg(long, default_value = "this build")]
    label: String,
    /// Wrong-password logins in flight at once, all from one address.
    #[arg(long, default_value_t = 500)]
    flood_concurrency: usize,
    /// How long the flood lasts.
    #[arg(long, value_parser = svc_duration, default_value = "10s")]
    flood_duration: Duration,
    /// Each flood call's deadline, as the gateway sets one (AUTH_TIMEOUT):
    /// past it the server drops the call.
    #[arg(long, value_parser = svc_duration, default_value = "2s")]
    flood_deadline: Duration,
    /// A valid login (another user, another address) this often during the
    /// flood.
    #[arg(long, value_parser = svc_duration, default_value = "0.2s")]
    probe_every: Duration,
    /// The runs: `on` (the default limits) and/or `off` (LOGIN_LIMIT_* off:
    /// only the bounded Argon2 queue protects the service).
    #[arg(long, value_delimiter = ',', default_value = "on,off")]
    limits: Vec<String>,
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
    if args.flood {
        return flood(&args).await;
    }
    let db = test_kit::Stack::from_env()
        .fresh_database("authbench")
        .await;
    let mut flags = test_kit::flags::auth_svc(&db, JWT_SECRET, (EMAIL, PASSWORD));
    flags.extend(
        [
            "--log-filter",
            "warn",
            // Latency, not abuse: the same account logs in over and over.
            "--login-limit-per-addr",
            "off",
            "--login-limit-per-account",
            "off",
        ]
        .map(str::to_owned),
    );
    let cli = Cli::try_parse_from(flags)?;
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

/// auth-svc as a child process, killed on drop.
struct Server {
    child: Child,
    grpc: String,
}

impl Server {
    async fn start(bin: &PathBuf, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let grpc = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("GRPC_ADDR", &grpc)
            .env("ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {} (cargo build --release -p auth-svc first, or set AUTH_SVC_BIN): {e}",
                    bin.display()
                )
            })?;
        let server = Self { child, grpc };
        wait_for_port(&server.grpc).await?;
        Ok(server)
    }

    fn status(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// Resident memory now, in MiB.
    fn rss_mib(&self) -> f64 {
        self.status("VmRSS:")
    }

    /// Peak resident memory since the last reset, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        self.status("VmHWM:")
    }

    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A channel to `addr` whose connection comes from `source` (any 127.x.y.z
/// on loopback): another client address.
async fn channel_from(addr: &str, source: &str) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .local_address(Some(source.parse()?))
            .connect()
            .await?,
    )
}

fn login_req(email: &str, password: &str, deadline: Duration) -> Request<LoginRequest> {
    let mut req = Request::new(LoginRequest {
        email: email.into(),
        password: password.into(),
    });
    req.set_timeout(deadline);
    req
}

/// One flood run's figures.
struct FloodRun {
    limits: String,
    answers: BTreeMap<&'static str, usize>,
    flood_rate: f64,
    rss_before: f64,
    peak: f64,
    rss_after: f64,
    probes_ok: usize,
    probes: usize,
    probe_failures: BTreeMap<&'static str, usize>,
    latency: Summary,
}

fn code_name(code: Code) -> &'static str {
    svc_kit::error::code_name(code)
}

async fn flood_once(args: &Args, bin: &PathBuf, limits: &str) -> anyhow::Result<FloodRun> {
    let db = test_kit::Stack::from_env()
        .fresh_database("authflood")
        .await;
    let mut env = vec![
        ("DATABASE_URL", db),
        ("JWT_SECRET", JWT_SECRET.to_owned()),
        ("ADMIN_EMAIL", EMAIL.to_owned()),
        ("ADMIN_PASSWORD", PASSWORD.to_owned()),
        // The probes come through a "proxy" (127.0.0.1) naming their client;
        // the flood connects from 127.0.0.2, an untrusted peer.
        ("TRUSTED_PROXIES", "127.0.0.1/32".to_owned()),
    ];
    if limits == "off" {
        env.push(("LOGIN_LIMIT_PER_ADDR", "off".to_owned()));
        env.push(("LOGIN_LIMIT_PER_ACCOUNT", "off".to_owned()));
        env.push(("LOGIN_LIMIT_PER_ACCOUNT_ADDR", "off".to_owned()));
    }
    let server = Server::start(bin, &env).await?;
    let proxy = AuthServiceClient::new(channel_from(&server.grpc, "127.0.0.1").await?);

    // The probes' users: one login each (each account may log in 5 times a
    // minute), each from its own address. And the flood's victim.
    let admin = proxy
        .clone()
        .login(login_req(EMAIL, PASSWORD, Duration::from_secs(10)))
        .await?
        .into_inner()
        .token;
    let probes =
        (args.flood_duration.as_secs_f64() / args.probe_every.as_secs_f64()).ceil() as usize + 1;
    let victim = "victim@example.com".to_owned();
    let emails: Vec<String> = (0..probes)
        .map(|i| format!("probe{i}@example.com"))
        .chain([victim.clone()])
        .collect();
    let admin = Admin::with_token(proxy.clone(), admin);
    for email in &emails {
        admin.create_user(email, PASSWORD).await?;
    }

    let rss_before = server.rss_mib();
    server.reset_peak();

    // The flood: one address, several connections (a server takes a few
    // hundred streams per connection), every call as soon as the last ended.
    let started = Instant::now();
    let until = started + args.flood_duration;
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(channel_from(&server.grpc, "127.0.0.2").await?);
    }
    let flood: Vec<_> = (0..args.flood_concurrency)
        .map(|i| {
            let client = AuthServiceClient::new(channels[i % channels.len()].clone());
            let victim = victim.clone();
            let deadline = args.flood_deadline;
            tokio::spawn(async move {
                let mut answers = BTreeMap::<&'static str, usize>::new();
                while Instant::now() < until {
                    let res = client
                        .clone()
                        .login(login_req(&victim, "not the password", deadline))
                        .await;
                    let code = res.map_or_else(|s| s.code(), |_| Code::Ok);
                    *answers.entry(code_name(code)).or_default() += 1;
                }
                answers
            })
        })
        .collect();

    // The probes: valid logins, each a new user from a new address.
    let mut latencies = Vec::new();
    let mut probe_failures = BTreeMap::<&'static str, usize>::new();
    let mut tick = tokio::time::interval(args.probe_every);
    let mut sent = 0;
    for (i, email) in emails.iter().take(probes).enumerate() {
        tick.tick().await;
        if Instant::now() >= until {
            break;
        }
        let mut req = login_req(email, PASSWORD, Duration::from_secs(10));
        req.metadata_mut().insert(
            "x-client-addr",
            format!("198.51.100.{}", i % 250 + 1).parse()?,
        );
        let t = Instant::now();
        let res = proxy.clone().login(req).await;
        sent += 1;
        match res {
            Ok(_) => latencies.push(t.elapsed()),
            Err(s) => *probe_failures.entry(code_name(s.code())).or_default() += 1,
        }
    }

    let mut answers = BTreeMap::<&'static str, usize>::new();
    for task in flood {
        for (code, n) in task.await? {
            *answers.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    let peak = server.peak_rss_mib();
    // Give cancelled work a moment to end, then see what memory stays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.rss_mib();
    let total: usize = answers.values().sum();
    Ok(FloodRun {
        limits: limits.to_owned(),
        flood_rate: total as f64 / elapsed.as_secs_f64(),
        answers,
        rss_before,
        peak,
        rss_after,
        probes_ok: latencies.len(),
        probes: sent,
        probe_failures,
        latency: Summary::of(latencies),
    })
}

async fn flood(args: &Args) -> anyhow::Result<()> {
    let bin = args.auth_svc_bin.clone().unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("release/auth-svc")
    });
    let mut runs = Vec::new();
    for limits in &args.limits {
        runs.push(flood_once(args, &bin, limits).await?);
    }
    println!(
        "\nauth-svc login flood ({} binary {}, {} cores shared with the client): {} wrong-password \
         logins in flight from one address for {:?} (deadline {:?} each), and a valid login of \
         another user from another address every {:?}\n",
        args.label,
        bin.display(),
        std::thread::available_parallelism()?,
        args.flood_concurrency,
        args.flood_duration,
        args.flood_deadline,
        args.probe_every,
    );
    println!(
        "| auth-svc | login limits | flood answers | flood calls/s | RSS before (MiB) | peak RSS (MiB) | RSS after (MiB) | valid logins ok | p50 (ms) | p99 (ms) | max (ms) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let list = |m: &BTreeMap<&str, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for r in runs {
        let failed = if r.probe_failures.is_empty() {
            String::new()
        } else {
            format!(" ({})", list(&r.probe_failures))
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {}/{}{failed} | {} | {} | {} |",
            args.label,
            r.limits,
            list(&r.answers),
            r.flood_rate,
            r.rss_before,
            r.peak,
            r.rss_after,
            r.probes_ok,
            r.probes,
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.max),
        );
    }
    Ok(())
}
