//! The HTTP client of webhook deliveries, built so a user's URL cannot reach
//! what it must not: every name is resolved through the operator's egress
//! policy (only allowed addresses are connected to, so a name that
//! re-resolves to a private address between registration and delivery is
//! still refused), literal addresses are judged before sending, redirects
//! are not followed, no proxy from the environment is used, and every
//! attempt is bounded in time and in the bytes of the answer read.

use media_store::webhooks::{Attempt, EgressArgs};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::{sync::Arc, time::Duration};

/// Bytes of an answer read (and thrown away) before the connection is let go.
const MAX_ANSWER: usize = 64 << 10;
/// The longest error kept in the delivery log.
const MAX_ERROR: usize = 300;

/// A signed message, ready to go.
#[derive(Debug)]
pub(crate) struct Message<'a> {
    pub(crate) url: &'a str,
    pub(crate) id: &'a str,
    pub(crate) timestamp: i64,
    pub(crate) signature: &'a str,
    pub(crate) body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub(crate) struct Egress {
    client: reqwest::Client,
    policy: EgressArgs,
}

/// Resolves names through the egress policy.
#[derive(Debug)]
struct Guarded(EgressArgs);

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs = policy
                .resolve_host(name.as_str(), 0)
                .await
                .map_err(|why| -> Box<dyn std::error::Error + Send + Sync> { why.into() })?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl Egress {
    pub(crate) fn new(policy: EgressArgs, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .dns_resolver(Arc::new(Guarded(policy.clone())))
            .user_agent(concat!("mp3converter-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, policy })
    }

    /// One attempt: POSTs `m`, reads at most [`MAX_ANSWER`] bytes of the
    /// answer, and says how it went.
    pub(crate) async fn send(&self, m: Message<'_>) -> Attempt {
        let failed = |status: Option<u16>, error: String| Attempt::Failed {
            status,
            error: bounded(error),
        };
        // Literal addresses never reach the resolver: judged here, with the
        // policy of now (it may have changed since registration).
        let url = match self.policy.check_url(m.url) {
            Ok(u) => u,
            Err(why) => return failed(None, why),
        };
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", m.id)
            .header("webhook-timestamp", m.timestamp.to_string())
            .header("webhook-signature", m.signature)
            .body(m.body)
            .send()
            .await;
        let mut answer = match sent {
            Ok(a) => a,
            Err(e) => return failed(None, describe(&e)),
        };
        let status = answer.status();
        // Drained a little, so a well-behaved server's connection is reused;
        // never more, so a flood costs nothing.
        let mut read = 0usize;
        while read < MAX_ANSWER {
            match answer.chunk().await {
                Ok(Some(c)) => read += c.len(),
                Ok(None) | Err(_) => break,
            }
        }
        let code = status.as_u16();
        if status.is_success() {
            Attempt::Delivered { status: code }
        } else if status.is_redirection() {
            failed(
                Some(code),
                format!("answered {status}: redirects are not followed"),
            )
        } else {
            failed(Some(code), format!("answered {status}"))
        }
    }
}

/// A client error in words: the whole chain (the resolver's refusal is deep
/// inside), without the URL's query, which may hold the user's tokens.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    let mut chain = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    if chain.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", chain.join(": "))
    }
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_ERROR {
        let mut end = MAX_ERROR;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}
