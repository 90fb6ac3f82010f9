//! One run: the mesh started, uploads and faults spread over the window,
//! then every job waited for and the invariants counted.

use crate::{
    Args,
    check::{self, Outcome, walkdir_jobs},
    faults::{Fault, inject},
    mesh::Mesh,
};
use media_store::{Store, mongodb::bson::doc};
use rand::{seq::IndexedRandom, seq::SliceRandom};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use svc_kit::config::Secret;
use tokio::sync::Mutex as AsyncMutex;

#[derive(Debug, Default)]
pub(crate) struct Tally {
    ok: HashMap<String, String>, // job id → file name
    refused: usize,
}

pub(crate) async fn upload(
    port: u16,
    token: &str,
    name: &str,
    bytes: Vec<u8>,
) -> Result<String, String> {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
    );
    let res = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/upload"))
        .bearer_auth(token)
        .multipart(form)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    if status == 200 {
        Ok(body["job_id"].as_str().unwrap_or_default().to_owned())
    } else {
        Err(format!("{status}: {}", body["message"]))
    }
}

pub(crate) async fn one_run(args: &Args, run: &str, clips: &[(&str, Vec<u8>)]) -> Outcome {
    let started = Instant::now();
    let mesh = Arc::new(AsyncMutex::new(Mesh::start(run).await));
    let (email, password, stack, mongo_db) = {
        let m = mesh.lock().await;
        (
            m.admin.0.clone(),
            m.admin.1.clone(),
            m.stack.clone(),
            m.mongo_db.clone(),
        )
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let port = mesh.lock().await.gateway_ports()[0];
    let token = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/login"))
        .basic_auth(&email, Some(&password))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // The faults: each kind once, then more at random, spread over the window.
    let mut plan = vec![
        Fault::KillConverter,
        Fault::CloseConverterConnections,
        Fault::RestartRabbitmq,
        Fault::RestartGridfs,
        Fault::StopSmtp,
        Fault::TermGateway,
    ];
    {
        let mut rng = rand::rng();
        for _ in 0..3 {
            plan.push(
                *[
                    Fault::KillConverter,
                    Fault::CloseConverterConnections,
                    Fault::TermGateway,
                ]
                .choose(&mut rng)
                .unwrap(),
            );
        }
        plan.shuffle(&mut rng);
    }
    let faults = {
        let mesh = mesh.clone();
        let gap = args.window / u32::try_from(plan.len() + 1).unwrap();
        tokio::spawn(async move {
            let mut done = Vec::new();
            for f in plan {
                tokio::time::sleep(gap).await;
                let what = inject(&mesh, f).await;
                println!("    [{:>5.1}s] {what}", started.elapsed().as_secs_f64());
                done.push(what);
            }
            done
        })
    };

    // The uploads, spread over the window, to either gateway.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    let gap = args.window / u32::try_from(args.uploads).unwrap();
    for i in 0..args.uploads {
        let (kind, bytes) = &clips[i % clips.len()];
        let name = format!("chaos-{run}-{i:02}-{kind}");
        let bytes = bytes.clone();
        let (mesh, tally, token) = (mesh.clone(), tally.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            // A refused upload is retried a few times, as a client would;
            // only uploads answered OK count.
            for _ in 0..3 {
                let ports = mesh.lock().await.gateway_ports();
                let port = {
                    let mut rng = rand::rng();
                    *ports.choose(&mut rng).unwrap_or(&0)
                };
                match upload(port, &token, &name, bytes.clone()).await {
                    Ok(id) => {
                        tally.lock().unwrap().ok.insert(id, name);
                        return;
                    }
                    Err(_) => {
                        tally.lock().unwrap().refused += 1;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }));
        tokio::time::sleep(gap).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let faults = faults.await.unwrap();

    // Quiet: every job ends, the janitor sweeps.
    let store = Store::new(
        &Secret::new(stack.mongodb_uri.clone()),
        &mongo_db,
        "chaos",
        media_store::Timeouts::default(),
    )
    .await
    .unwrap();
    let job_db = media_store::Jobs::new(
        svc_kit::pg::pool(
            &Secret::new(stack.database(&mongo_db).await),
            2,
            Duration::from_secs(5),
            "chaos",
        )
        .unwrap(),
        media_store::Routes {
            video_queue: String::new(),
            mp3_queue: String::new(),
            webhook_queue: String::new(),
            delete_sources: true,
        },
    );
    let ok: HashMap<String, String> = tally.lock().unwrap().ok.clone();
    check::settle(&job_db, ok.len(), args.settle).await;
    // Past the orphan age (30 s) and a few janitor rounds, for the sweep.
    tokio::time::sleep(Duration::from_secs(45)).await;

    let jobs = job_db.all().await.unwrap();
    let mailpit = test_kit::mailpit::Mailpit::new(&stack.mailpit_api_url);
    let emails = mailpit.messages_to(&email).await.unwrap_or_default();
    let counts = check::count(&store, &jobs, &ok, &emails).await;

    let orphan_chunks = check::orphan_chunks(&store).await;
    let sources_left = store
        .video_files
        .files
        .count_documents(doc! {})
        .await
        .unwrap();
    let (work, queues) = {
        let m = mesh.lock().await;
        (
            m.work.clone(),
            [
                m.video_queue.clone(),
                m.mp3_queue.clone(),
                m.notified_queue.clone(),
            ],
        )
    };
    let temp_dirs = walkdir_jobs(&work);

    let outcome = Outcome {
        ok: ok.len(),
        refused: tally.lock().unwrap().refused,
        counts,
        reannounced: jobs
            .iter()
            .map(|j| u32::try_from(j.reannounced).unwrap_or(0))
            .sum(),
        orphan_chunks,
        sources_left,
        temp_dirs,
        faults,
        took: started.elapsed(),
    };
    drop(mesh);
    let _ = store.db.drop().await;
    stack.drop_database(&mongo_db).await;
    let _ = std::fs::remove_dir_all(&work);
    let topology = amqp_kit::TopologyArgs {
        delivery_limit: 5,
        retry_delays: [1, 3, 10, 30].map(Duration::from_secs).to_vec(),
    };
    test_kit::delete_work_queues(&stack.amqp_url, &queues.map(|q| topology.work_queue(&q))).await;
    outcome
}
