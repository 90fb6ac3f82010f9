//! The faults the driver injects, and the stack commands behind them.

use crate::{mesh::Mesh, root};
use rand::Rng;
use std::{process::Command, sync::Arc, time::Duration};
use tokio::sync::Mutex as AsyncMutex;

/// `scripts/stack <args>`, quietly; panics if it fails.
pub(crate) fn stack(args: &[&str]) {
    let out = Command::new(root().join("scripts/stack"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/stack {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/stack"))
        .arg("rabbitmqctl")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The faults, in the order this run injects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    KillConverter,
    CloseConverterConnections,
    RestartRabbitmq,
    RestartGridfs,
    StopSmtp,
    TermGateway,
}

pub(crate) async fn inject(mesh: &Arc<AsyncMutex<Mesh>>, f: Fault) -> String {
    // Drawn first: the thread's generator cannot be held across an await.
    let (i, pause) = {
        let mut rng = rand::rng();
        (
            rng.random_range(0..2),
            Duration::from_millis(rng.random_range(500..3000)),
        )
    };
    match f {
        Fault::KillConverter => {
            mesh.lock().await.converters[i] = None; // Proc's drop: SIGKILL
            tokio::time::sleep(pause).await;
            mesh.lock().await.start_converter(i);
            format!("SIGKILL converter {i}, restarted")
        }
        Fault::CloseConverterConnections => {
            // RabbitMQ 3.10 has no `user_provided_name` item: the name the
            // client gave is `connection_name` in its properties.
            let list = rabbitmqctl(&[
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ]);
            let mut n = 0;
            for line in list.lines() {
                let Some((pid, props)) = line.split_once('\t') else {
                    continue;
                };
                let name = props
                    .split_once(r#"{"connection_name",""#)
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(name, _)| name);
                if name.is_some_and(|n| n.starts_with("converter-svc")) {
                    rabbitmqctl(&["close_connection", pid.trim(), "chaos"]);
                    n += 1;
                }
            }
            format!("closed {n} converter AMQP connections")
        }
        Fault::RestartRabbitmq => {
            tokio::task::spawn_blocking(|| stack(&["restart", "rabbitmq"]))
                .await
                .unwrap();
            "restarted RabbitMQ".into()
        }
        Fault::RestartGridfs => {
            tokio::task::spawn_blocking(|| stack(&["restart", "ferretdb"]))
                .await
                .unwrap();
            "restarted the GridFS server (FerretDB)".into()
        }
        Fault::StopSmtp => {
            tokio::task::spawn_blocking(|| stack(&["stop", "mailpit"]))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            tokio::task::spawn_blocking(|| stack(&["start", "mailpit"]))
                .await
                .unwrap();
            "stopped SMTP for 30 s".into()
        }
        Fault::TermGateway => {
            let taken = mesh.lock().await.gateways[i].take();
            if let Some((mut p, _)) = taken {
                p.terminate();
                tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(40)))
                    .await
                    .unwrap();
            }
            mesh.lock().await.start_gateway(i).await;
            format!("SIGTERM gateway {i} (uploads in flight), restarted")
        }
    }
}
