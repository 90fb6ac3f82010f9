//! `auth-svc user add`: how operators create accounts, straight into the
//! database (migrations are applied first).

use crate::{
    config::{AddUserArgs, Config},
    db,
    domain::{Email, Password},
    password::Hasher,
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
        1,
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
