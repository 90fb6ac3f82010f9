//! The bench's environment: the stores, the queues, the converter as a
//! process, and one clip timed through it beside its limits.

use crate::{mib, ready::mp3_ready, secs};
use amqp_kit::{Publisher, lapin};
use bench::clips::plain_ffmpeg;
use bench::{Proc, services};
use futures::{AsyncWriteExt, TryStreamExt};
use media_store::{
    Job, JobState, Store,
    mongodb::bson::{doc, oid::ObjectId},
};
use mp3converter_proto::events::v1::VideoUploaded;
use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};
use test_kit::otlp::Receiver;

pub(crate) struct Env<'a> {
    pub(crate) store: Store,
    /// The jobs (PostgreSQL), and their database's URL for the services.
    pub(crate) jobs: media_store::Jobs,
    pub(crate) jobs_url: String,
    pub(crate) publisher: Publisher,
    pub(crate) video_queue: String,
    pub(crate) mp3_queue: String,
    pub(crate) mongodb_uri: String,
    pub(crate) stack: test_kit::Stack,
    pub(crate) work: tempfile::TempDir,
    pub(crate) receiver: &'a Receiver,
    pub(crate) owner_email: String,
    pub(crate) out_dir: tempfile::TempDir,
}

impl Env<'_> {
    /// Stores the clip as an upload would (timed: the raw driver write) and
    /// records its job.
    pub(crate) async fn store(&self, clip: &Path) -> (ObjectId, Duration) {
        let bytes = tokio::fs::read(clip).await.unwrap();
        let name = clip.file_name().unwrap().to_string_lossy().into_owned();
        let (id, wrote) = retry_busy(&format!("storing {name}"), || {
            self.write_video(&name, &bytes)
        })
        .await
        .unwrap();
        let mut job = Job::uploading(
            id,
            "bench",
            &self.owner_email,
            &name,
            "video/mp4",
            Default::default(),
        );
        job.state = JobState::Queued;
        job.size_bytes = bytes.len() as i64;
        self.jobs.insert(&job).await.unwrap();
        (id, wrote)
    }

    /// Waits until no source video is stored (the converters' sweepers
    /// caught up); how long that took.
    pub(crate) async fn sources_gone(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        loop {
            let left = self
                .store
                .video_files
                .files
                .count_documents(doc! {})
                .await
                .unwrap_or(u64::MAX / 32);
            if left == 0 {
                return Ok(t.elapsed());
            }
            anyhow::ensure!(t.elapsed() < timeout, "{left} sources still stored");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A GridFS upload stream for video `id`, as the gateway opens it.
    pub(crate) async fn open_upload(
        &self,
        id: ObjectId,
        name: &str,
    ) -> Result<media_store::mongodb::gridfs::GridFsUploadStream, media_store::mongodb::error::Error>
    {
        self.store
            .videos
            .open_upload_stream(name)
            .id(id.into())
            .metadata(doc! { "owner_id": "bench" })
            .await
    }

    /// The raw driver write of one upload (timed), with the MP4 index kept
    /// beside it as the gateway does, so the converter need not read the end
    /// of the file first.
    pub(crate) async fn write_video(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(ObjectId, Duration)> {
        let id = ObjectId::new();
        let t = Instant::now();
        let mut up = self.open_upload(id, name).await?;
        let mut scanner = mp4_index::Scanner::default();
        for c in bytes.chunks(1 << 20) {
            scanner.feed(c);
            if let Err(e) = up.write_all(c).await {
                let _ = up.abort().await;
                return Err(e.into());
            }
        }
        up.close().await?;
        let wrote = t.elapsed();
        if let Some(index) = scanner.finish() {
            media_store::gridfs::keep_mp4_index(&self.store.video_files, id, &index).await?;
        }
        Ok((id, wrote))
    }

    pub(crate) async fn publish(&self, id: ObjectId) {
        self.publish_to(id, &self.owner_email).await;
    }

    /// The raw driver reading a stored video through one cursor (bytes
    /// dropped): the GridFS server's own limit.
    pub(crate) async fn raw_read(&self, id: ObjectId) -> Duration {
        let t = Instant::now();
        let mut cursor = self
            .store
            .video_files
            .chunks
            // As the service asks: no sort (see media_store::gridfs).
            .find(doc! { "files_id": id, "n": { "$gte": 0 } })
            .batch_size(8)
            .await
            .unwrap();
        let mut bytes = 0usize;
        while let Some(d) = cursor.try_next().await.unwrap() {
            bytes += d.get_binary_generic("data").unwrap().len();
        }
        assert!(bytes > 0);
        t.elapsed()
    }

    pub(crate) fn converter(&self, concurrency: u16) -> anyhow::Result<Proc> {
        Proc::start(
            "converter-svc",
            &[
                ("ADMIN_ADDR", services::local_addr()),
                ("AMQP_URL", self.stack.amqp_url.clone()),
                ("MONGODB_URI", self.mongodb_uri.clone()),
                ("MONGODB_DATABASE", self.store.db.name().to_owned()),
                ("DATABASE_URL", self.jobs_url.clone()),
                ("VIDEO_QUEUE", self.video_queue.clone()),
                ("MP3_QUEUE", self.mp3_queue.clone()),
                ("WORK_DIR", self.work.path().display().to_string()),
                ("CONCURRENCY", concurrency.to_string()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", self.receiver.endpoint()),
                ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
                ("JOB_EVENTS_EXCHANGE", test_kit::unique_name("bench-events")),
            ],
        )
    }
}

/// One conversion at a time, the limits measured beside it.
pub(crate) struct Row {
    pub(crate) clip: String,
    pub(crate) mib: f64,
    pub(crate) ours: f64,
    pub(crate) ffmpeg: f64,
    pub(crate) read: f64,
    pub(crate) write: f64,
    pub(crate) phases: HashMap<String, f64>,
}

impl Env<'_> {
    /// One clip: stored (the raw write timed), plain ffmpeg and the raw read
    /// beside it, then the service from publish to `Mp3Ready`.
    pub(crate) async fn one(
        &self,
        ch: &lapin::Channel,
        path: &Path,
        clip: &str,
    ) -> (Row, ObjectId) {
        let (id, write) = self.store(path).await;
        let ffmpeg = plain_ffmpeg(path, &self.out_dir.path().join("plain.mp3"));
        let read = self.raw_read(id).await;
        let t = Instant::now();
        self.publish(id).await;
        mp3_ready(ch, &self.mp3_queue, 1).await;
        let ours = t.elapsed();
        let row = Row {
            mib: mib(path),
            clip: clip.to_owned(),
            ours: secs(ours),
            ffmpeg: secs(ffmpeg),
            read: secs(read),
            write: secs(write),
            phases: HashMap::new(),
        };
        (row, id)
    }
}

impl Env<'_> {
    pub(crate) async fn publish_to(&self, id: ObjectId, owner_email: &str) {
        let ev = VideoUploaded {
            owner_id: "bench".into(),
            owner_email: owner_email.into(),
            ..media_store::proto::video_uploaded_of(id)
        };
        self.publisher
            .publish_event(&self.video_queue, &ev.event_id, &ev)
            .await
            .unwrap();
    }
}

/// Runs `op` again, up to ten times two seconds apart, while it fails:
/// FerretDB's SQLite backend answers SQLITE_BUSY to a write that meets
/// another (a converter deleting its source), where a client would retry.
pub(crate) async fn retry_busy<T, E, F, Fut>(what: &str, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!("{what}, try {tries} failed: {}", e.into());
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into().context(what.to_owned())),
        }
    }
}
