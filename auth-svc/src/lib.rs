//! auth-svc: users in PostgreSQL, Login that returns a JWT, Validate for the
//! gateway, CreateUser for admins.

pub mod app;
pub mod cli;
pub mod config;
mod db;
mod domain;
mod error;
mod grpc;
mod password;
pub mod token;

/// The binary's commands: serve (until SIGTERM/SIGINT, then drained) or
/// manage users.
pub async fn run(cli: config::Cli) -> anyhow::Result<()> {
    let telemetry = cli.config.telemetry.clone();
    svc_kit::telemetry::run(
        "auth-svc",
        &telemetry,
        Box::pin(async {
            match cli.command {
                None | Some(config::Command::Serve) => {
                    app::App::build(cli.config)
                        .await?
                        .run_until(svc_kit::shutdown::on_signal())
                        .await
                }
                Some(config::Command::User {
                    action: config::UserCommand::Add(args),
                }) => cli::add_user(&cli.config, args).await,
            }
        }),
    )
    .await
}
