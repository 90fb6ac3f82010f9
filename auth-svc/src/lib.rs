//! auth-svc: users in PostgreSQL, Login that returns a JWT, Validate for the
//! gateway, Logout and ChangePassword for users, CreateUser and
//! SetUserDisabled for admins.

pub mod app;
pub mod cli;
pub mod config;
mod db;
mod domain;
mod error;
mod grpc;
mod password;
pub mod ratelimit;
pub mod token;

/// The binary's commands: serve (until SIGTERM/SIGINT, then drained) or
/// manage users.
pub async fn run(cli: config::Cli) -> anyhow::Result<()> {
    let telemetry = cli.config.telemetry.clone();
    let Some(config::Command::User { action }) = cli.command else {
        return svc_kit::service::serve(&telemetry, || app::App::build(cli.config)).await;
    };
    svc_kit::telemetry::run(
        "auth-svc",
        &telemetry,
        Box::pin(async {
            match action {
                config::UserCommand::Add(args) => cli::add_user(&cli.config, args).await,
                config::UserCommand::Disable(user) => {
                    cli::set_disabled(&cli.config, user, true).await
                }
                config::UserCommand::Enable(user) => {
                    cli::set_disabled(&cli.config, user, false).await
                }
            }
        }),
    )
    .await
}
