//! Converting a video while it is still being uploaded.
//!
//! The gateway announces an upload as it begins (`UploadStarted`, on the
//! live queue), naming where its bytes can be followed: the replica that
//! receives them serves them as they arrive
//! (`mp3converter.upload.v1.UploadFollowService`), so nothing is read back
//! from GridFS. A converter with a free live slot takes the job's live claim
//! while it is still `uploading` ([`media_store::Jobs::claim_live`]) and
//! follows the upload ([`Follow`]): a container that decodes front to back is
//! fed to ffmpeg as it lands; any other (an MP4 or MOV with its index at the
//! end, as phones write them) is spooled to the work directory as it lands and
//! converted from that local file the moment the upload completes. The
//! upload's commit hands the job over under the claim's lease.
//!
//! It is an optimisation, never the guarantee: the `VideoUploaded` that
//! follows the commit still carries the job. Whatever goes wrong on the live
//! path (a follower that fell behind, a stall, a spool over its bound, an
//! abort, any failure at all) gives the lease back and leaves the job to that
//! path, which converts the stored file. An upload that aborts takes its
//! live conversion with it: the spool and partial MP3 are removed and nothing
//! is announced.

use bytes::Bytes;
use mp3converter_proto::upload::v1::{
    FollowUploadRequest, FollowUploadResponse, follow_upload_response,
    upload_follow_service_client::UploadFollowServiceClient,
};
use std::time::Duration;
use tonic::transport::Endpoint;

/// Why following an upload stopped early: it ended without a commit,
/// stalled, or the gateway could not be followed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UploadError(pub(crate) String);

/// How a live conversion follows its upload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// How often to look at the job while waiting for its commit.
    pub(crate) poll: Duration,
    /// Give up when no byte has arrived for this long.
    pub(crate) stall: Duration,
    /// How long to wait, once ffmpeg is done, for the gateway to commit the
    /// job.
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

/// An upload's bytes as they arrive, from the gateway replica receiving it.
#[derive(Debug)]
pub(crate) struct Follow {
    stream: tonic::Streaming<FollowUploadResponse>,
    stall: Duration,
    received: u64,
}

/// How a converter reaches the gateways' follow listeners.
#[derive(Clone, Debug)]
pub(crate) struct Connect {
    /// Under mTLS: our certificate, and the gateway's identity expected.
    tls: Option<svc_kit::tls::MeshTls>,
}

impl Connect {
    pub(crate) fn new(tls: Option<svc_kit::tls::MeshTls>) -> Self {
        Self { tls }
    }

    /// Keeps our certificate current (each follow connects afresh, with
    /// the certificate of the moment), until `token`.
    pub(crate) fn reload_until(&self, token: tokio_util::sync::CancellationToken) {
        if let Some(tls) = &self.tls {
            tls.spawn_reloader(token);
        }
    }

    /// Starts following upload `job_id` at `url`.
    pub(crate) async fn follow(
        &self,
        url: &str,
        job_id: &str,
        settings: Settings,
    ) -> Result<Follow, UploadError> {
        let failed = |e: &dyn std::fmt::Display| UploadError(format!("following the upload: {e}"));
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| failed(&e))?
            .connect_timeout(Duration::from_secs(2));
        let channel = match &self.tls {
            Some(tls) => {
                let connector = svc_kit::tls::Connector::new(tls, Some("gateway-svc".into()))
                    .map_err(|e| failed(&e))?;
                endpoint.connect_with_connector(connector).await
            }
            None => endpoint.connect().await,
        }
        .map_err(|e| failed(&e))?;
        let stream = UploadFollowServiceClient::new(channel)
            .follow_upload(FollowUploadRequest {
                job_id: job_id.to_owned(),
                offset: 0,
            })
            .await
            .map_err(|s| failed(&s.message()))?
            .into_inner();
        Ok(Follow {
            stream,
            stall: settings.stall,
            received: 0,
        })
    }
}

impl Follow {
    /// The next bytes, `None` once the upload is committed and every byte
    /// read. An upload that fails, a follower that fell behind, or a stall
    /// ends it with an error: the job is then converted from storage.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, UploadError> {
        let msg = tokio::time::timeout(self.stall, self.stream.message())
            .await
            .map_err(|_| UploadError(format!("the upload stalled (nothing for {:?})", self.stall)))?
            .map_err(|s| UploadError(format!("following the upload: {}", s.message())))?;
        match msg.and_then(|m| m.payload) {
            Some(follow_upload_response::Payload::Chunk(b)) => {
                self.received += b.len() as u64;
                Ok(Some(b))
            }
            Some(follow_upload_response::Payload::Complete(c))
                if c.total_bytes == self.received =>
            {
                Ok(None)
            }
            Some(follow_upload_response::Payload::Complete(c)) => Err(UploadError(format!(
                "the upload has {} bytes but {} came",
                c.total_bytes, self.received
            ))),
            None => Err(UploadError(
                "the upload's stream ended before its completion".into(),
            )),
        }
    }
}
