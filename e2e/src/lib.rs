//! Only tests live here (`tests/journey.rs`).
