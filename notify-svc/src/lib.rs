//! notify-svc: consumes `Mp3Ready` and `ConversionFailed` from the `mp3`
//! queue and emails the owner, once per event.

pub mod app;
pub mod config;
mod handler;
mod mail;
mod sent_log;
