#![allow(unreachable_pub, clippy::unwrap_used)]

//! The outbox relay against the stack's PostgreSQL and RabbitMQ: an event
//! committed with its transition is published once the broker takes it,
//! kept (and retried) while it cannot, and never published twice.

use amqp_kit::{Publisher, TopologyArgs};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use media_store::{
    DatabaseArgs, Job, JobState, Jobs, Routes, mongodb::bson::oid::ObjectId, outbox::Relay,
};
use std::time::Duration;
use svc_kit::config::Secret;

#[tokio::test]
async fn an_event_is_published_once_and_kept_until_the_broker_takes_it() {
    let stack = test_kit::Stack::from_env();
    let db = test_kit::unique_name("outbox").replace('-', "_");
    let queue = test_kit::unique_name("video");
    let jobs = Jobs::connect(
        &DatabaseArgs {
            database_url: Secret::new(stack.database(&db).await),
            db_pool_size: 2,
            db_timeout: Duration::from_secs(5),
        },
        "outbox-test",
        Routes {
            video_queue: queue.clone(),
            mp3_queue: "mp3".into(),
            webhook_queue: "webhooks".into(),
            delete_sources: true,
        },
    )
    .await
    .unwrap();
    let mut j = Job::uploading(
        ObjectId::new(),
        "owner",
        "owner@example.com",
        "clip.mkv",
        "video/x-matroska",
        Default::default(),
    );
    j.state = JobState::Uploading;
    jobs.insert(&j).await.unwrap();
    jobs.commit_upload(j.id, 10).await.unwrap().unwrap();

    // The broker cannot be reached: the event stays, counted.
    let nowhere = Publisher::new(
        Secret::new("amqp://u:p@127.0.0.1:1/%2f".to_owned()),
        "outbox-test",
        Duration::from_secs(2),
    );
    assert!(Relay::new(&jobs, nowhere).drain().await.is_err());
    let events = jobs.events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(!events[0].2, "not sent");

    // It can: published, marked sent; a second pass sends nothing.
    let topology = TopologyArgs {
        delivery_limit: 5,
        retry_delays: vec![Duration::from_secs(1)],
    }
    .work_queue(&queue);
    let publisher = Publisher::with_topology(
        Secret::new(stack.amqp_url.clone()),
        "outbox-test",
        Duration::from_secs(10),
        vec![topology.clone()],
    );
    let relay = Relay::new(&jobs, publisher);
    relay.drain().await.unwrap();
    relay.drain().await.unwrap();
    assert!(jobs.events().await.unwrap()[0].2, "sent");

    let conn = amqp_kit::connect(&Secret::new(stack.amqp_url.clone()), "outbox-test")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(m)) = ch
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
    {
        got.push(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default(),
        );
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(got, vec![format!("video-{}", j.id.to_hex())], "once");
    test_kit::delete_work_queues(&stack.amqp_url, &[topology]).await;
    stack.drop_database(&db).await;
}
