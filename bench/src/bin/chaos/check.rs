//! What a run left behind, once all is quiet, against the invariants.

use futures::TryStreamExt;
use media_store::{
    Job, JobState, Store,
    mongodb::bson::{Bson, Document, doc},
};
use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

pub(crate) struct Outcome {
    pub(crate) ok: usize,
    pub(crate) refused: usize,
    pub(crate) counts: Counts,
    /// Outcomes the janitor announced again for want of a receipt.
    pub(crate) reannounced: u32,
    pub(crate) orphan_chunks: u64,
    pub(crate) sources_left: u64,
    pub(crate) temp_dirs: usize,
    pub(crate) faults: Vec<String>,
    pub(crate) took: Duration,
}

/// Job directories left inside converter work directories, and directories
/// of converters no longer running (all converters are stopped here, so any
/// converter directory but the live ones' would be stale; the live ones are
/// empty of jobs once everything is done).
pub(crate) fn walkdir_jobs(work: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(work) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            std::fs::read_dir(e.path())
                .map(|inner| inner.flatten().filter(|j| j.path().is_dir()).count())
                .unwrap_or(0)
        })
        .sum()
}

/// Waits until every job has ended and its user was told (notify's receipt
/// is back), and there are at least `accepted` jobs, or `settle` has passed.
pub(crate) async fn settle(job_db: &media_store::Jobs, accepted: usize, settle: Duration) {
    let deadline = Instant::now() + settle;
    loop {
        let jobs = job_db.all().await.unwrap_or_default();
        // Finished, and the user told (notify's receipt is back).
        let unfinished = jobs
            .iter()
            .filter(|j| !j.state.is_terminal() || !j.notified)
            .count();
        if unfinished == 0 && jobs.len() >= accepted || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The accepted uploads' outcomes, MP3s and emails, counted.
pub(crate) struct Counts {
    pub(crate) done: usize,
    pub(crate) failed: usize,
    pub(crate) unfinished: usize,
    pub(crate) mp3_wrong: usize,
    pub(crate) emails_wrong: usize,
    pub(crate) duplicates: usize,
}

/// Each upload answered OK (`ok`: job id → file name) against its job, its
/// MP3s and the emails sent.
pub(crate) async fn count(
    store: &Store,
    jobs: &[Job],
    ok: &HashMap<String, String>,
    emails: &[test_kit::mailpit::Summary],
) -> Counts {
    let by_id: HashMap<String, &media_store::Job> =
        jobs.iter().map(|j| (j.id.to_hex(), j)).collect();
    let mp3s: Vec<Document> = store
        .mp3_files
        .files
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mp3_count = |id: &str| {
        mp3s.iter()
            .filter(|m| {
                m.get_document("metadata")
                    .ok()
                    .and_then(|md| md.get_object_id("video_id").ok())
                    .is_some_and(|v| v.to_hex() == id)
            })
            .count()
    };
    let (mut done, mut failed, mut unfinished, mut mp3_wrong, mut emails_wrong, mut duplicates) =
        (0, 0, 0, 0, 0, 0);
    for (id, name) in ok {
        let state = by_id.get(id).map(|j| j.state);
        let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
        let mine: Vec<_> = emails.iter().filter(|e| e.subject.contains(stem)).collect();
        match state {
            Some(JobState::Done) => {
                done += 1;
                mp3_wrong += usize::from(mp3_count(id) != 1);
                emails_wrong += usize::from(mine.len() != 1 || !mine[0].subject.contains("ready"));
            }
            Some(JobState::Failed) => {
                failed += 1;
                mp3_wrong += usize::from(mp3_count(id) != 0);
                emails_wrong +=
                    usize::from(mine.len() != 1 || !mine[0].subject.contains("could not convert"));
            }
            _ => unfinished += 1,
        }
        duplicates += mine.len().saturating_sub(1);
    }
    // Emails about uploads nobody was told were accepted would be a lie too.
    let known: HashSet<String> = ok
        .values()
        .map(|n| n.rsplit_once('.').map_or(n.clone(), |(s, _)| s.to_owned()))
        .collect();
    emails_wrong += emails
        .iter()
        .filter(|e| !known.iter().any(|k| e.subject.contains(k.as_str())))
        .count();
    Counts {
        done,
        failed,
        unfinished,
        mp3_wrong,
        emails_wrong,
        duplicates,
    }
}

/// GridFS chunks whose file is gone, in either bucket.
pub(crate) async fn orphan_chunks(store: &Store) -> u64 {
    let mut n = 0;
    for bucket in [&store.video_files, &store.mp3_files] {
        let ids: Vec<Bson> = bucket.chunks.distinct("files_id", doc! {}).await.unwrap();
        for id in ids {
            if bucket
                .files
                .find_one(doc! { "_id": &id })
                .await
                .unwrap()
                .is_none()
            {
                n += bucket
                    .chunks
                    .count_documents(doc! { "files_id": &id })
                    .await
                    .unwrap();
            }
        }
    }
    n
}
