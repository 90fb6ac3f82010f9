//! Emails: the two messages, rendered from the templates in `templates/`
//! (plain text and HTML), and sending them through the SMTP client.
//!
//! Everything in an email from outside the server (file names, the reason,
//! the owner's address) is text: shown cleaned of control and bidi
//! characters, HTML-escaped in HTML, and in the shell commands either
//! replaced by a server-made name or single-quoted (see `render`).

use crate::{
    config::Config,
    render::{
        as_text, escape_html, for_display, human_duration, human_size, output_file_name, render,
        shell_quote,
    },
    sent_log::SmtpResult,
    smtp::SmtpClient,
};
use lettre::{
    Message,
    message::{Mailbox, MultiPart},
};
use mp3converter_proto::events::v1::{ConversionFailed, FailureKind, Mp3Ready};
use tracing::Instrument;

const READY_TXT: &str = include_str!("../templates/ready.txt");
const READY_HTML: &str = include_str!("../templates/ready.html");
const FAILED_TXT: &str = include_str!("../templates/failed.txt");
const FAILED_HTML: &str = include_str!("../templates/failed.html");

#[derive(Clone)]
pub(crate) struct Mailer {
    smtp: SmtpClient,
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

type Vars = Vec<(&'static str, Option<String>)>;

/// An email's words, before they become a MIME message.
#[derive(Debug)]
struct Email {
    subject: String,
    text: String,
    html: String,
}

impl Mailer {
    pub(crate) fn new(cfg: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            smtp: SmtpClient::new(cfg)?,
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
        self.smtp.check().await.is_ok()
    }

    /// "Your MP3 is ready", with the commands to download it.
    pub(crate) fn ready_message(&self, to: Mailbox, e: &Mp3Ready) -> Result<Message, String> {
        self.message(to, &e.event_id, self.ready_email(e)?)
    }

    /// "We could not convert", with the reason and what to do about it.
    pub(crate) fn failed_message(
        &self,
        to: Mailbox,
        e: &ConversionFailed,
    ) -> Result<Message, String> {
        self.message(to, &e.event_id, self.failed_email(e))
    }

    /// Fails if the MP3 id is not one the server makes: it goes into a URL
    /// and a command as it is.
    fn ready_email(&self, e: &Mp3Ready) -> Result<Email, String> {
        if !is_server_id(&e.mp3_id) {
            return Err(format!("malformed mp3_id {:?}", e.mp3_id));
        }
        let filename = for_display(&e.filename);
        let vars: Vars = vec![
            ("filename", Some(filename.clone())),
            ("duration", Some(human_duration(e.duration_seconds))),
            ("size", Some(human_size(e.size_bytes))),
            ("expire_time", e.expire_time.as_ref().and_then(utc_minute)),
            ("mp3_id", Some(e.mp3_id.clone())),
            (
                "notes",
                (!e.notes.is_empty()).then(|| {
                    e.notes
                        .iter()
                        .map(|n| for_display(n))
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
            ),
            ("base_url", Some(self.base_url.clone())),
            ("login_user", Some(shell_quote(&e.owner_email))),
            (
                "output_file",
                Some(shell_quote(&output_file_name(&e.filename))),
            ),
        ];
        Ok(self.email(
            &format!("Your MP3 is ready: {filename}"),
            &vars,
            (READY_TXT, READY_HTML),
        ))
    }

    fn failed_email(&self, e: &ConversionFailed) -> Email {
        let filename = for_display(&e.filename);
        let vars: Vars = vec![
            ("filename", Some(filename.clone())),
            ("reason", Some(for_display(&e.reason))),
            // A flag: its line is there only when the video was deleted.
            ("if_source_deleted", e.source_deleted.then(String::new)),
            ("advice", Some(advice(e.kind()).to_owned())),
            ("job_id", Some(for_display(&e.job_id))),
        ];
        self.email(
            &format!("We could not convert {filename}"),
            &vars,
            (FAILED_TXT, FAILED_HTML),
        )
    }

    fn email(&self, subject: &str, vars: &Vars, (text, html): (&str, &str)) -> Email {
        Email {
            subject: for_display(&format!("{} {subject}", self.subject_prefix)),
            text: render(text, vars, as_text),
            html: render(html, vars, escape_html),
        }
    }

    fn message(&self, to: Mailbox, event_id: &str, email: Email) -> Result<Message, String> {
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject)
            // Derived from the event: if a crash makes us send twice, mail
            // clients can still tell it is the same message.
            .message_id(Some(format!("<{event_id}@mp3converter>")))
            .multipart(MultiPart::alternative_plain_html(email.text, email.html))
            .map_err(|e| e.to_string())
    }

    /// Sends `msg`: accepted, refused for good (only the recipient can be),
    /// or to be retried. Failures are counted by class in
    /// `mp3converter_smtp_failures_total`.
    pub(crate) async fn send(&self, msg: Message) -> SmtpResult {
        let span = tracing::info_span!(
            "smtp.send",
            otel.name = "smtp.send",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            smtp.result = tracing::field::Empty,
            smtp.failure_class = tracing::field::Empty,
        );
        let res = self
            .smtp
            .send(msg.envelope(), &msg.formatted())
            .instrument(span.clone())
            .await;
        let failure = match res {
            Ok(()) => {
                span.record("smtp.result", "accepted");
                return SmtpResult::Accepted;
            }
            Err(f) => f,
        };
        let class = failure.class.label();
        metrics::counter!("mp3converter_smtp_failures_total", "class" => class).increment(1);
        span.record("otel.status_code", "ERROR");
        // No log here: the consumer logs the retry with this reason; a
        // refusal is logged by the handler and kept in the sent-log.
        span.record("smtp.failure_class", class);
        if failure.permanent {
            span.record("smtp.result", "rejected");
            SmtpResult::Permanent(failure.to_string())
        } else {
            span.record("smtp.result", "failed");
            SmtpResult::Transient(failure.to_string())
        }
    }
}

/// What the user can do, by why the conversion failed.
fn advice(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::InvalidInput => {
            "Please check that the file is a video with sound, and upload it again."
        }
        FailureKind::RetriesExhausted | FailureKind::TimedOut => {
            "This was a problem on our side; please try uploading it again later."
        }
        FailureKind::Unspecified => "You can try uploading it again.",
    }
}

/// An id the server made (a hex ObjectId; tests use `mp3id-…`): safe in a
/// URL, a JSON string and a shell word as it is.
fn is_server_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// `2026-12-08 14:05`, in UTC; the seconds are cut, so the time shown is never
/// later than the real one.
fn utc_minute(t: &prost_types::Timestamp) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn mailer() -> Mailer {
        let cli = crate::config::Cli::try_parse_from([
            "notify-svc",
            "--amqp-url=amqp://x",
            "--database-url=postgres://x",
            "--smtp-tls=none",
            "--download-base-url=http://mp3converter.test:8080/",
        ])
        .unwrap();
        Mailer::new(&cli.config).unwrap()
    }

    fn ready(filename: &str) -> Mp3Ready {
        Mp3Ready {
            event_id: "e1".into(),
            mp3_id: "65f1c0ffee".into(),
            owner_email: "o'brien@example.com".into(),
            filename: filename.into(),
            size_bytes: 3 << 20,
            duration_seconds: 185.0,
            ..Default::default()
        }
    }

    fn failed(kind: FailureKind, source_deleted: bool) -> ConversionFailed {
        ConversionFailed {
            event_id: "e2".into(),
            job_id: "j1".into(),
            filename: "clip.mkv".into(),
            reason: "no audio track".into(),
            kind: kind as i32,
            source_deleted,
            ..Default::default()
        }
    }

    #[test]
    fn the_ready_email_quotes_what_goes_into_commands() {
        let m = mailer().ready_email(&ready("$(touch X).mp3")).unwrap();
        let curl = r#"curl --fail --output '_touch_X_.mp3' -X GET -H "Authorization: Bearer $TOKEN" "http://mp3converter.test:8080/download?fid=65f1c0ffee""#;
        assert!(m.text.contains(curl), "{}", m.text);
        // In HTML, the template's own quotes stay; the values' are escaped.
        let in_html = |s: &str| s.replace('\'', "&#39;");
        assert!(m.html.contains(&in_html(curl)), "{}", m.html);
        let login = r#"TOKEN=$(curl --fail -X POST "http://mp3converter.test:8080/login" -u 'o'\''brien@example.com') &&"#;
        assert!(m.text.contains(login), "{}", m.text);
        assert!(m.html.contains(&in_html(login)), "{}", m.html);
        // The name, for humans, as it is (HTML-escaped in HTML).
        assert!(m.text.contains("\"$(touch X).mp3\""), "{}", m.text);
        assert_eq!(
            m.subject,
            "[mp3converter] Your MP3 is ready: $(touch X).mp3"
        );
    }

    #[test]
    fn notes_on_the_mp3_are_said_and_only_when_there_are_some() {
        let plain = mailer().ready_email(&ready("a.mp3")).unwrap();
        assert!(!plain.text.contains("Note:"), "{}", plain.text);
        let mut e = ready("a.mp3");
        e.notes = vec!["the video has 2 audio tracks; the MP3 holds the first <b>".into()];
        let m = mailer().ready_email(&e).unwrap();
        assert!(
            m.text
                .contains("Note: the video has 2 audio tracks; the MP3 holds the first <b>."),
            "{}",
            m.text
        );
        assert!(m.html.contains("holds the first &lt;b&gt;."), "{}", m.html);
    }

    #[test]
    fn the_ready_email_says_until_when_the_mp3_is_kept_only_if_it_is_not_forever() {
        let forever = mailer().ready_email(&ready("a.mp3")).unwrap();
        assert!(!forever.text.contains("deleted"), "{}", forever.text);
        assert!(!forever.html.contains("deleted"), "{}", forever.html);
        let mut e = ready("a.mp3");
        e.expire_time = Some(prost_types::Timestamp {
            seconds: 1_796_738_759, // 2026-12-08 14:05:59 UTC
            nanos: 0,
        });
        let kept = mailer().ready_email(&e).unwrap();
        let said = "It will be deleted on 2026-12-08 14:05 (UTC)";
        assert!(kept.text.contains(said), "{}", kept.text);
        assert!(kept.html.contains(said), "{}", kept.html);
    }

    #[test]
    fn a_malformed_mp3_id_builds_no_email() {
        let mut e = ready("a.mp3");
        e.mp3_id = "x\" onmouseover=\"alert(1)".into();
        assert!(mailer().ready_email(&e).is_err());
        e.mp3_id = String::new();
        assert!(mailer().ready_email(&e).is_err());
    }

    #[test]
    fn the_failure_email_says_nothing_was_kept_only_when_so() {
        let kept = mailer().failed_email(&failed(FailureKind::InvalidInput, false));
        assert!(!kept.text.contains("kept"), "{}", kept.text);
        assert!(!kept.html.contains("kept"), "{}", kept.html);
        assert!(kept.text.contains("a video with sound"), "{}", kept.text);
        for kind in [FailureKind::RetriesExhausted, FailureKind::TimedOut] {
            let deleted = mailer().failed_email(&failed(kind, true));
            assert!(
                deleted.text.contains("Nothing was kept."),
                "{}",
                deleted.text
            );
            assert!(
                deleted.html.contains("Nothing was kept."),
                "{}",
                deleted.html
            );
            assert!(
                deleted.text.contains("a problem on our side"),
                "{}",
                deleted.text
            );
        }
    }

    #[test]
    fn subjects_cannot_be_split_or_reordered() {
        let e = ready("a\r\nBcc: x@example.org\u{202E}.mp3");
        let m = mailer()
            .ready_message("a@example.com".parse().unwrap(), &e)
            .unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        let headers = &raw[..raw.find("\r\n\r\n").unwrap()];
        assert!(!headers.contains("\r\nBcc:"), "{headers}");
        let email = mailer().ready_email(&e).unwrap();
        assert_eq!(
            email.subject,
            "[mp3converter] Your MP3 is ready: a  Bcc: x@example.org.mp3"
        );
        assert!(!email.text.contains('\u{202E}') && !email.html.contains('\u{202E}'));
    }
}
