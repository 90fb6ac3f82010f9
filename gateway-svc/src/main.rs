use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gateway_svc::run(gateway_svc::config::Config::parse()).await
}
