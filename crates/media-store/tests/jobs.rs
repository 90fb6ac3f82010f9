#![allow(unreachable_pub, clippy::unwrap_used)]

//! The job state machine's promises, proven against the stack's PostgreSQL
//! (which keeps the promise they rest on: one statement's `WHERE` is checked
//! again under the row lock): 8 actors on separate connections race each
//! move, 200 rounds, and exactly one wins every round.

use media_store::{
    Claim, DatabaseArgs, FailureKind, Finish, Job, JobState, Jobs, Mp3Facts, NewUpload, OverQuota,
    Quotas, Routes, mongodb::bson::oid::ObjectId,
};
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};
use svc_kit::config::Secret;
use tokio::sync::Barrier;

const ACTORS: usize = 8;
const ROUNDS: usize = 200;
const TTL: Duration = Duration::from_secs(30);

fn routes() -> Routes {
    Routes {
        video_queue: "video".into(),
        mp3_queue: "mp3".into(),
        webhook_queue: "webhooks".into(),
        delete_sources: true,
    }
}

/// A fresh, migrated database; one `Jobs` per actor, each on a connection
/// of its own.
async fn actors(n: usize) -> (String, Vec<Jobs>) {
    let stack = test_kit::Stack::from_env();
    let name = test_kit::unique_name("jobsrace").replace('-', "_");
    let url = stack.database(&name).await;
    let args = |size| DatabaseArgs {
        database_url: Secret::new(url.clone()),
        db_pool_size: size,
        db_timeout: Duration::from_secs(10),
    };
    let mut all = vec![Jobs::connect(&args(1), "race", routes()).await.unwrap()];
    for _ in 1..n {
        let a = args(1);
        let pool = svc_kit::pg::pool(&a.database_url, 1, a.db_timeout, "race").unwrap();
        all.push(Jobs::new(pool, routes()));
    }
    (name, all)
}

async fn drop_db(name: &str) {
    test_kit::Stack::from_env().drop_database(name).await;
}

fn job(state: JobState) -> Job {
    let mut j = Job::uploading(
        ObjectId::new(),
        "owner",
        "owner@example.com",
        "clip.mkv",
        "video/x-matroska",
        Default::default(),
    );
    j.state = state;
    j.size_bytes = 10;
    j
}

/// A job converting under `holder`'s lease, which ran out a moment ago.
fn lapsed(holder: &str) -> Job {
    let mut j = job(JobState::Converting);
    j.lease_holder = Some(holder.into());
    j.lease_until = Some(SystemTime::now() - Duration::from_millis(1));
    j
}

fn facts() -> Mp3Facts {
    Mp3Facts {
        id: ObjectId::new(),
        size_bytes: 1,
        duration_seconds: 1.0,
        expires_at: None,
        notes: Vec::new(),
    }
}

/// Runs `act(i, jobs)` for every actor at the same instant; the results in
/// actor order.
async fn race<T, F, Fut>(actors: &[Jobs], act: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Jobs) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(actors.len()));
    let tasks: Vec<_> = actors
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let (fut, barrier) = (act(i, j.clone()), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_claimer_wins_each_job() {
    let (db, actors) = actors(ACTORS).await;
    for round in 0..ROUNDS {
        let j = job(JobState::Queued);
        actors[0].insert(&j).await.unwrap();
        let claims = race(&actors, |i, jobs| async move {
            jobs.claim(j.id, &format!("claimer-{i}"), TTL)
                .await
                .unwrap()
        })
        .await;
        let won: Vec<_> = claims
            .iter()
            .filter(|c| matches!(c, Claim::Claimed(_)))
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {claims:?}");
        let others = claims
            .iter()
            .filter(|c| matches!(c, Claim::HeldElsewhere(_)))
            .count();
        assert_eq!(others, ACTORS - 1, "round {round}: {claims:?}");
    }
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finish_and_the_janitor_never_both_end_a_job() {
    // The lease holder finishes done, the janitor (three replicas' worth)
    // fails it as stuck, and four converters try to take it over: its lease
    // ran out, so each may; exactly one does.
    let (db, actors) = actors(ACTORS).await;
    let (mut done, mut failed, mut taken) = (0, 0, 0);
    for round in 0..ROUNDS {
        let j = lapsed("holder");
        actors[0].insert(&j).await.unwrap();
        let moves = race(&actors, |i, jobs| async move {
            let id = j.id;
            match i {
                0 => matches!(
                    jobs.finish_done(id, Some("holder"), facts()).await.unwrap(),
                    Finish::Moved(_)
                ),
                1..=3 => matches!(
                    jobs.finish_failed(id, None, "stuck", FailureKind::TimedOut)
                        .await
                        .unwrap(),
                    Finish::Moved(_)
                ),
                _ => matches!(
                    jobs.claim(id, &format!("other-{i}"), TTL).await.unwrap(),
                    Claim::Claimed(_)
                ),
            }
        })
        .await;
        assert_eq!(
            moves.iter().filter(|m| **m).count(),
            1,
            "round {round}: {moves:?}"
        );
        done += usize::from(moves[0]);
        failed += moves[1..=3].iter().filter(|m| **m).count();
        taken += moves[4..].iter().filter(|m| **m).count();
        // The event follows the transition, once.
        let state = actors[0].get(j.id).await.unwrap().unwrap().state;
        let events = actors[0].events().await.unwrap();
        let mine = events
            .iter()
            .filter(|(_, id, _)| id.ends_with(&j.id.to_hex()))
            .count();
        let want = usize::from(state != JobState::Converting);
        assert_eq!(mine, want, "round {round}: {state:?} {events:?}");
    }
    eprintln!(
        "won by the holder's finish {done}, the janitor's {failed}, a takeover {taken} of {ROUNDS} rounds"
    );
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_and_a_takeover_at_expiry_never_both_hold_a_job() {
    let (db, actors) = actors(ACTORS).await;
    let mut renewed = 0;
    for round in 0..ROUNDS {
        let j = lapsed("holder");
        actors[0].insert(&j).await.unwrap();
        let holds = race(&actors, |i, jobs| async move {
            if i == 0 {
                jobs.renew(j.id, "holder", TTL).await.unwrap()
            } else {
                matches!(
                    jobs.claim(j.id, &format!("other-{i}"), TTL).await.unwrap(),
                    Claim::Claimed(_)
                )
            }
        })
        .await;
        assert_eq!(
            holds.iter().filter(|h| **h).count(),
            1,
            "round {round}: {holds:?}"
        );
        renewed += usize::from(holds[0]);
        // Whoever holds it is the row's lease holder.
        let now = actors[0].get(j.id).await.unwrap().unwrap();
        let holder = if holds[0] {
            "holder".to_owned()
        } else {
            let i = holds.iter().position(|h| *h).unwrap();
            format!("other-{i}")
        };
        assert_eq!(now.lease_holder.as_deref(), Some(holder.as_str()));
    }
    eprintln!("the holder renewed first in {renewed} of {ROUNDS} rounds");
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_claim_and_the_commit_hand_the_job_to_one_converter() {
    // Converters race to claim an upload live while the gateway commits it:
    // the commit hands it to the one claim that landed before it, or queues
    // it; never two holders.
    let (db, actors) = actors(ACTORS).await;
    for round in 0..ROUNDS {
        let j = job(JobState::Uploading);
        actors[0].insert(&j).await.unwrap();
        let got = race(&actors, |i, jobs| async move {
            if i == 0 {
                jobs.commit_upload(j.id, 10)
                    .await
                    .unwrap()
                    .map(|c| c.lease_holder.unwrap_or_else(|| "queued".into()))
            } else {
                jobs.claim_live(j.id, &format!("live-{i}"), TTL)
                    .await
                    .unwrap()
                    .map(|_| format!("live-{i}"))
            }
        })
        .await;
        let committed_to = got[0].clone().expect("the commit lands");
        let claimed: Vec<_> = got[1..].iter().flatten().collect();
        assert!(claimed.len() <= 1, "round {round}: {got:?}");
        let now = actors[0].get(j.id).await.unwrap().unwrap();
        match claimed.first() {
            Some(c) if committed_to != "queued" => {
                assert_eq!(&committed_to, *c, "round {round}");
                assert_eq!(now.state, JobState::Converting);
            }
            // A claim that came after the commit found no upload.
            _ => {
                assert_eq!(committed_to, "queued", "round {round}: {got:?}");
                assert_eq!(now.state, JobState::Queued);
            }
        }
    }
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_hold_against_uploads_racing_for_the_last_slot() {
    let (db, actors) = actors(ACTORS).await;
    let quotas = Quotas {
        max_uploads: 2,
        max_waiting: 100,
        max_stored: 1 << 30,
    };
    for round in 0..50 {
        let owner = format!("racer-{round}");
        let started = race(&actors, |_, jobs| {
            let owner = owner.clone();
            async move {
                let new = NewUpload {
                    id: ObjectId::new(),
                    owner_id: owner,
                    owner_email: "o@example.com".into(),
                    filename: "f".into(),
                    content_type: "c".into(),
                    options: Default::default(),
                };
                jobs.start_upload(&new, quotas).await.unwrap()
            }
        })
        .await;
        let ok = started.iter().filter(|s| s.is_ok()).count();
        assert_eq!(ok, 2, "round {round}: exactly the quota starts");
        assert!(
            started
                .iter()
                .filter_map(|s| s.as_ref().err())
                .all(|e| *e == OverQuota::Uploads { max: 2 })
        );
    }
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_janitor_holds_the_lease() {
    let (db, actors) = actors(ACTORS).await;
    for round in 0..50 {
        let name = format!("janitor-{round}");
        let held = race(&actors, |i, jobs| {
            let name = name.clone();
            async move {
                jobs.lease(&name, &format!("replica-{i}"), TTL)
                    .acquire()
                    .await
                    .unwrap()
            }
        })
        .await;
        assert_eq!(held.iter().filter(|h| **h).count(), 1, "round {round}");
        // Its holder renews it; the others still cannot take it.
        let holder = held.iter().position(|h| *h).unwrap();
        for (i, jobs) in actors.iter().enumerate() {
            let again = jobs
                .lease(&name, &format!("replica-{i}"), TTL)
                .acquire()
                .await
                .unwrap();
            assert_eq!(again, i == holder);
        }
    }
    drop_db(&db).await;
}

#[tokio::test]
async fn moves_are_refused_to_whoever_may_not_make_them() {
    let (db, actors) = actors(1).await;
    let jobs = &actors[0];
    // A live lease binds others; its holder may finish.
    let mut j = job(JobState::Converting);
    j.lease_holder = Some("a".into());
    j.lease_until = Some(SystemTime::now() + TTL);
    jobs.insert(&j).await.unwrap();
    assert!(matches!(
        jobs.claim(j.id, "b", TTL).await.unwrap(),
        Claim::HeldElsewhere(_)
    ));
    assert!(!jobs.renew(j.id, "b", TTL).await.unwrap());
    assert!(jobs.progress(j.id, "b", 50.0).await.unwrap().is_none());
    assert!(jobs.release(j.id, "b").await.unwrap().is_none());
    assert!(matches!(
        jobs.finish_failed(j.id, None, "x", FailureKind::TimedOut)
            .await
            .unwrap(),
        Finish::Refused(_)
    ));
    assert_eq!(
        jobs.progress(j.id, "a", 50.0)
            .await
            .unwrap()
            .unwrap()
            .progress,
        Some(50.0)
    );
    let done = match jobs.finish_done(j.id, Some("a"), facts()).await.unwrap() {
        Finish::Moved(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(done.state, JobState::Done);
    assert_eq!(done.lease_holder, None);
    // Terminal: nothing moves it again, a repeat says it is there.
    assert!(matches!(
        jobs.finish_done(j.id, Some("a"), facts()).await.unwrap(),
        Finish::AlreadyThere(_)
    ));
    assert!(matches!(
        jobs.finish_failed(j.id, Some("a"), "x", FailureKind::InvalidInput)
            .await
            .unwrap(),
        Finish::Refused(Some(_))
    ));
    assert!(matches!(
        jobs.claim(j.id, "a", TTL).await.unwrap(),
        Claim::Finished(_)
    ));
    // The owner deletes it: a tombstone, invisible, deleted once.
    assert!(matches!(
        jobs.delete(j.id, "someone else").await.unwrap(),
        media_store::Deleted::NotFound
    ));
    assert!(matches!(
        jobs.delete(j.id, "owner").await.unwrap(),
        media_store::Deleted::Now(_)
    ));
    assert!(matches!(
        jobs.delete(j.id, "owner").await.unwrap(),
        media_store::Deleted::Already
    ));
    assert!(jobs.get_visible(j.id, "owner").await.unwrap().is_none());
    // One event: the outcome.
    let events = jobs.events().await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, format!("mp3ready-{}", j.id.to_hex()));
    drop_db(&db).await;
}

#[tokio::test]
async fn the_janitors_queries_use_their_indexes() {
    // 20,000 jobs of 200 owners: every janitor and list query is an index
    // scan, not a scan of the table.
    let (db, actors) = actors(1).await;
    let jobs = &actors[0];
    let client = jobs.pool().get().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO jobs (id, owner_id, owner_email, filename, content_type, state, options, \
               mp3_id, updated_at, expires_at) \
             SELECT lpad(to_hex(g), 24, '0'), 'owner-' || (g % 200), 'o@example.com', 'f', 'c', \
               (ARRAY['queued','done','failed','deleted','done'])[1 + g % 5], '{}', \
               lpad(to_hex(g), 24, 'f'), now() - (g || ' s')::interval, now() + (g || ' s')::interval \
             FROM generate_series(1, 20000) g; \
             ANALYZE jobs;",
        )
        .await
        .unwrap();
    for (what, query) in [
        (
            "list",
            "SELECT * FROM jobs WHERE owner_id = 'owner-7' AND id < 'g' \
             AND state IN ('queued','converting','done','failed') ORDER BY id DESC LIMIT 21",
        ),
        (
            "stuck",
            "SELECT * FROM jobs WHERE state IN ('queued','converting') AND updated_at <= now() - interval '10 min' \
             AND (lease_until IS NULL OR lease_until < now()) ORDER BY updated_at LIMIT 100",
        ),
        (
            "sources",
            "SELECT id FROM jobs WHERE state IN ('done', 'failed') AND NOT source_deleted \
             AND updated_at <= now() ORDER BY updated_at LIMIT 100",
        ),
        (
            "expiring",
            "SELECT * FROM jobs WHERE state = 'done' AND expires_at <= now() ORDER BY expires_at LIMIT 100",
        ),
        (
            "unnotified",
            "SELECT * FROM jobs WHERE state IN ('done','failed') AND NOT notified \
             AND announced_at <= now() ORDER BY announced_at LIMIT 100",
        ),
        (
            "tombstones",
            "SELECT * FROM jobs WHERE state = 'deleted' AND updated_at <= now() ORDER BY updated_at LIMIT 100",
        ),
        (
            "quota",
            "SELECT count(*) FROM jobs WHERE owner_id = 'owner-7'",
        ),
    ] {
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN {query}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(
            !plan.contains("Seq Scan on jobs"),
            "{what} scans the table:\n{plan}"
        );
        // A batch reads its rows in order and stops: no sort of every match.
        if what != "quota" {
            assert!(!plan.contains("Sort"), "{what} sorts:\n{plan}");
        }
    }
    drop_db(&db).await;
}

#[tokio::test]
async fn progress_never_goes_backwards_across_attempts() {
    let (db, actors) = actors(1).await;
    let jobs = &actors[0];
    let j = job(JobState::Queued);
    jobs.insert(&j).await.unwrap();
    let progress = |p: Option<Job>| p.unwrap().progress.unwrap();
    assert!(matches!(
        jobs.claim(j.id, "a", TTL).await.unwrap(),
        Claim::Claimed(_)
    ));
    assert_eq!(
        progress(jobs.progress(j.id, "a", 40.0).await.unwrap()),
        40.0
    );
    // The attempt gives up and another starts over: the job shows 40 % until
    // the new attempt passes it.
    jobs.release(j.id, "a").await.unwrap().unwrap();
    assert!(matches!(
        jobs.claim(j.id, "b", TTL).await.unwrap(),
        Claim::Claimed(_)
    ));
    assert_eq!(
        progress(jobs.progress(j.id, "b", 10.0).await.unwrap()),
        40.0
    );
    assert_eq!(
        progress(jobs.progress(j.id, "b", 55.0).await.unwrap()),
        55.0
    );
    // Only the lease holder moves it.
    assert!(jobs.progress(j.id, "a", 90.0).await.unwrap().is_none());
    drop_db(&db).await;
}
