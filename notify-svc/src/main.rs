use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    notify_svc::run(notify_svc::config::Cli::parse()).await
}
