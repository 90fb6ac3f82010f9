//! The conversion's metrics and span status, kept out of the handlers: they
//! call one of these at each end, and the business reads as the business.

use crate::convert::{Converted, Failure};
use std::time::Instant;
use svc_kit::observe::InFlight;

/// Counts a conversion in progress while it lives.
pub(crate) fn in_progress() -> InFlight {
    InFlight::new(metrics::gauge!("mp3converter_conversions_in_progress"))
}

/// A conversion (or its retries) ended this way.
pub(crate) fn ended(outcome: &'static str) {
    metrics::counter!("mp3converter_conversions_total", "outcome" => outcome).increment(1);
}

/// How long a conversion that produced its MP3 took.
pub(crate) fn took(started: Instant) {
    metrics::histogram!("mp3converter_conversion_duration_seconds")
        .record(started.elapsed().as_secs_f64());
}

/// The conversion's result, on the current span (an error status for real
/// failures) and in the metrics (its time if it produced an MP3, which
/// counts as done once the job is; its outcome if not).
pub(crate) fn converted(result: &Result<Converted, Failure>, started: Instant) {
    match result {
        Ok(_) => took(started),
        Err(f) => {
            if let Some((kind, reason)) = f.error_kind() {
                let span = tracing::Span::current();
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", reason);
                span.record("error.type", kind);
            }
            ended(f.outcome());
        }
    }
}

/// A live conversion ended this way.
pub(crate) fn live_ended(outcome: &'static str) {
    metrics::counter!("mp3converter_live_conversions_total", "outcome" => outcome).increment(1);
}
