//! RabbitMQ plumbing over lapin, shared by the publishers (gateway, converter)
//! and the consumers (converter, notify).
//!
//! Reconnection is ours rather than lapin's auto-recovery: a [`Publisher`]
//! opens a fresh connection on the next publish after a failure, and
//! consumers run [`connect`] again in their loop. That keeps the failure
//! visible (a publish during an outage fails at once and the caller answers
//! 503; health goes NOT_SERVING) and recovery has no retry budget to exhaust.

pub mod broadcast;
pub mod consumer;
pub mod dlq;
pub mod event;
mod publisher;
mod topology;
pub mod trace;

pub use event::{DecodeError, decode};
pub use publisher::{PublishError, Publisher};
pub use topology::{HINT_TTL, TopologyArgs, WorkQueue, declare_work_queue};

pub use lapin;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use std::time::Duration;
use svc_kit::config::Secret;

/// AMQP `content_type` of every event: protobuf-encoded.
pub const CONTENT_TYPE: &str = "application/protobuf";

/// Header counting our own retries of a message (see [`WorkQueue`]).
pub const ATTEMPT_HEADER: &str = "x-attempt";

/// Takes RabbitMQ's `cacertfile` query parameter (the CA an `amqps://`
/// server's certificate must chain to; without it, the public web roots)
/// out of a URL, which lapin's parser does not know.
fn split_ca(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let (mut ca, mut rest) = (None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("cacertfile", v)) => ca = Some(v.replace("%2F", "/").replace("%2f", "/")),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, ca)
}

/// The largest frame we ask for unless the URL says `frame_max`. lapin
/// keeps a send and a receive buffer of 32 frames per connection, zeroed
/// when it connects: at RabbitMQ's default of 128 KiB that is 8 MiB per
/// connection (measured: 32 of the converter's 48 MiB over its four
/// connections). Our messages are events of a few hundred bytes; a larger
/// body is simply split into more frames.
const FRAME_MAX: u32 = 16 * 1024;

/// `url` with `frame_max=FRAME_MAX` added unless it sets one.
fn with_frame_max(url: String) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|p| p.starts_with("frame_max=")) {
        return url;
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}frame_max={FRAME_MAX}")
}

/// Opens a connection, naming it so it shows in the management UI. An
/// `amqps://` URL is TLS, its certificate checked (and its name against
/// the host) against `?cacertfile=<PEM>` or the public roots.
pub async fn connect(url: &Secret, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let (url, ca) = split_ca(url.expose());
    let url = with_frame_max(url);
    let tls = match ca {
        Some(path) => lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(&path).map_err(|e| {
                lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
                    std::io::Error::new(e.kind(), format!("cacertfile {path}: {e}")),
                )))
            })?),
        },
        None => lapin::tcp::OwnedTLSConfig::default(),
    };
    let builder = lapin::DefaultConnectionBuilder::new()?
        .with_uri_str(url)
        .with_properties(props)
        .with_tls_config(tls);
    tokio::time::timeout(Duration::from_secs(10), builder.connect())
        .await
        .unwrap_or_else(|_| {
            Err(lapin::Error::from(lapin::ErrorKind::IOError(
                std::sync::Arc::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "AMQP connect timed out",
                )),
            )))
        })
}

/// Properties for an event: persistent, typed, with a message id for
/// deduplication and any extra headers.
pub fn event_properties(kind: &str, message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2) // persistent: survives a broker restart
        .with_content_type(CONTENT_TYPE.into())
        .with_type(kind.into())
        .with_message_id(message_id.into())
        .with_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        )
        .with_headers(headers)
}

/// Reads an integer header (RabbitMQ sends `x-delivery-count` as a long, our
/// `x-attempt` is a long too; accept any integer width).
pub fn header_u32(props: &BasicProperties, key: &str) -> Option<u32> {
    let headers = props.headers().as_ref()?;
    let value = headers.inner().get(&ShortString::from(key))?;
    let n: i64 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// Reads a string header.
pub fn header_str<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a str> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// How often consumers report the depth of their queues.
const DEPTH_INTERVAL: Duration = Duration::from_secs(15);

/// Sets `mp3converter_amqp_queue_messages{queue}` (messages ready) for each
/// queue every few seconds until `shutdown`: what an alert on a growing
/// backlog or a non-empty dead-letter queue watches.
pub async fn report_queue_depths(
    url: Secret,
    queues: Vec<String>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ch: Option<(Connection, lapin::Channel)> = None;
    let mut tick = tokio::time::interval(DEPTH_INTERVAL);
    // Not at once: at start the service has not declared its queues yet, and
    // a passive declare of a missing queue closes the channel with an error
    // lapin logs.
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !ch
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected())
        {
            ch = match connect(&url, "queue-depth").await {
                Ok(conn) => conn.create_channel().await.ok().map(|c| (conn, c)),
                Err(_) => None,
            };
        }
        let Some((_, channel)) = &ch else { continue };
        for q in &queues {
            match queue_depth(channel, q).await {
                Ok(n) => metrics::gauge!("mp3converter_amqp_queue_messages", "queue" => q.clone())
                    .set(f64::from(n)),
                // A missing queue closes the channel; the next round reopens it.
                Err(_) => break,
            }
        }
    }
}

/// Messages ready in a queue (passive declare: fails if it does not exist).
pub async fn queue_depth(ch: &lapin::Channel, queue: &str) -> Result<u32, lapin::Error> {
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

#[cfg(test)]
mod url_tests {
    use super::{split_ca, with_frame_max};

    #[test]
    fn frames_are_small_unless_the_url_says_otherwise() {
        assert_eq!(
            with_frame_max("amqp://h/%2f".into()),
            "amqp://h/%2f?frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqp://h/%2f?heartbeat=10".into()),
            "amqp://h/%2f?heartbeat=10&frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqp://h/%2f?frame_max=131072".into()),
            "amqp://h/%2f?frame_max=131072"
        );
    }

    #[test]
    fn the_ca_file_is_taken_out_of_the_url() {
        assert_eq!(
            split_ca("amqps://u:p@h:5671/%2f?cacertfile=/etc/ca.pem&heartbeat=10"),
            (
                "amqps://u:p@h:5671/%2f?heartbeat=10".into(),
                Some("/etc/ca.pem".into())
            )
        );
        assert_eq!(split_ca("amqp://h/%2f"), ("amqp://h/%2f".into(), None));
    }
}
