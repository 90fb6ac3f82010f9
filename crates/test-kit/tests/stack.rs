//! Proof that every real part of the stack works from Rust, with the crates the
//! services use: GridFS through the official `mongodb` driver, RabbitMQ through
//! lapin with publisher confirms, PostgreSQL through deadpool-postgres, SMTP
//! through lettre into Mailpit, and ffmpeg. Needs `scripts/stack up`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use amqp_kit::{PublishError, Publisher, WorkQueue, declare_work_queue, event_properties};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, QueueDeleteOptions},
    types::FieldTable,
};
use mongodb::{bson::doc, options::GridFsBucketOptions};
use rand::RngCore;
use std::time::Duration;
use svc_kit::config::Secret;
use test_kit::{Stack, mailpit::Mailpit, unique_name, wait_until};

#[tokio::test]
async fn gridfs_round_trip_20_mib_in_64_kib_writes() {
    let stack = Stack::from_env();
    let client = mongodb::Client::with_uri_str(&stack.mongodb_uri)
        .await
        .unwrap();
    let db = client.database(&unique_name("gridfs").replace('-', "_"));
    let bucket = db.gridfs_bucket(
        GridFsBucketOptions::builder()
            .bucket_name("videos".to_owned())
            .build(),
    );

    let mut data = vec![0u8; 20 << 20];
    rand::rng().fill_bytes(&mut data);

    let mut upload = bucket.open_upload_stream("clip.bin").await.unwrap();
    let id = upload.id().clone();
    for chunk in data.chunks(64 << 10) {
        upload.write_all(chunk).await.unwrap();
    }
    upload.close().await.unwrap();

    let mut download = bucket.open_download_stream(id.clone()).await.unwrap();
    let mut back = Vec::with_capacity(data.len());
    download.read_to_end(&mut back).await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "downloaded bytes differ from uploaded ones");

    let file = bucket
        .find_one(doc! { "_id": id.clone() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(file.length, data.len() as u64);

    bucket.delete(id.clone()).await.unwrap();
    assert!(
        bucket
            .find_one(doc! { "_id": id.clone() })
            .await
            .unwrap()
            .is_none()
    );
    let chunks = db
        .collection::<mongodb::bson::Document>("videos.chunks")
        .count_documents(doc! { "files_id": id.clone() })
        .await
        .unwrap();
    assert_eq!(chunks, 0, "chunks left behind after delete");
    assert!(bucket.open_download_stream(id).await.is_err());
    db.drop().await.unwrap();
}

#[tokio::test]
async fn gridfs_abort_leaves_nothing() {
    let stack = Stack::from_env();
    let client = mongodb::Client::with_uri_str(&stack.mongodb_uri)
        .await
        .unwrap();
    let db = client.database(&unique_name("gridfs").replace('-', "_"));
    let bucket = db.gridfs_bucket(None);
    let mut upload = bucket.open_upload_stream("partial.bin").await.unwrap();
    let id = upload.id().clone();
    upload.write_all(&vec![7u8; 1 << 20]).await.unwrap();
    upload.abort().await.unwrap();
    let chunks = db
        .collection::<mongodb::bson::Document>("fs.chunks")
        .count_documents(doc! { "files_id": id.clone() })
        .await
        .unwrap();
    assert_eq!(chunks, 0);
    assert!(bucket.find_one(doc! { "_id": id }).await.unwrap().is_none());
    db.drop().await.unwrap();
}

#[tokio::test]
async fn rabbitmq_persistent_publish_with_confirm_then_consume_and_ack() {
    let stack = Stack::from_env();
    let url = Secret::new(stack.amqp_url.clone());
    let queue = WorkQueue {
        name: unique_name("test-queue"),
        retry_delays: vec![Duration::from_millis(200)],
        delivery_limit: 3,
        expires_after: None,
    };
    let conn = amqp_kit::connect(&url, "stack-test").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    declare_work_queue(&ch, &queue).await.unwrap();
    // Declaring again with the same arguments is a no-op, as every consumer
    // does at start.
    declare_work_queue(&ch, &queue).await.unwrap();

    let publisher = Publisher::new(url, "stack-test-publisher", Duration::from_secs(5));
    let payload = b"hello, durable world";
    publisher
        .publish(
            &queue.name,
            payload,
            event_properties("test.Hello", "msg-1", FieldTable::default()),
        )
        .await
        .unwrap();

    // A message no queue takes is reported, not silently dropped.
    let err = publisher
        .publish(
            &unique_name("no-such-queue"),
            payload,
            event_properties("test.Hello", "msg-2", FieldTable::default()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Unroutable(_)), "{err:?}");

    let mut consumer = ch
        .basic_consume(
            queue.name.as_str().into(),
            "stack-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("no delivery within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.data, payload);
    assert_eq!(
        *delivery.properties.delivery_mode(),
        Some(2),
        "not persistent"
    );
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("msg-1")
    );
    assert!(
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap()
    );

    for q in [
        queue.name.clone(),
        queue.dead_letter_queue(),
        queue.retry_queue(1).unwrap(),
    ] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn postgres_query_through_a_deadpool_pool() {
    let stack = Stack::from_env();
    let url = stack.fresh_database("stack").await;
    let mut cfg = deadpool_postgres::Config::new();
    cfg.url = Some(url);
    let pool = cfg
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap();
    let client = pool.get().await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int primary key, name text not null)")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO t VALUES ($1, $2)",
            &[&1i32, &"Robert'); DROP TABLE t;--"],
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT name, 40 + 2 AS answer FROM t WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Robert'); DROP TABLE t;--");
    assert_eq!(row.get::<_, i32>(1), 42);
}

#[tokio::test]
async fn smtp_message_arrives_in_mailpit() {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let stack = Stack::from_env();
    let to = format!("{}@example.test", unique_name("rcpt"));
    let subject = unique_name("subject");
    let email = Message::builder()
        .from("mp3converter <noreply@mp3converter.test>".parse().unwrap())
        .to(to.parse().unwrap())
        .subject(subject.clone())
        .body("your mp3 is ready".to_owned())
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&stack.smtp_host)
        .port(stack.smtp_port)
        .build();
    mailer.send(email).await.unwrap();

    let mailpit = Mailpit::new(&stack.mailpit_api_url);
    let found = wait_until("the email in Mailpit", Duration::from_secs(10), || async {
        let msgs = mailpit.messages_to(&to).await.ok()?;
        msgs.into_iter().find(|m| m.subject == subject)
    })
    .await;
    let full = mailpit.message(&found.id).await.unwrap();
    assert!(full.text.contains("your mp3 is ready"), "{}", full.text);
}

#[tokio::test]
async fn ffmpeg_is_installed() {
    let version = tokio::task::spawn_blocking(ffmpeg_sidecar::version::ffmpeg_version)
        .await
        .unwrap()
        .expect("ffmpeg on PATH (Debian package `ffmpeg`)");
    println!("ffmpeg version {version}");
    assert!(!version.is_empty());
    let probe = std::process::Command::new("ffprobe")
        .arg("-version")
        .output()
        .expect("ffprobe on PATH");
    assert!(probe.status.success());
}
