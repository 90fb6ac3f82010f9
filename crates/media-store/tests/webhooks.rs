#![allow(unreachable_pub, clippy::unwrap_used)]

//! Webhook deliveries against the stack's PostgreSQL: an outcome makes one
//! delivery per endpoint of its owner in the transition's own transaction
//! (announcing it again makes none twice), owners reach only their own
//! endpoints, the per-user limit holds against racing registrations, and a
//! delivery's state only moves forward.

use media_store::{
    DatabaseArgs, Finish, Job, JobState, Jobs, Mp3Facts, Routes,
    mongodb::bson::oid::ObjectId,
    webhooks::{Attempt, DeliveryState, Refusal},
};
use mp3converter_proto::{EventType, events::v1::WebhookDue};
use std::time::{Duration, SystemTime};
use svc_kit::config::Secret;

async fn jobs(pool_size: usize) -> (String, Jobs) {
    let stack = test_kit::Stack::from_env();
    let name = test_kit::unique_name("webhooks").replace('-', "_");
    let url = stack.database(&name).await;
    let args = DatabaseArgs {
        database_url: Secret::new(url),
        db_pool_size: pool_size,
        db_timeout: Duration::from_secs(10),
    };
    let routes = Routes {
        video_queue: "video".into(),
        mp3_queue: "mp3".into(),
        webhook_queue: "webhooks".into(),
        delete_sources: false,
    };
    (
        name,
        Jobs::connect(&args, "webhooks-test", routes).await.unwrap(),
    )
}

fn converting(owner: &str) -> Job {
    let mut j = Job::uploading(
        ObjectId::new(),
        owner,
        "owner@example.com",
        "clip.mkv",
        "video/x-matroska",
        Default::default(),
    );
    j.state = JobState::Converting;
    j.size_bytes = 10;
    j.lease_holder = Some("c".into());
    j.lease_until = Some(SystemTime::now() + Duration::from_secs(60));
    j
}

async fn register(jobs: &Jobs, owner: &str) -> String {
    let (e, secret) = jobs
        .create_webhook(owner, "https://hooks.example.com/x", "", 10)
        .await
        .unwrap()
        .unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    e.id
}

async fn dues(jobs: &Jobs) -> usize {
    jobs.events()
        .await
        .unwrap()
        .iter()
        .filter(|(kind, _, _)| kind == WebhookDue::TYPE)
        .count()
}

#[tokio::test]
async fn an_outcome_makes_one_delivery_per_endpoint_once() {
    let (db, jobs) = jobs(4).await;
    let a = register(&jobs, "alice").await;
    let b = register(&jobs, "alice").await;
    register(&jobs, "bob").await;

    let j = converting("alice");
    jobs.insert(&j).await.unwrap();
    let facts = Mp3Facts {
        id: ObjectId::new(),
        size_bytes: 1,
        duration_seconds: 1.0,
        expires_at: None,
        notes: Vec::new(),
    };
    let Finish::Moved(done) = jobs.finish_done(j.id, Some("c"), facts).await.unwrap() else {
        panic!("not finished");
    };
    let list = jobs.webhook_deliveries("alice", None, 100).await.unwrap();
    assert_eq!(list.len(), 2);
    let mut endpoints: Vec<_> = list.iter().map(|d| d.endpoint_id.clone()).collect();
    endpoints.sort();
    let mut want = vec![a.clone(), b];
    want.sort();
    assert_eq!(endpoints, want);
    for d in &list {
        assert_eq!(d.event_type, "job.done");
        assert_eq!(d.job_id.as_deref(), Some(done.id.to_hex().as_str()));
        assert_eq!(d.data["mp3_id"], done.mp3_id.unwrap().to_hex());
        assert_eq!(d.state, DeliveryState::Pending);
    }
    assert_eq!(list[0].message_id, list[1].message_id, "one id per event");
    assert!(
        jobs.webhook_deliveries("bob", None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(dues(&jobs).await, 2);

    // The janitor announcing the outcome again: the same deliveries.
    assert!(jobs.reannounce(j.id).await.unwrap());
    assert_eq!(
        jobs.webhook_deliveries("alice", None, 100)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(dues(&jobs).await, 2);

    // Attempts: retrying, then delivered, then nothing moves it back.
    let id = &list[0].id;
    let failed = Attempt::Failed {
        status: Some(500),
        error: "answered 500".into(),
    };
    jobs.webhook_attempted(id, &failed).await.unwrap();
    let d = jobs.webhook_due(id).await.unwrap().unwrap();
    assert_eq!(
        (d.delivery.state, d.delivery.attempts),
        (DeliveryState::Retrying, 1)
    );
    assert_eq!(d.delivery.response_status, Some(500));
    jobs.webhook_attempted(id, &Attempt::Delivered { status: 204 })
        .await
        .unwrap();
    jobs.webhook_attempted(id, &failed).await.unwrap();
    jobs.webhook_given_up(id, "late").await.unwrap();
    let d = jobs.webhook_due(id).await.unwrap().unwrap();
    assert_eq!(
        (d.delivery.state, d.delivery.attempts),
        (DeliveryState::Delivered, 2)
    );
    assert_eq!(d.delivery.response_status, Some(204));

    // The other runs out of retries: failed, its last error kept.
    let other = &list[1].id;
    jobs.webhook_attempted(other, &failed).await.unwrap();
    jobs.webhook_given_up(other, "retries exhausted")
        .await
        .unwrap();
    let d = jobs.webhook_due(other).await.unwrap().unwrap();
    assert_eq!(d.delivery.state, DeliveryState::Failed);
    assert_eq!(d.delivery.last_error.as_deref(), Some("answered 500"));
    // Its dead letter replayed, it is attempted again, and may succeed.
    jobs.webhook_attempted(other, &Attempt::Delivered { status: 200 })
        .await
        .unwrap();
    let d = jobs.webhook_due(other).await.unwrap().unwrap();
    assert_eq!(
        (d.delivery.state, d.delivery.attempts),
        (DeliveryState::Delivered, 2)
    );

    // A deleted endpoint takes its deliveries with it.
    assert!(jobs.delete_webhook("alice", &a).await.unwrap());
    let left = jobs.webhook_deliveries("alice", None, 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left.iter().all(|d| d.endpoint_id != a));
    test_kit::Stack::from_env().drop_database(&db).await;
}

#[tokio::test]
async fn owners_reach_only_their_own_endpoints() {
    let (db, jobs) = jobs(2).await;
    let id = register(&jobs, "alice").await;
    assert!(jobs.webhook_of("bob", &id).await.unwrap().is_none());
    assert!(jobs.send_test_webhook("bob", &id).await.unwrap().is_none());
    assert!(
        jobs.send_test_webhook("alice", "wh_nope")
            .await
            .unwrap()
            .is_none()
    );
    assert!(!jobs.delete_webhook("bob", &id).await.unwrap());
    assert!(jobs.webhooks_of("bob").await.unwrap().is_empty());
    assert!(
        jobs.webhook_deliveries("bob", Some(&id), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let test = jobs
        .send_test_webhook("alice", &id)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(test.event_type, "webhook.test");
    assert_eq!(dues(&jobs).await, 1);
    // Five a minute, then refused.
    for _ in 1..5 {
        assert!(
            jobs.send_test_webhook("alice", &id)
                .await
                .unwrap()
                .unwrap()
                .is_ok()
        );
    }
    assert!(matches!(
        jobs.send_test_webhook("alice", &id).await.unwrap().unwrap(),
        Err(Refusal::TestsTooOften(5))
    ));
    assert_eq!(dues(&jobs).await, 5);
    assert!(jobs.webhook_of("alice", &id).await.unwrap().is_some());
    test_kit::Stack::from_env().drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_endpoint_limit_holds_against_racing_registrations() {
    let (db, jobs) = jobs(8).await;
    let tries: Vec<_> = (0..24)
        .map(|_| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                jobs.create_webhook("carol", "https://hooks.example.com/", "", 10)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut made = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => made += 1,
            Err(Refusal::TooMany(10)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(made, 10);
    assert_eq!(jobs.webhooks_of("carol").await.unwrap().len(), 10);
    test_kit::Stack::from_env().drop_database(&db).await;
}
