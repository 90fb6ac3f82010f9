//! What an SMTP failure means. Only a permanent refusal of the *recipient*
//! (no such mailbox, mailbox disabled) is given up on: every other failure
//! (our credentials, the relay's policy, the server, the network) says nothing
//! about the user's address, so the email is retried and an operator is told
//! through `mp3converter_smtp_failures_total{class}`.
//!
//! A reply is read by its enhanced status code (RFC 3463, `5.1.1`) when it
//! has one, else by its basic code and the command it answered (a plain 550
//! to `RCPT TO` refuses the recipient; to `MAIL FROM`, our sender).

use lettre::transport::smtp::Error as SmtpError;
use std::fmt;

/// The step of the SMTP conversation a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// TCP, TLS, the greeting and EHLO.
    Connect,
    /// `AUTH`.
    Auth,
    /// `MAIL FROM`: the server judges our sender.
    MailFrom,
    /// `RCPT TO`: the server judges the recipient.
    RcptTo,
    /// `DATA` and the message itself.
    Data,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Auth => "AUTH",
            Self::MailFrom => "MAIL FROM",
            Self::RcptTo => "RCPT TO",
            Self::Data => "DATA",
        })
    }
}

/// Whose problem a failure is; the `class` label of the failures metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The recipient's address or mailbox (no such user, mailbox disabled).
    Recipient,
    /// Our SMTP credentials (wrong, expired, or not sent).
    Auth,
    /// The relay's policy refused us (relaying denied, our sender refused).
    Relay,
    /// The server could not take the message now (4xx, 554, odd replies).
    Server,
    /// The server could not be reached or talked to (TCP, TLS, timeout).
    Connection,
}

impl Class {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Recipient => "recipient",
            Self::Auth => "auth",
            Self::Relay => "relay",
            Self::Server => "server",
            Self::Connection => "connection",
        }
    }
}

/// One failed SMTP conversation, judged.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) stage: Stage,
    pub(crate) class: Class,
    /// The recipient is refused for good: retrying cannot help.
    pub(crate) permanent: bool,
    detail: String,
}

/// `[auth] AUTH: 535 5.7.8 Authentication credentials invalid`: for the
/// logs, the retry's reason and the sent-log.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}: {}",
            self.class.label(),
            self.stage,
            self.detail
        )
    }
}

impl Failure {
    /// Judges an error of lettre's at `stage`.
    pub(crate) fn from_smtp(stage: Stage, err: &SmtpError) -> Self {
        let ((class, permanent), detail) = match err.status() {
            Some(code) => {
                let (code, text) = (u16::from(code), reply_text(err));
                (judge_reply(stage, code, &text), format!("{code} {text}"))
            }
            // lettre's words ("permanent error") would mislead for replies.
            None => ((transport_class(stage, err), false), err.to_string()),
        };
        Self {
            stage,
            class,
            permanent,
            detail,
        }
    }

    /// The conversation outlived its deadline.
    pub(crate) fn timed_out(stage: Stage) -> Self {
        Self {
            stage,
            class: Class::Connection,
            permanent: false,
            detail: "no answer before the SMTP timeout".into(),
        }
    }
}

/// The text of the server's reply (every line, joined), without the code.
fn reply_text(err: &SmtpError) -> String {
    std::error::Error::source(err)
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// Failures without a reply: nothing was said about the recipient.
fn transport_class(stage: Stage, err: &SmtpError) -> Class {
    if err.is_client() && stage == Stage::Auth {
        // e.g. "No compatible authentication mechanism was found".
        Class::Auth
    } else if err.is_response() {
        // The server answered something we could not parse.
        Class::Server
    } else {
        Class::Connection
    }
}

/// Judges a negative reply `code text` to the command of `stage`: its class,
/// and whether it refuses the recipient for good.
pub(crate) fn judge_reply(stage: Stage, code: u16, text: &str) -> (Class, bool) {
    let class = reply_class(stage, code, enhanced_code(code, text), text);
    (class, class == Class::Recipient && code >= 500)
}

/// Enhanced status codes (`X.7.Y`) about authentication (RFC 4954, RFC 5248):
/// credentials invalid, mechanism too weak, encryption needed, password
/// transition needed, account disabled, trust relationship required.
const AUTH_DETAILS: &[u16] = &[8, 9, 10, 11, 12, 13, 14];

fn reply_class(stage: Stage, code: u16, enhanced: Option<(u16, u16)>, text: &str) -> Class {
    // 530 authentication required, 534 mechanism too weak, 535 credentials
    // invalid, 538 encryption required: whatever the enhanced code says.
    if stage == Stage::Auth || matches!(code, 530 | 534 | 535 | 538) {
        return Class::Auth;
    }
    let about_recipient = matches!(stage, Stage::RcptTo | Stage::Data);
    match enhanced {
        Some((7, detail)) if AUTH_DETAILS.contains(&detail) => Class::Auth,
        // X.7.1 delivery not authorized (relaying denied), other policies.
        Some((7, _)) => Class::Relay,
        // X.1.7 / X.1.8: the sender's address, which is ours.
        Some((1, 7 | 8)) => Class::Relay,
        // X.1.x bad destination mailbox or address; X.2.1 mailbox disabled,
        // X.2.2 mailbox full (a 5xx one is the server saying it stays full).
        Some((1, _) | (2, 1 | 2)) if about_recipient => Class::Recipient,
        Some((1, _)) if stage == Stage::MailFrom => Class::Relay,
        Some(_) => Class::Server,
        None => plain_reply_class(stage, code, text),
    }
}

/// A reply without an enhanced code: its basic code means something about the
/// recipient only as the answer to `RCPT TO`, and not when its words say it
/// is about relaying or authentication ("550 relay not permitted").
fn plain_reply_class(stage: Stage, code: u16, text: &str) -> Class {
    let text = text.to_ascii_lowercase();
    if text.contains("authenticat") {
        return Class::Auth;
    }
    if text.contains("relay") {
        return Class::Relay;
    }
    match (stage, code) {
        // 550 mailbox unavailable, 551 user not local, 553 mailbox name not
        // allowed.
        (Stage::RcptTo, 550 | 551 | 553) => Class::Recipient,
        (Stage::MailFrom, 550 | 553) => Class::Relay,
        _ => Class::Server,
    }
}

/// The enhanced status code a reply's text starts with, as (subject, detail),
/// if its class agrees with the basic code (RFC 2034: `550 5.1.1 ...`).
fn enhanced_code(code: u16, text: &str) -> Option<(u16, u16)> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.split('.');
    let class: u16 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && class == code / 100).then_some((subject, detail))
}

#[cfg(test)]
mod tests {
    use super::{Stage::*, *};
    use lettre::transport::smtp::response::Response;

    /// Judges a reply exactly as a server sends it (CRLF-terminated lines,
    /// `-` continuations), parsed by lettre as a real conversation would be.
    fn judge(stage: Stage, reply: &str) -> (Class, bool) {
        let reply = reply.replace('\n', "\r\n");
        let response: Response = reply.parse().unwrap();
        let text = response.message().collect::<Vec<_>>().join(" ");
        judge_reply(stage, u16::from(response.code()), &text)
    }

    const REJECTED: (Class, bool) = (Class::Recipient, true);

    #[test]
    fn unknown_or_disabled_recipients_are_refused_for_good() {
        let cases = [
            // Postfix
            "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in local recipient table\n",
            // Gmail, three lines
            "550-5.1.1 The email account that you tried to reach does not exist. Please try\n\
             550-5.1.1 double-checking the recipient's email address for typos or\n\
             550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser\n",
            // Exchange Online
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup\n",
            "550 5.1.2 <a@no-such-domain.example>: Recipient address rejected: Domain not found\n",
            "501 5.1.3 Bad recipient address syntax\n",
            // Mailpit with --smtp-allowed-recipients
            "550 5.1.0 Requested action not taken: mailbox unavailable\n",
            "550 5.2.1 The email account that you tried to reach is disabled.\n",
            "552 5.2.2 The email account that you tried to reach is over quota.\n",
        ];
        for reply in cases {
            assert_eq!(judge(RcptTo, reply), REJECTED, "{reply}");
        }
        // Some servers check the recipient only once they have the message.
        assert_eq!(
            judge(Data, "550 5.1.1 <nobody@example.com>: user unknown\n"),
            REJECTED
        );
    }

    #[test]
    fn plain_recipient_codes_count_only_as_answers_to_rcpt_to() {
        for reply in [
            "550 Requested action not taken: mailbox unavailable\n",
            "551 User not local; please try <b@example.org>\n",
            "553 Requested action not taken: mailbox name not allowed\n",
        ] {
            assert_eq!(judge(RcptTo, reply), REJECTED, "{reply}");
            assert_ne!(judge(MailFrom, reply).0, Class::Recipient, "{reply}");
            assert!(!judge(MailFrom, reply).1, "{reply}");
            assert_eq!(judge(Data, reply), (Class::Server, false), "{reply}");
        }
    }

    #[test]
    fn authentication_failures_are_retried() {
        let cases = [
            // Mailpit, Gmail, Office 365, a plain one
            "535 5.7.8 Authentication credentials invalid\n",
            "535-5.7.8 Username and Password not accepted. For more information, go to\n\
             535 5.7.8  https://support.google.com/mail/?p=BadCredentials\n",
            "535 5.7.3 Authentication unsuccessful\n",
            "535 Authentication failed\n",
            "534-5.7.9 Application-specific password required.\n534 5.7.9 https://support.google.com/mail/?p=InvalidSecondFactor\n",
            "454 4.7.0 Temporary authentication failure\n",
        ];
        for reply in cases {
            assert_eq!(judge(Auth, reply), (Class::Auth, false), "{reply}");
        }
        // Not authenticated at all: refused at MAIL FROM or RCPT TO.
        for stage in [MailFrom, RcptTo, Data] {
            assert_eq!(
                judge(stage, "530 5.7.0 Authentication required\n"),
                (Class::Auth, false)
            );
        }
        assert_eq!(
            judge(RcptTo, "550 5.7.13 User account disabled\n"),
            (Class::Auth, false)
        );
        assert_eq!(
            judge(RcptTo, "550 Authentication is required for relay\n"),
            (Class::Auth, false)
        );
    }

    #[test]
    fn relay_and_policy_denials_are_retried() {
        let cases = [
            (RcptTo, "554 5.7.1 <a@example.org>: Relay access denied\n"),
            (RcptTo, "550 5.7.1 Unable to relay\n"),
            (RcptTo, "550 relay not permitted\n"),
            (RcptTo, "550 Relaying denied\n"),
            (
                MailFrom,
                "553 5.1.8 <noreply@mp3converter.com>: Sender address rejected: Domain not found\n",
            ),
            (
                MailFrom,
                "550 5.7.1 <noreply@mp3converter.com>: Sender address rejected: not owned by user\n",
            ),
            (MailFrom, "550 Sender rejected\n"),
            (RcptTo, "550 5.1.7 Invalid sender mailbox\n"),
            (
                RcptTo,
                "421 4.7.0 Try again later, closing connection. (RCPT)\n",
            ),
        ];
        for (stage, reply) in cases {
            assert_eq!(judge(stage, reply), (Class::Relay, false), "{reply}");
        }
    }

    #[test]
    fn server_and_transaction_errors_are_retried() {
        let cases = [
            (Data, "554 Transaction failed\n"),
            (Data, "554 5.6.0 Message content rejected\n"),
            (Data, "451 4.3.0 Error: queue file write error\n"),
            (RcptTo, "452 4.3.1 Insufficient system storage\n"),
            (RcptTo, "452 4.5.3 Too many recipients\n"),
            (
                MailFrom,
                "421 4.4.2 mx.example.com Error: timeout exceeded\n",
            ),
            (
                RcptTo,
                "421 Service not available, closing transmission channel\n",
            ),
            (Connect, "554 mx.example.com ESMTP not accepting messages\n"),
            (
                RcptTo,
                "450 4.2.0 <a@example.org>: Recipient address rejected: Greylisted\n",
            ),
            (Data, "552 5.3.4 Message size exceeds fixed limit\n"),
        ];
        for (stage, reply) in cases {
            assert_eq!(judge(stage, reply), (Class::Server, false), "{reply}");
        }
    }

    #[test]
    fn a_transient_recipient_problem_is_retried() {
        assert_eq!(
            judge(RcptTo, "452 4.2.2 Mailbox full\n"),
            (Class::Recipient, false)
        );
        assert_eq!(
            judge(
                RcptTo,
                "450 4.1.1 Recipient address verification in progress\n"
            ),
            (Class::Recipient, false)
        );
    }

    #[test]
    fn an_enhanced_code_of_another_class_is_ignored() {
        // "5.1.1" under a 4xx reply contradicts itself: the basic code rules.
        assert_eq!(
            judge(RcptTo, "450 5.1.1 user unknown\n"),
            (Class::Server, false)
        );
        assert_eq!(enhanced_code(550, "5.1.1 x"), Some((1, 1)));
        assert_eq!(enhanced_code(550, "5.1 x"), None);
        assert_eq!(enhanced_code(550, "5.1.1.1 x"), None);
        assert_eq!(enhanced_code(550, "mailbox 5.1.1"), None);
    }

    #[test]
    fn errors_without_a_reply_are_connection_problems() {
        // A real one: nothing listens on a port we just freed.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(async {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            lettre::transport::smtp::client::AsyncSmtpConnection::connect_tokio1(
                ("127.0.0.1", port),
                Some(std::time::Duration::from_secs(2)),
                &Default::default(),
                None,
                None,
            )
            .await
            .err()
            .unwrap()
        });
        let failure = Failure::from_smtp(Connect, &err);
        assert_eq!(
            (failure.class, failure.permanent),
            (Class::Connection, false)
        );
        assert!(
            failure.to_string().starts_with("[connection] connect: "),
            "{failure}"
        );
        assert_eq!(Failure::timed_out(Data).class, Class::Connection);
    }
}
