//! Emails: the SMTP transport and the two messages, rendered from the
//! templates in `templates/` (plain text and HTML).

use crate::config::{Config, SmtpTls};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::authentication::Credentials,
};
use mp3converter_proto::events::v1::{ConversionFailed, FailureKind, Mp3Ready};
use svc_kit::config::Secret;
use tracing::Instrument;

const READY_TXT: &str = include_str!("../templates/ready.txt");
const READY_HTML: &str = include_str!("../templates/ready.html");
const FAILED_TXT: &str = include_str!("../templates/failed.txt");
const FAILED_HTML: &str = include_str!("../templates/failed.html");

#[derive(Clone)]
pub(crate) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    subject_prefix: String,
    base_url: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

pub(crate) use crate::sent_log::SmtpResult;

impl Mailer {
    pub(crate) fn new(cfg: &Config) -> anyhow::Result<Self> {
        let builder = match cfg.smtp_tls {
            SmtpTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.smtp_host)
            }
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.smtp_host)?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.smtp_host)?,
        }
        .port(cfg.smtp_port)
        .timeout(Some(cfg.smtp_timeout));
        let password = Secret::resolve(
            cfg.smtp_password.as_ref(),
            cfg.smtp_password_file.as_deref(),
        )?;
        let builder = match (&cfg.smtp_username, password) {
            (Some(user), Some(pw)) => {
                builder.credentials(Credentials::new(user.clone(), pw.expose().to_owned()))
            }
            (Some(_), None) => anyhow::bail!("SMTP_USERNAME is set but no SMTP password"),
            _ => builder,
        };
        Ok(Self {
            transport: builder.build(),
            from: cfg
                .mail_from
                .parse()
                .map_err(|e| anyhow::anyhow!("MAIL_FROM is not an address: {e}"))?,
            subject_prefix: cfg.subject_prefix.clone(),
            base_url: cfg.download_base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// Whether the SMTP server answers (for readiness).
    pub(crate) async fn reachable(&self) -> bool {
        matches!(self.transport.test_connection().await, Ok(true))
    }

    pub(crate) fn ready_message(&self, to: Mailbox, e: &Mp3Ready) -> Result<Message, String> {
        let vars = [
            ("filename", e.filename.clone()),
            ("duration", human_duration(e.duration_seconds)),
            ("size", human_size(e.size_bytes)),
            ("mp3_id", e.mp3_id.clone()),
            ("base_url", self.base_url.clone()),
            ("email", e.owner_email.clone()),
        ];
        self.message(
            to,
            &e.event_id,
            &format!("Your MP3 is ready: {}", e.filename),
            render(READY_TXT, &vars, false),
            render(READY_HTML, &vars, true),
        )
    }

    pub(crate) fn failed_message(
        &self,
        to: Mailbox,
        e: &ConversionFailed,
    ) -> Result<Message, String> {
        let advice = if e.kind == FailureKind::RetriesExhausted as i32 {
            "This was a problem on our side; please try uploading it again later."
        } else {
            "Please check that the file is a video with sound, and upload it again."
        };
        let vars = [
            ("filename", e.filename.clone()),
            ("reason", e.reason.clone()),
            ("advice", advice.to_owned()),
            ("job_id", e.job_id.clone()),
        ];
        self.message(
            to,
            &e.event_id,
            &format!("We could not convert {}", e.filename),
            render(FAILED_TXT, &vars, false),
            render(FAILED_HTML, &vars, true),
        )
    }

    fn message(
        &self,
        to: Mailbox,
        event_id: &str,
        subject: &str,
        text: String,
        html: String,
    ) -> Result<Message, String> {
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(
                format!("{} {subject}", self.subject_prefix)
                    .trim()
                    .to_owned(),
            )
            // Derived from the event: if a crash makes us send twice, mail
            // clients can still tell it is the same message.
            .message_id(Some(format!("<{event_id}@mp3converter>")))
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| e.to_string())
    }

    pub(crate) async fn send(&self, msg: Message) -> SmtpResult {
        let span = tracing::info_span!(
            "smtp.send",
            otel.name = "smtp.send",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            smtp.result = tracing::field::Empty,
        );
        let res = match self.transport.send(msg).instrument(span.clone()).await {
            Ok(_) => SmtpResult::Accepted,
            Err(e) if e.is_permanent() => SmtpResult::Permanent(e.to_string()),
            Err(e) => SmtpResult::Transient(e.to_string()),
        };
        let label = match &res {
            SmtpResult::Accepted => "accepted",
            SmtpResult::Permanent(_) => "rejected",
            SmtpResult::Transient(_) => "failed",
        };
        span.record("smtp.result", label);
        if !matches!(res, SmtpResult::Accepted) {
            span.record("otel.status_code", "ERROR");
        }
        res
    }
}

/// Replaces `{name}` with its value (HTML-escaped for HTML templates).
fn render(template: &str, vars: &[(&str, String)], html: bool) -> String {
    vars.iter().fold(template.to_owned(), |out, (k, v)| {
        let v = if html { escape_html(v) } else { v.clone() };
        out.replace(&format!("{{{k}}}"), &v)
    })
}

fn escape_html(s: &str) -> String {
    s.chars()
        .fold(String::with_capacity(s.len()), |mut out, c| {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
            out
        })
}

fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_and_html_is_escaped() {
        let vars = [
            ("filename", "<b>x</b>.mp3".to_owned()),
            ("mp3_id", "42".to_owned()),
        ];
        assert_eq!(
            render("{filename} {mp3_id}", &vars, false),
            "<b>x</b>.mp3 42"
        );
        assert_eq!(
            render("{filename}", &vars, true),
            "&lt;b&gt;x&lt;/b&gt;.mp3"
        );
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_duration(185.4), "3:05");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
        assert_eq!(human_size(1500), "2 KiB");
    }
}
