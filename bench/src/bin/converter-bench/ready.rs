//! The converter's outcomes, read off the mp3 queue.

use amqp_kit::lapin;
use futures::StreamExt;
use mp3converter_proto::events::v1::Mp3Ready;
use std::time::{Duration, Instant};

/// Waits for `n` Mp3Ready on the mp3 queue; returns when each arrived.
pub(crate) async fn mp3_ready(ch: &lapin::Channel, queue: &str, n: usize) -> Vec<Instant> {
    let mut at = Vec::new();
    consume_ready(ch, queue, |_| {
        at.push(Instant::now());
        at.len() < n
    })
    .await;
    at
}

/// Hands each `Mp3Ready` arriving on `queue` to `more` until it says it
/// wants no more; any other outcome fails the bench.
pub(crate) async fn consume_ready(
    ch: &lapin::Channel,
    queue: &str,
    mut more: impl FnMut(Mp3Ready) -> bool,
) {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            test_kit::unique_name("bench").as_str().into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    loop {
        let d = tokio::time::timeout(Duration::from_secs(900), consumer.next())
            .await
            .expect("an outcome within 15 min")
            .unwrap()
            .unwrap();
        let ready = amqp_kit::decode::<Mp3Ready>(&d).unwrap_or_else(|e| {
            panic!(
                "a conversion failed ({e}): {:?}",
                String::from_utf8_lossy(&d.data)
            )
        });
        if !more(ready) {
            break;
        }
    }
    ch.basic_cancel(consumer.tag(), Default::default())
        .await
        .unwrap();
}
