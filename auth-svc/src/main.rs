use auth_svc::{
    app::App,
    config::{Cli, Command, UserCommand},
};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    svc_kit::telemetry::init(&cli.config.telemetry)?;
    match cli.command {
        None | Some(Command::Serve) => {
            let app = App::build(cli.config).await?;
            app.run_until(svc_kit::shutdown::on_signal()).await
        }
        Some(Command::User {
            action: UserCommand::Add(args),
        }) => auth_svc::cli::add_user(&cli.config, args).await,
    }
}
