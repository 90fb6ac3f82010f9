//! `auth-svc user add|disable|enable`: how operators manage accounts,
//! straight into the database (migrations are applied first).

use crate::{
    config::{AddUserArgs, Config, UserRef},
    db,
    domain::{Email, Password},
    password::{Hasher, Limits},
};
use std::io::BufRead;

pub async fn add_user(config: &Config, args: AddUserArgs) -> anyhow::Result<()> {
    let email = Email::parse(&args.email).map_err(|why| anyhow::anyhow!("email {why}"))?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let line = line.trim_end_matches(['\n', '\r']);
    let password = Password::new_user(line).map_err(|why| anyhow::anyhow!("password {why}"))?;

    let pool = db::pool(&config.database_url, 2, config.db_timeout)?;
    db::migrate(&pool).await?;
    let hasher = Hasher::new(
        config.argon2_memory_kib,
        config.argon2_iterations,
        config.argon2_parallelism,
        Limits::ONE_AT_A_TIME,
    )
    .await?;
    let hash = hasher.hash(password).await?;
    let user = db::insert_user(&pool, email.as_str(), &hash, args.admin).await?;
    tracing::info!(user_id = %user.id, admin = user.admin, "user added");
    // The one line a script wants back.
    #[allow(clippy::print_stdout)]
    {
        println!("{}", user.id);
    }
    Ok(())
}

/// Disables (ending every token the user holds) or enables a user.
pub async fn set_disabled(config: &Config, user: UserRef, disabled: bool) -> anyhow::Result<()> {
    let email = Email::parse(&user.email).map_err(|why| anyhow::anyhow!("email {why}"))?;
    let pool = db::pool(&config.database_url, 2, config.db_timeout)?;
    db::migrate(&pool).await?;
    let user = db::set_disabled(&pool, db::UserKey::Email(email.as_str()), disabled)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no user has the email {}", email.as_str()))?;
    tracing::info!(user_id = %user.id, disabled, "user disabled flag set");
    #[allow(clippy::print_stdout)]
    {
        println!("{}", user.id);
    }
    Ok(())
}
