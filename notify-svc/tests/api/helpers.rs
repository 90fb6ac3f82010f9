use amqp_kit::{Publisher, event_properties};
use clap::Parser;
use mp3converter_proto::{
    EventType,
    events::v1::{ConversionFailed, FailureKind, Mp3Ready, UserNotified},
};
use notify_svc::{app::App, config::Cli};
use std::{net::SocketAddr, time::Duration};
use svc_kit::config::Secret;
use test_kit::mailpit::{Mailpit, Summary};
use tokio_util::sync::CancellationToken;

/// The REST edge the emails' commands point at.
pub const BASE_URL: &str = "http://mp3converter.test:8080";

pub struct Env {
    pub stack: test_kit::Stack,
    pub queue: String,
    /// Where the receipts go.
    pub notified_queue: String,
    pub db_url: String,
    pub mailpit: Mailpit,
    publisher: Publisher,
    retry_delays: String,
}

pub struct Instance {
    /// Where its /metrics and /readyz are.
    pub admin: SocketAddr,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn topology(delays: &str) -> amqp_kit::TopologyArgs {
    amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: delays
            .split(',')
            .map(|d| svc_kit::config::parse_duration(d).unwrap())
            .collect(),
    }
}

impl Env {
    pub async fn new(retry_delays: &str) -> Self {
        test_kit::init_tracing();
        let stack = test_kit::Stack::from_env();
        let queue = test_kit::unique_name("mp3");
        let notified_queue = test_kit::unique_name("notified");
        let db_url = stack.fresh_database("notify").await;
        let publisher = Publisher::with_topology(
            Secret::new(stack.amqp_url.clone()),
            "notify-tests",
            Duration::from_secs(10),
            vec![topology(retry_delays).work_queue(&queue)],
        );
        Self {
            mailpit: Mailpit::new(&stack.mailpit_api_url),
            stack,
            queue,
            notified_queue,
            db_url,
            publisher,
            retry_delays: retry_delays.to_owned(),
        }
    }

    /// notify-svc against the stack's Mailpit.
    pub async fn start(&self) -> Instance {
        self.start_with(&[]).await
    }

    /// notify-svc with `extra` flags after the usual ones (a later flag wins:
    /// `--smtp-port` of another server, credentials...).
    pub async fn start_with(&self, extra: &[&str]) -> Instance {
        let port = self.stack.smtp_port.to_string();
        let args = [
            "notify-svc",
            "--admin-addr",
            "127.0.0.1:0",
            "--amqp-url",
            &self.stack.amqp_url,
            "--mp3-queue",
            &self.queue,
            "--notified-queue",
            &self.notified_queue,
            "--amqp-retry-delays",
            &self.retry_delays,
            "--database-url",
            &self.db_url,
            "--smtp-host",
            &self.stack.smtp_host,
            "--smtp-port",
            &port,
            "--smtp-tls",
            "none",
            "--smtp-timeout",
            "3s",
            "--download-base-url",
            BASE_URL,
        ];
        let cfg = Cli::try_parse_from(args.iter().chain(extra).copied())
            .unwrap()
            .config;
        let app = App::build(cfg).await.unwrap();
        let admin = app.admin_addr();
        let token = CancellationToken::new();
        let handle = tokio::spawn(app.run_until(token.clone()));
        Instance {
            admin,
            token,
            handle,
        }
    }

    pub fn owner() -> String {
        format!("{}@example.com", test_kit::unique_name("owner"))
    }

    pub fn ready(owner: &str) -> Mp3Ready {
        let job = test_kit::unique_name("job");
        Mp3Ready {
            event_id: format!("mp3ready-{job}"),
            job_id: job,
            video_id: "v1".into(),
            mp3_id: test_kit::unique_name("mp3id"),
            owner_id: "u1".into(),
            owner_email: owner.into(),
            filename: "holiday.mp3".into(),
            size_bytes: 3 << 20,
            duration_seconds: 185.0,
            occur_time: None,
            expire_time: None,
            notes: Vec::new(),
        }
    }

    pub fn failed(owner: &str, reason: &str) -> ConversionFailed {
        let job = test_kit::unique_name("job");
        ConversionFailed {
            event_id: format!("failed-{job}"),
            job_id: job,
            video_id: "v1".into(),
            owner_id: "u1".into(),
            owner_email: owner.into(),
            filename: "holiday.mkv".into(),
            reason: reason.into(),
            kind: FailureKind::InvalidInput as i32,
            occur_time: None,
            source_deleted: true,
        }
    }

    pub async fn publish<E: EventType>(&self, event: &E, event_id: &str) {
        self.publisher
            .publish_event(&self.queue, event_id, event)
            .await
            .unwrap();
    }

    pub async fn publish_raw(&self, kind: &str, payload: &[u8]) {
        self.publisher
            .publish(
                &self.queue,
                payload,
                event_properties(kind, "raw", Default::default()),
            )
            .await
            .unwrap();
    }

    /// Waits until `n` emails reached `to`, then returns them.
    pub async fn emails(&self, to: &str, n: usize, timeout: Duration) -> Vec<Summary> {
        test_kit::wait_until(&format!("{n} email(s) to {to}"), timeout, || async {
            let msgs = self.mailpit.messages_to(to).await.ok()?;
            (msgs.len() >= n).then_some(msgs)
        })
        .await
    }

    /// The sent-log's row for `event_id`: (outcome, detail).
    pub async fn sent_log(&self, event_id: &str) -> Option<(String, Option<String>)> {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query_opt(
                "SELECT outcome, detail FROM sent_emails WHERE event_id = $1",
                &[&event_id],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    }

    /// Messages waiting in the work queue's dead-letter and retry queues.
    pub async fn parked_messages(&self) -> u32 {
        let conn = amqp_kit::connect(&Secret::new(self.stack.amqp_url.clone()), "parked")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = topology(&self.retry_delays).work_queue(&self.queue);
        let mut names = vec![q.dead_letter_queue()];
        names.extend((1..=q.retry_delays.len() as u32).filter_map(|a| q.retry_queue(a)));
        let mut total = 0;
        for name in names {
            let passive = amqp_kit::lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let q = ch
                .queue_declare(name.as_str().into(), passive, Default::default())
                .await
                .unwrap();
            total += q.message_count();
        }
        total
    }

    /// Takes the receipts notify-svc published so far.
    pub async fn receipts(&self) -> Vec<UserNotified> {
        let conn = amqp_kit::connect(&Secret::new(self.stack.amqp_url.clone()), "receipts")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                self.notified_queue.as_str().into(),
                amqp_kit::lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            out.push(amqp_kit::decode::<UserNotified>(&m.delivery).unwrap());
        }
        out
    }

    pub async fn cleanup(self) {
        let topology = topology(&self.retry_delays);
        test_kit::delete_work_queues(
            &self.stack.amqp_url,
            &[
                topology.work_queue(&self.queue),
                topology.work_queue(&self.notified_queue),
            ],
        )
        .await;
    }
}

impl Instance {
    /// Its /metrics page.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of a counter's samples that carry `labels`.
    pub async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        test_kit::prom::sum(&self.metrics().await, name, labels)
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
    }
}
