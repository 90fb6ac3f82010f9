//! Publishing with publisher confirms, `mandatory` set, over one shared
//! channel that is re-opened after a failure.

use lapin::{
    BasicProperties, Channel, Connection, options::BasicPublishOptions,
    options::ConfirmSelectOptions,
};
use std::{sync::Arc, time::Duration};
use svc_kit::config::Secret;
use tokio::sync::Mutex;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot reach the broker: {0}")]
    Connect(#[source] lapin::Error),
    #[error("publish failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound to routing key `{0}`: the message was returned")]
    Unroutable(String),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    /// A metric label.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Connect(_) | Self::Amqp(_) => "failed",
            Self::Nacked => "nacked",
            Self::Unroutable(_) => "unroutable",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// A confirm-mode channel shared by every task of the process. lapin channels
/// are safe to use concurrently, and each publish waits for its own confirm,
/// so many uploads publish at once over one connection.
#[derive(Clone, Debug)]
pub struct Publisher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: Secret,
    name: String,
    confirm_timeout: Duration,
    topology: Vec<crate::WorkQueue>,
    state: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    /// Does not connect: the first publish does, so a service can start while
    /// the broker is still coming up.
    pub fn new(url: Secret, name: impl Into<String>, confirm_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                url,
                name: name.into(),
                confirm_timeout,
                topology: Vec::new(),
                state: Mutex::new(None),
            }),
        }
    }

    /// Queues to declare on every (re)connect, so publishes are routable even
    /// before any consumer has started (e.g. converters scaled to zero).
    pub fn with_topology(
        url: Secret,
        name: impl Into<String>,
        confirm_timeout: Duration,
        topology: Vec<crate::WorkQueue>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                url,
                name: name.into(),
                confirm_timeout,
                topology,
                state: Mutex::new(None),
            }),
        }
    }

    /// A channel in confirm mode, re-opening the connection if it broke.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut state = self.inner.state.lock().await;
        if let Some((conn, ch)) = state.as_ref() {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
            tracing::warn!("AMQP publisher connection lost; reconnecting");
        }
        *state = None;
        let conn = crate::connect(&self.inner.url, &self.inner.name)
            .await
            .map_err(PublishError::Connect)?;
        let ch = conn.create_channel().await.map_err(PublishError::Connect)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(PublishError::Connect)?;
        for queue in &self.inner.topology {
            crate::declare_work_queue(&ch, queue)
                .await
                .map_err(PublishError::Connect)?;
        }
        *state = Some((conn, ch.clone()));
        Ok(ch)
    }

    /// Messages ready in `queue`, asked on a channel of its own (a missing
    /// queue closes the channel it is asked on).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, PublishError> {
        self.channel().await?;
        let conn = {
            let state = self.inner.state.lock().await;
            match state.as_ref() {
                Some((conn, _)) => conn.create_channel().await.map_err(PublishError::Connect)?,
                None => return Err(PublishError::Nacked),
            }
        };
        let depth = crate::queue_depth(&conn, queue).await;
        let _ = conn.close(200, "done".into()).await;
        Ok(depth?)
    }

    /// Checks that the broker is reachable (used by readiness).
    pub async fn check(&self) -> Result<(), PublishError> {
        self.channel().await.map(drop)
    }

    /// Publishes to `routing_key` on the default exchange and waits until the
    /// broker confirms it has taken responsibility for the message (for a
    /// quorum queue: written to a majority). A message no queue takes is
    /// `Unroutable`, not silently dropped.
    ///
    /// Runs in a producer span whose trace context goes out in the message
    /// headers.
    pub async fn publish(
        &self,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let span = tracing::info_span!(
            "amqp.publish",
            otel.name = %format_args!("publish {routing_key}"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.destination.name = routing_key,
            messaging.message.id = props.message_id().as_ref().map(|m| m.as_str()),
            messaging.message.body.size = payload.len(),
        );
        let props = crate::trace::with_context(props, &span);
        let res = self
            .publish_confirmed(routing_key, payload, props)
            .instrument(span.clone())
            .await;
        if let Err(e) = &res {
            span.record("otel.status_code", "ERROR");
            metrics::counter!("mp3converter_amqp_published_total", "queue" => routing_key.to_owned(), "outcome" => e.outcome()).increment(1);
        } else {
            metrics::counter!("mp3converter_amqp_published_total", "queue" => routing_key.to_owned(), "outcome" => "confirmed").increment(1);
        }
        res
    }

    async fn publish_confirmed(
        &self,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let ch = self.channel().await?;
        let res = tokio::time::timeout(self.inner.confirm_timeout, async {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    payload,
                    props,
                )
                .await?
                .await?;
            Ok::<_, lapin::Error>(confirm)
        })
        .await;
        let confirm = match res {
            Err(_) => {
                self.reset().await;
                return Err(PublishError::Timeout(self.inner.confirm_timeout));
            }
            Ok(Err(err)) => {
                self.reset().await;
                return Err(err.into());
            }
            Ok(Ok(c)) => c,
        };
        if !confirm.is_ack() {
            return Err(PublishError::Nacked);
        }
        // An unroutable mandatory message is acked *and* returned.
        if confirm.take_message().is_some() {
            return Err(PublishError::Unroutable(routing_key.to_owned()));
        }
        Ok(())
    }

    /// Drops the channel so the next publish reconnects.
    async fn reset(&self) {
        *self.inner.state.lock().await = None;
    }
}
