//! Per-phase times of one conversion, from the converter's own spans.

use media_store::mongodb::bson::oid::ObjectId;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use test_kit::otlp::Receiver;

/// Milliseconds of the converter's spans for a job, by name, plus `setup`
/// (claim to ffmpeg's start) and `after ffmpeg` (its end to the outcome).
pub(crate) async fn phases(receiver: &Receiver, job: ObjectId) -> HashMap<String, f64> {
    // The converter exports in batches: wait for the delivery's span (the
    // last to end) rather than a fixed time.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = spans_of(receiver, job);
        if p.contains_key("process") || Instant::now() > deadline {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn spans_of(receiver: &Receiver, job: ObjectId) -> HashMap<String, f64> {
    let spans = receiver.spans();
    let Some(convert) = spans
        .iter()
        .find(|s| s.name == "convert" && s.attr("job_id") == Some(job.to_hex().as_str()))
    else {
        return HashMap::new();
    };
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
    let children: Vec<&test_kit::otlp::ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == convert.trace_id && s.parent_span_id == convert.span_id)
        .collect();
    let mut out: HashMap<String, f64> = children
        .iter()
        .map(|s| (s.name.clone(), ms(s.start_unix_nano, s.end_unix_nano)))
        .collect();
    out.insert(
        "convert".into(),
        ms(convert.start_unix_nano, convert.end_unix_nano),
    );
    if let Some(ff) = children.iter().find(|s| s.name == "ffmpeg to_mp3") {
        out.insert(
            "setup".into(),
            ms(convert.start_unix_nano, ff.start_unix_nano),
        );
        out.insert(
            "after ffmpeg".into(),
            ms(ff.end_unix_nano, convert.end_unix_nano),
        );
    }
    if let Some(process) = spans.iter().find(|s| s.span_id == convert.parent_span_id) {
        out.insert(
            "process".into(),
            ms(process.start_unix_nano, process.end_unix_nano),
        );
    }
    out
}
