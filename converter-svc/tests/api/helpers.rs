use amqp_kit::{Publisher, event_properties, lapin};
use clap::Parser;
use converter_svc::{app::App, config::Cli};
use futures::AsyncWriteExt;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use media_store::{
    Job, JobState, Jobs, OutputOptions, Store,
    mongodb::bson::{doc, oid::ObjectId},
};
use mp3converter_proto::{
    EventType,
    events::v1::{ConversionFailed, Mp3Ready, VideoUploaded},
};
use std::{path::Path, process::Command, time::Duration};
use svc_kit::config::Secret;
use tokio_util::sync::CancellationToken;

/// Queues and a database of our own, shared by every converter instance a
/// test starts.
pub struct Env {
    pub stack: test_kit::Stack,
    pub db: String,
    pub video_queue: String,
    pub mp3_queue: String,
    pub store: Store,
    /// The jobs, as the test sees them (the converters have their own pool).
    pub jobs: Jobs,
    jobs_url: String,
    publisher: Publisher,
    pub clips: tempfile::TempDir,
    /// The converters' WORK_DIR.
    pub work: tempfile::TempDir,
    /// Job changes go to this fanout exchange (one per test).
    pub events_exchange: String,
}

pub struct Instance {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

#[derive(Debug)]
pub enum Outcome {
    Ready(Mp3Ready),
    Failed(ConversionFailed),
}

impl Env {
    pub async fn new() -> Self {
        test_kit::init_tracing();
        let stack = test_kit::Stack::from_env();
        let db = test_kit::unique_name("conv").replace('-', "_");
        let store = Store::new(
            &Secret::new(stack.mongodb_uri.clone()),
            &db,
            "converter-tests",
            media_store::Timeouts::default(),
        )
        .await
        .unwrap();
        let video_queue = test_kit::unique_name("video");
        let mp3_queue = test_kit::unique_name("mp3");
        let jobs_url = stack.database(&db).await;
        // Migrated by the first converter; the tests' own handle on it.
        let jobs = Jobs::connect(
            &media_store::DatabaseArgs {
                database_url: Secret::new(jobs_url.clone()),
                db_pool_size: 4,
                db_timeout: Duration::from_secs(5),
            },
            "converter-tests",
            media_store::Routes {
                video_queue: video_queue.clone(),
                mp3_queue: mp3_queue.clone(),
                webhook_queue: "webhooks".into(),
                delete_sources: true,
            },
        )
        .await
        .unwrap();
        // Declares the video queue as gateway-svc does, so events published
        // before a converter starts are kept.
        let publisher = Publisher::with_topology(
            Secret::new(stack.amqp_url.clone()),
            "converter-tests",
            Duration::from_secs(10),
            vec![
                topology().work_queue(&video_queue),
                topology().hint_queue(&format!("{video_queue}.live")),
            ],
        );
        Self {
            stack,
            db,
            video_queue,
            mp3_queue,
            store,
            jobs,
            jobs_url,
            publisher,
            clips: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
            events_exchange: test_kit::unique_name("job-events"),
        }
    }

    /// Flags for a converter of this environment; fast retries and a short
    /// lease so failures play out in seconds.
    pub fn args(&self) -> Vec<String> {
        [
            "converter-svc",
            "--admin-addr",
            "127.0.0.1:0",
            "--amqp-url",
            &self.stack.amqp_url,
            "--mongodb-uri",
            &self.stack.mongodb_uri,
            "--mongodb-database",
            &self.db,
            "--database-url",
            &self.jobs_url,
            "--video-queue",
            &self.video_queue,
            "--mp3-queue",
            &self.mp3_queue,
            "--amqp-retry-delays",
            "300ms,1s,2s,3s",
            "--lease-ttl",
            "3s",
            "--duration-tolerance",
            "200ms",
            "--shutdown-grace",
            "2s",
            "--job-events-exchange",
            &self.events_exchange,
            "--work-dir",
            &self.work.path().display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    pub async fn start(&self) -> Instance {
        self.start_with(&[]).await
    }

    pub async fn start_with(&self, extra: &[&str]) -> Instance {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let app = App::build(Cli::try_parse_from(args).unwrap().config)
            .await
            .unwrap();
        let token = CancellationToken::new();
        let handle = tokio::spawn(app.run_until(token.clone()));
        Instance { token, handle }
    }

    /// Generates a clip with ffmpeg; `args` go between `ffmpeg -y` and the
    /// output file name.
    pub fn clip(&self, name: &str, args: &str) -> std::path::PathBuf {
        test_kit::clips::generate(self.clips.path(), name, args)
    }

    /// Does what gateway-svc does for an upload: store the file, record the
    /// job, publish `VideoUploaded`. Returns the job id.
    pub async fn submit(&self, path: &Path) -> ObjectId {
        self.submit_with(path, OutputOptions::default()).await
    }

    /// The same, with output options.
    pub async fn submit_with(&self, path: &Path, options: OutputOptions) -> ObjectId {
        let id = self.store_video(path, options).await;
        let size = std::fs::metadata(path).unwrap().len();
        let filename = path.file_name().unwrap().to_string_lossy().into_owned();
        self.publish_uploaded(id, &filename, size).await;
        id
    }

    /// Stores the file and records its job, without publishing the event.
    pub async fn store_video(&self, path: &Path, options: OutputOptions) -> ObjectId {
        let bytes = std::fs::read(path).unwrap();
        let filename = path.file_name().unwrap().to_string_lossy().into_owned();
        let id = ObjectId::new();
        let mut up = self
            .store
            .videos
            .open_upload_stream(&filename)
            .id(id.into())
            .metadata(doc! { "owner_id": "user-1" })
            .await
            .unwrap();
        up.write_all(&bytes).await.unwrap();
        up.close().await.unwrap();
        // As the gateway does: an MP4's late index is kept beside it (unless
        // a test asks to see the converter read it back itself).
        if !filename.contains("no-kept-index") {
            let mut scanner = mp4_index::Scanner::default();
            scanner.feed(&bytes);
            if let Some(index) = scanner.finish() {
                media_store::gridfs::keep_mp4_index(&self.store.video_files, id, &index)
                    .await
                    .unwrap();
            }
        }
        let mut job = Job::uploading(
            id,
            "user-1",
            "user@example.com",
            &filename,
            "application/octet-stream",
            options,
        );
        job.state = JobState::Queued;
        job.size_bytes = bytes.len() as i64;
        self.jobs.insert(&job).await.unwrap();
        id
    }

    pub async fn publish_uploaded(&self, id: ObjectId, filename: &str, size: u64) {
        self.publish_uploaded_to(&self.video_queue, id, filename, size)
            .await;
    }

    pub async fn publish_uploaded_to(&self, queue: &str, id: ObjectId, filename: &str, size: u64) {
        let event = VideoUploaded {
            owner_id: "user-1".into(),
            owner_email: "user@example.com".into(),
            filename: filename.into(),
            size_bytes: size,
            ..media_store::proto::video_uploaded_of(id)
        };
        self.publisher
            .publish_event(queue, &event.event_id, &event)
            .await
            .unwrap();
    }

    /// The queue of `UploadStarted` hints (the converters' default).
    pub fn live_queue(&self) -> String {
        format!("{}.live", self.video_queue)
    }

    /// Publishes raw bytes to the video queue (malformed events).
    pub async fn publish_raw(&self, payload: &[u8]) {
        self.publisher
            .publish(
                &self.video_queue,
                payload,
                event_properties(VideoUploaded::TYPE, "raw", Default::default()),
            )
            .await
            .unwrap();
    }

    /// Takes every message now in `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<Outcome> {
        let conn = amqp_kit::connect(&Secret::new(self.stack.amqp_url.clone()), "drain")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Ok(Some(msg)) = ch.basic_get(queue.into(), BasicGetOptions::default()).await {
            let kind = msg
                .delivery
                .properties
                .kind()
                .clone()
                .map(|k| k.to_string());
            let data = msg.delivery.data.clone();
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            out.push(match kind.as_deref() {
                Some(Mp3Ready::TYPE) => {
                    Outcome::Ready(prost::Message::decode(data.as_slice()).unwrap())
                }
                Some(ConversionFailed::TYPE) => {
                    Outcome::Failed(prost::Message::decode(data.as_slice()).unwrap())
                }
                other => panic!("unexpected message type {other:?}"),
            });
        }
        out
    }

    /// Waits until every `VideoUploaded` has been handled: the video queue
    /// and its retry queues (where deferred events wait) have held nothing
    /// ready for a second. A delivery in hand is settled within
    /// milliseconds, and anything it defers shows up in a retry queue.
    pub async fn video_events_settled(&self, timeout: Duration) {
        let conn = amqp_kit::connect(&Secret::new(self.stack.amqp_url.clone()), "settled")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = topology().work_queue(&self.video_queue);
        let names: Vec<String> = std::iter::once(q.name.clone())
            .chain((1..=q.retry_delays.len() as u32).filter_map(|n| q.retry_queue(n)))
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            let mut waiting = 0;
            for name in &names {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                waiting += ch
                    .queue_declare(name.as_str().into(), passive, Default::default())
                    .await
                    .unwrap()
                    .message_count();
            }
            let now = tokio::time::Instant::now();
            if waiting > 0 {
                quiet_since = now;
            } else if now - quiet_since >= Duration::from_secs(1) {
                return;
            }
            assert!(
                now < deadline,
                "{waiting} video events still waiting after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `n` events are in the mp3 queue, and takes them.
    pub async fn events(&self, n: usize, timeout: Duration) -> Vec<Outcome> {
        let mut all = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while all.len() < n {
            all.extend(self.drain(&self.mp3_queue).await);
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} events after {timeout:?}: {all:?}",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        all
    }

    /// Runs SQL on the job database (to set a job up as a test needs).
    pub async fn sql(
        &self,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> u64 {
        let client = self.jobs.pool().get().await.unwrap();
        client.execute(statement, params).await.unwrap()
    }

    pub async fn job(&self, id: ObjectId) -> Job {
        self.jobs.get(id).await.unwrap().unwrap()
    }

    pub async fn mp3_count(&self, video: Option<ObjectId>) -> u64 {
        let filter = match video {
            Some(v) => doc! { "metadata.video_id": v },
            None => doc! {},
        };
        self.store
            .db
            .collection::<media_store::mongodb::bson::Document>("mp3s.files")
            .count_documents(filter)
            .await
            .unwrap()
    }

    /// Copies a stored MP3 to a file, for ffprobe.
    pub async fn fetch_mp3(&self, mp3_id: &str) -> std::path::PathBuf {
        let id = ObjectId::parse_str(mp3_id).unwrap();
        let file = self
            .store
            .mp3s
            .find_one(doc! { "_id": id })
            .await
            .unwrap()
            .unwrap();
        let mut reader = self.store.mp3_files.stream((&file).into(), 0, 16);
        let mut bytes = Vec::new();
        while let Some(b) = reader.next_chunk().await.unwrap() {
            bytes.extend_from_slice(&b);
        }
        let path = self.clips.path().join(format!("{mp3_id}.mp3"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Whether the video of a job is still stored.
    pub async fn video_stored(&self, id: ObjectId) -> bool {
        self.store
            .videos
            .find_one(doc! { "_id": id })
            .await
            .unwrap()
            .is_some()
    }

    /// Chunks in a bucket's chunks collection.
    pub async fn chunk_count(&self, bucket: &str) -> u64 {
        self.store
            .db
            .collection::<media_store::mongodb::bson::Document>(&format!("{bucket}.chunks"))
            .count_documents(doc! {})
            .await
            .unwrap()
    }

    /// Chunks of videos.
    pub async fn video_chunk_count(&self) -> u64 {
        self.chunk_count("videos").await
    }

    pub async fn cleanup(self) {
        let _ = self.store.db.drop().await;
        self.stack.drop_database(&self.db).await;
        let topo = topology();
        test_kit::delete_work_queues(
            &self.stack.amqp_url,
            &[
                topo.work_queue(&self.video_queue),
                topo.work_queue(&self.mp3_queue),
                topo.hint_queue(&self.live_queue()),
            ],
        )
        .await;
    }
}

/// The queue policy the tests' converters run with (see `Env::args`).
fn topology() -> amqp_kit::TopologyArgs {
    amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: ["300ms", "1s", "2s", "3s"]
            .iter()
            .map(|d| svc_kit::config::parse_duration(d).unwrap())
            .collect(),
    }
}

impl Instance {
    pub async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// ffprobe's format name and duration of a file.
pub use test_kit::clips::probe;

/// The duration of a file's first audio stream (what the MP3 must match),
/// or the container's where streams carry none (Matroska, WebM).
pub fn source_duration(path: &Path) -> f64 {
    audio_duration(path).unwrap_or_else(|| probe(path).1)
}

fn audio_duration(path: &Path) -> Option<f64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().ok()
}
