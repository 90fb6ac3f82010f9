//! Converting a video while it is still being uploaded.
//!
//! The gateway announces an upload as it begins (`UploadStarted`, on the
//! live queue). A converter with a free live slot takes the job's lease while
//! it is still `uploading` ([`media_store::Jobs::claim_live`]), starts ffmpeg
//! and feeds it the chunks as they land ([`Follow`]). The upload's commit
//! hands the job over under that lease, so when the last chunk is in, the MP3
//! is nearly done.
//!
//! It is an optimisation, never the guarantee: the `VideoUploaded` that
//! follows the commit still carries the job. Whatever goes wrong on the live
//! path (a container that must be read from its end, a stall, an abort, any
//! failure at all) gives the lease back and leaves the job to that path,
//! which decides it exactly as before. An upload that aborts takes its live
//! conversion with it: the partial MP3 is removed and nothing is announced.

use crate::input::FeedError;
use bytes::Bytes;
use media_store::{JobState, Jobs, Store, Tail, Tailed, mongodb::bson::oid::ObjectId};
use std::time::{Duration, Instant};

/// How a live conversion follows its upload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// How often to look for new chunks when the reader has caught up.
    pub(crate) poll: Duration,
    /// Give up when no chunk has arrived for this long.
    pub(crate) stall: Duration,
    /// How long to wait, once ffmpeg is done, for the gateway to commit the
    /// job and confirm its `VideoUploaded`.
    pub(crate) commit_wait: Duration,
}

/// The live queue, as gateway-svc declares it too (an `UploadStarted` not
/// taken within [`amqp_kit::HINT_TTL`] expires: by then the upload is likely
/// over, and converting after it is no slower).
pub(crate) fn queue(config: &crate::config::Config) -> amqp_kit::WorkQueue {
    let name = config
        .live_queue
        .clone()
        .unwrap_or_else(|| format!("{}.live", config.video_queue));
    config.topology.hint_queue(&name)
}

/// How often a reader that is waiting checks that the upload still goes on.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The chunks of an upload in progress, in order, until its commit.
#[derive(Debug)]
pub(crate) struct Follow {
    tail: Tail,
    jobs: Jobs,
    id: ObjectId,
    settings: Settings,
    last_chunk: Instant,
    last_check: Instant,
}

impl Follow {
    pub(crate) fn new(store: &Store, jobs: &Jobs, id: ObjectId, settings: Settings) -> Self {
        Self {
            tail: store.video_files.tail(id, media_store::READ_BATCH_CHUNKS),
            jobs: jobs.clone(),
            id,
            settings,
            last_chunk: Instant::now(),
            last_check: Instant::now(),
        }
    }

    /// The next chunk, `None` once the upload is committed and read whole.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, FeedError> {
        loop {
            match self.tail.next().await? {
                Tailed::Chunk(b) => {
                    self.last_chunk = Instant::now();
                    return Ok(Some(b));
                }
                Tailed::End => return Ok(None),
                Tailed::Waiting => {
                    if self.last_chunk.elapsed() > self.settings.stall {
                        return Err(FeedError::Upload(format!(
                            "the upload stalled (nothing for {:?})",
                            self.settings.stall
                        )));
                    }
                    if self.last_check.elapsed() >= CHECK_EVERY {
                        self.last_check = Instant::now();
                        still_uploading(&self.jobs.clone(), self.id).await?;
                    }
                    tokio::time::sleep(self.settings.poll).await;
                }
            }
        }
    }
}

/// An upload that failed or was abandoned loses its job (the gateway's
/// `discard`, the janitor): stop reading.
async fn still_uploading(jobs: &Jobs, id: ObjectId) -> Result<(), FeedError> {
    let job = jobs
        .get(id)
        .await
        .map_err(|e| FeedError::Upload(format!("looking at the upload's job: {e}")))?;
    match job {
        Some(j) if matches!(j.state, JobState::Uploading | JobState::Converting) => Ok(()),
        _ => Err(FeedError::Upload("the upload was abandoned".into())),
    }
}
