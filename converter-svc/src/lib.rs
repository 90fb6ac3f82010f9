//! converter-svc: consumes `VideoUploaded` from the `video` queue, converts
//! the video to MP3 with ffmpeg, stores it in GridFS and publishes `Mp3Ready`
//! (or `ConversionFailed`) to the `mp3` queue. Run as many as you like: they
//! compete for jobs, and a lease on the job keeps two from converting the
//! same video.

pub mod app;
pub mod config;
pub mod ffmpeg;
mod handler;
mod jobs;
