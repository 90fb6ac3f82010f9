//! Per-user quotas, checked before a byte is stored: uploads at once, jobs
//! waiting for a converter, and bytes stored (videos not yet deleted and
//! MP3s). Counted in the jobs table under a lock on the user, so they hold
//! across gateway replicas and two uploads racing for the last slot cannot
//! both have it ([`media_store::Jobs::start_upload`]); here only what a
//! refusal says.

use crate::names::human_bytes;
use media_store::{OverQuota, Quotas as Limits};
use tonic::Status;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Quotas {
    pub(crate) limits: Limits,
}

fn exceeded(what: String) -> Status {
    metrics::counter!("mp3converter_gateway_quota_refusals_total").increment(1);
    Status::resource_exhausted(format!("quota exceeded: {what}"))
}

impl Quotas {
    /// What a refused upload is told.
    pub(crate) fn refused(&self, over: OverQuota) -> Status {
        match over {
            OverQuota::Waiting { max } => exceeded(format!(
                "at most {max} jobs may wait for conversion per user; wait for some to finish"
            )),
            OverQuota::Uploads { max } => {
                exceeded(format!("at most {max} uploads at once per user"))
            }
            OverQuota::Stored { max, used } => exceeded(format!(
                "at most {} may be stored per user ({} used); delete some jobs",
                human_bytes(max),
                human_bytes(used)
            )),
        }
    }

    /// An upload that grew (or declared it would grow) past the user's
    /// storage quota.
    pub(crate) fn stored_exceeded(&self) -> Status {
        exceeded(format!(
            "at most {} may be stored per user; delete some jobs",
            human_bytes(self.limits.max_stored)
        ))
    }
}
