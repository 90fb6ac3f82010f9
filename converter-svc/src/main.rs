use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    converter_svc::run(converter_svc::config::Cli::parse()).await
}
