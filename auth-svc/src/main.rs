use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    auth_svc::run(auth_svc::config::Cli::parse()).await
}
