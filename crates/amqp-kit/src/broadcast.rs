//! Best-effort fan-out of small notifications (job state and progress) to
//! every replica that listens, through a fanout exchange:
//!
//! ```text
//!  Broadcaster ──► <exchange> (fanout) ──► one exclusive queue per listening
//!                                          replica (max-length, drop-head)
//! ```
//!
//! Unlike the work queues, nothing here is durable or confirmed: these are
//! hints for live views (the job document stays the source of truth), and a
//! slow or lost notification must never hold up a conversion. A listener's
//! queue is bounded (the oldest notifications are dropped first), dies with
//! its connection, and a (re)connected listener is told so it can resync.

use futures::StreamExt;
use lapin::{
    BasicProperties, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use std::time::Duration;
use svc_kit::config::Secret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Notifications waiting to go out; beyond this they are dropped.
const OUTBOX: usize = 1024;

/// Notifications a listener's queue keeps before dropping the oldest.
const LISTENER_QUEUE_MAX: i64 = 10_000;

/// Publishes notifications to a fanout exchange from a background task.
#[derive(Debug, Clone)]
pub struct Broadcaster {
    tx: mpsc::Sender<(&'static str, Vec<u8>)>,
}

impl Broadcaster {
    /// Starts the publishing task; it connects on the first notification and
    /// stops when every clone of the broadcaster is dropped.
    pub fn start(url: Secret, name: impl Into<String>, exchange: impl Into<String>) -> Self {
        let (tx, rx) = mpsc::channel(OUTBOX);
        tokio::spawn(publish_loop(url, name.into(), exchange.into(), rx));
        Self { tx }
    }

    /// Queues a notification of AMQP type `kind`; never waits. Dropped (and
    /// counted) if the outbox is full.
    pub fn send(&self, kind: &'static str, payload: Vec<u8>) {
        if self.tx.try_send((kind, payload)).is_err() {
            metrics::counter!("mp3converter_amqp_broadcast_dropped_total").increment(1);
        }
    }
}

async fn declare_exchange(ch: &lapin::Channel, exchange: &str) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

async fn publish_loop(
    url: Secret,
    name: String,
    exchange: String,
    mut rx: mpsc::Receiver<(&'static str, Vec<u8>)>,
) {
    let mut conn: Option<(lapin::Connection, lapin::Channel)> = None;
    while let Some((kind, payload)) = rx.recv().await {
        if !conn
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected())
        {
            conn = open(&url, &name, &exchange).await;
        }
        let Some((_, ch)) = &conn else {
            metrics::counter!("mp3converter_amqp_broadcast_dropped_total").increment(1);
            continue;
        };
        let props = BasicProperties::default()
            .with_delivery_mode(1) // transient
            .with_content_type(crate::CONTENT_TYPE.into())
            .with_type(kind.into());
        let sent = ch
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &payload,
                props,
            )
            .await;
        if sent.is_err() {
            conn = None;
            metrics::counter!("mp3converter_amqp_broadcast_dropped_total").increment(1);
        }
    }
}

async fn open(
    url: &Secret,
    name: &str,
    exchange: &str,
) -> Option<(lapin::Connection, lapin::Channel)> {
    let conn = crate::connect(url, name).await.ok()?;
    let ch = conn.create_channel().await.ok()?;
    declare_exchange(&ch, exchange).await.ok()?;
    Some((conn, ch))
}

/// What a listener is told.
#[derive(Debug)]
pub enum Heard {
    /// (Re)connected: notifications may have been missed before this.
    Connected,
    /// A notification: its AMQP type and payload.
    Message { kind: String, payload: Vec<u8> },
}

/// Listens to `exchange` through a queue of our own until `shutdown`,
/// reconnecting with backoff; calls `on` for everything heard.
pub async fn listen(
    url: Secret,
    name: String,
    exchange: String,
    shutdown: CancellationToken,
    mut on: impl FnMut(Heard) + Send,
) {
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let res = listen_once(&url, &name, &exchange, &shutdown, &mut on).await;
        if shutdown.is_cancelled() {
            break;
        }
        if let Err(e) = res {
            tracing::warn!(error = %e, %exchange, retry_in = ?backoff, "notification listener lost; reconnecting");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

async fn listen_once(
    url: &Secret,
    name: &str,
    exchange: &str,
    shutdown: &CancellationToken,
    on: &mut (impl FnMut(Heard) + Send),
) -> Result<(), lapin::Error> {
    let conn = crate::connect(url, name).await?;
    let ch = conn.create_channel().await?;
    declare_exchange(&ch, exchange).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(LISTENER_QUEUE_MAX),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    // Server-named, exclusive: it belongs to this connection and goes with it.
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    ch.queue_bind(
        q.name().clone(),
        exchange.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            format!("{name}-listener").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    on(Heard::Connected);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = conn.close(200, "shutting down".into()).await;
                return Ok(());
            }
            d = consumer.next() => d,
        };
        match next {
            Some(Ok(d)) => on(Heard::Message {
                kind: d
                    .properties
                    .kind()
                    .as_ref()
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
                payload: d.data,
            }),
            Some(Err(e)) => return Err(e),
            None => {
                return Err(lapin::Error::from(
                    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                ));
            }
        }
    }
}
