use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = notify_svc::config::Config::parse();
    svc_kit::telemetry::init(&config.telemetry)?;
    let app = notify_svc::app::App::build(config).await?;
    app.run_until(svc_kit::shutdown::on_signal()).await
}
