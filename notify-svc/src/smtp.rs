//! The SMTP client: one conversation per email, driven command by command so
//! that a refusal is judged by the command it answered (see `classify`);
//! lettre's transport only says that *something* failed.
//!
//! The password is read again from `SMTP_PASSWORD_FILE` whenever the server
//! refuses our credentials, so a rotated Kubernetes Secret takes effect
//! without a restart.

use crate::{
    classify::{Class, Failure, Stage},
    config::{Config, SmtpTls},
};
use lettre::{
    address::Envelope,
    transport::smtp::{
        authentication::{Credentials, DEFAULT_MECHANISMS},
        client::{AsyncSmtpConnection, TlsParameters},
        commands::{Data, Mail, Rcpt},
        extension::{ClientId, Extension, MailBodyParameter, MailParameter},
    },
};
use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};
use svc_kit::config::Secret;

#[derive(Debug, Clone)]
pub(crate) struct SmtpClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    host: String,
    port: u16,
    security: Security,
    /// Deadline of a whole conversation, connection included.
    timeout: Duration,
    hello: ClientId,
    login: Option<Login>,
}

enum Security {
    Plain,
    StartTls(TlsParameters),
    Implicit(TlsParameters),
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain => "Plain",
            Self::StartTls(_) => "StartTls",
            Self::Implicit(_) => "Implicit",
        })
    }
}

/// Our credentials. `Secret` keeps the password out of `Debug` and logs.
#[derive(Debug)]
struct Login {
    username: String,
    password: RwLock<Secret>,
    /// Where the password came from, if from a file: read again after an
    /// authentication failure.
    file: Option<PathBuf>,
}

impl SmtpClient {
    pub(crate) fn new(cfg: &Config) -> anyhow::Result<Self> {
        let ca = match &cfg.smtp_ca_file {
            Some(path) => Some(
                lettre::transport::smtp::client::Certificate::from_pem(
                    &std::fs::read(path)
                        .map_err(|e| anyhow::anyhow!("SMTP_CA_FILE {}: {e}", path.display()))?,
                )
                .map_err(|e| anyhow::anyhow!("SMTP_CA_FILE {}: {e}", path.display()))?,
            ),
            None => None,
        };
        // The server's certificate must name SMTP_HOST and chain to
        // SMTP_CA_FILE when given, else to the public roots.
        let tls = || match &ca {
            Some(ca) => TlsParameters::builder(cfg.smtp_host.clone())
                .add_root_certificate(ca.clone())
                .build_rustls(),
            None => TlsParameters::new(cfg.smtp_host.clone()),
        };
        let security = match cfg.smtp_tls {
            SmtpTls::None => Security::Plain,
            SmtpTls::Starttls => Security::StartTls(tls()?),
            SmtpTls::Tls => Security::Implicit(tls()?),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                host: cfg.smtp_host.clone(),
                port: cfg.smtp_port,
                security,
                timeout: cfg.smtp_timeout,
                hello: ClientId::default(),
                login: login(cfg)?,
            }),
        })
    }

    /// Sends one email to the envelope's recipients.
    pub(crate) async fn send(&self, envelope: &Envelope, email: &[u8]) -> Result<(), Failure> {
        let job = Job::Send { envelope, email };
        match self.attempt(job).await {
            // The password may have been rotated under us: with the new one,
            // try again now rather than after the retry's backoff.
            Err(f) if f.class == Class::Auth && self.reload_password() => self.attempt(job).await,
            other => other,
        }
    }

    /// Connects, says hello and goodbye (for readiness). It does not log in:
    /// a probe every few seconds would log in thousands of times a day, and
    /// with a wrong password could get the account locked; credentials are
    /// judged by the sends (the `auth` failures).
    pub(crate) async fn check(&self) -> Result<(), Failure> {
        self.attempt(Job::Check).await
    }

    /// Connects, does `job`, and says goodbye; all within the deadline.
    /// `stage` follows the conversation, so a failure (or the deadline) is
    /// judged by the command it happened at.
    async fn attempt(&self, job: Job<'_>) -> Result<(), Failure> {
        let mut stage = Stage::Connect;
        let conversation = async {
            let mut conn = self.connect().await?;
            let res = match job {
                Job::Send { envelope, email } => {
                    self.deliver(&mut conn, &mut stage, envelope, email).await
                }
                Job::Check => noop(&mut conn).await,
            };
            match &res {
                Ok(()) => {
                    let _ = conn.quit().await;
                }
                Err(_) => conn.abort().await,
            }
            res
        };
        // Bound first: the conversation borrows `stage` until it is dropped.
        let res = tokio::time::timeout(self.inner.timeout, conversation).await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::from_smtp(stage, &e)),
            Err(_) => Err(Failure::timed_out(stage)),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        let i = &self.inner;
        let implicit = match &i.security {
            Security::Implicit(p) => Some(p.clone()),
            _ => None,
        };
        let addr = (i.host.as_str(), i.port);
        let mut conn =
            AsyncSmtpConnection::connect_tokio1(addr, Some(i.timeout), &i.hello, implicit, None)
                .await?;
        if let Security::StartTls(p) = &i.security {
            conn.starttls(p.clone(), &i.hello).await?;
        }
        Ok(conn)
    }

    /// AUTH, MAIL FROM, RCPT TO, DATA: what lettre's transport does, one
    /// step at a time.
    async fn deliver(
        &self,
        conn: &mut AsyncSmtpConnection,
        stage: &mut Stage,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<(), lettre::transport::smtp::Error> {
        *stage = Stage::Auth;
        self.log_in(conn).await?;
        *stage = Stage::MailFrom;
        let options = mail_options(conn, envelope, email);
        conn.command(Mail::new(envelope.from().cloned(), options))
            .await?;
        *stage = Stage::RcptTo;
        for to in envelope.to() {
            conn.command(Rcpt::new(to.clone(), vec![])).await?;
        }
        *stage = Stage::Data;
        conn.command(Data).await?;
        conn.message(email).await?;
        Ok(())
    }

    async fn log_in(
        &self,
        conn: &mut AsyncSmtpConnection,
    ) -> Result<(), lettre::transport::smtp::Error> {
        let Some(login) = &self.inner.login else {
            return Ok(());
        };
        let credentials = Credentials::new(login.username.clone(), login.current().expose().into());
        conn.auth(DEFAULT_MECHANISMS, &credentials).await?;
        Ok(())
    }

    /// Reads the password file again; true if the password changed.
    fn reload_password(&self) -> bool {
        let Some(login) = &self.inner.login else {
            return false;
        };
        let Some(file) = &login.file else {
            return false;
        };
        match Secret::from_file(file) {
            Ok(new) if new != login.current() => {
                tracing::info!(file = %file.display(), "SMTP password file changed; using the new password");
                *login.password.write().unwrap_or_else(|p| p.into_inner()) = new;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the SMTP password file again");
                false
            }
        }
    }
}

/// What a conversation is for.
#[derive(Clone, Copy)]
enum Job<'a> {
    Send {
        envelope: &'a Envelope,
        email: &'a [u8],
    },
    /// NOOP, without logging in.
    Check,
}

impl Login {
    fn current(&self) -> Secret {
        self.password
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `SMTP_USERNAME` with `SMTP_PASSWORD` (which wins) or `SMTP_PASSWORD_FILE`.
fn login(cfg: &Config) -> anyhow::Result<Option<Login>> {
    let password = Secret::resolve(
        cfg.smtp_password.as_ref(),
        cfg.smtp_password_file.as_deref(),
    )?;
    match (&cfg.smtp_username, password) {
        (Some(username), Some(password)) => Ok(Some(Login {
            username: username.clone(),
            password: RwLock::new(password),
            file: match cfg.smtp_password {
                Some(_) => None,
                None => cfg.smtp_password_file.clone(),
            },
        })),
        (Some(_), None) => anyhow::bail!("SMTP_USERNAME is set but no SMTP password"),
        (None, _) => Ok(None),
    }
}

/// SMTPUTF8 for non-ASCII addresses and 8BITMIME for a non-ASCII message, when
/// the server offers them (else the server refuses, and we retry).
fn mail_options(
    conn: &AsyncSmtpConnection,
    envelope: &Envelope,
    email: &[u8],
) -> Vec<MailParameter> {
    let offers = |e| conn.server_info().supports_feature(e);
    let mut options = Vec::new();
    let non_ascii_address = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
    if non_ascii_address && offers(Extension::SmtpUtfEight) {
        options.push(MailParameter::SmtpUtfEight);
    }
    if !email.is_ascii() && offers(Extension::EightBitMime) {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    options
}

async fn noop(conn: &mut AsyncSmtpConnection) -> Result<(), lettre::transport::smtp::Error> {
    conn.command(lettre::transport::smtp::commands::Noop)
        .await
        .map(drop)
}
