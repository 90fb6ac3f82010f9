#![allow(clippy::unwrap_used)]

//! The REST edge fuzzed from its own OpenAPI description by Schemathesis
//! (scripts/stack installs it): every operation, a bounded number of
//! examples each, every check (no 5xx; statuses, content types, headers and
//! bodies as described; invalid input refused, valid input accepted; auth
//! enforced), against the whole mesh on the stack.

use e2e::Mesh;
use std::path::Path;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_the_live_edge() {
    let mesh = Mesh::start().await;
    let (email, password) = mesh.user().await;
    let token = e2e::Rest::new(mesh.http).login(&email, &password).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let report = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(root.join(".tools/bin/st"))
        // tus's PATCH body type.
        .env(
            "SCHEMATHESIS_HOOKS",
            root.join("e2e/tests/support/st_hooks.py"),
        )
        .arg("--config-file")
        .arg(root.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{}/openapi.json", mesh.http))
        .args(["--checks", "all", "--workers", "1"])
        // Fixed, so a failure in CI is one anyone can replay; more or other
        // ones through the environment.
        .args(["--max-examples", &env_or("SCHEMATHESIS_MAX_EXAMPLES", "25")])
        .args(["--seed", &env_or("SCHEMATHESIS_SEED", "20261207")])
        .args(["--request-timeout", "10", "--no-color"])
        // No example database left in the checkout between runs.
        .args(["--generation-database", "none"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        // Not fuzzed here: POST /logout revokes the token the run uses (its
        // tests: the gateway's `revocation`).
        .args(["--exclude-path", "/logout"])
        .arg("--report-dir")
        .arg(report.path())
        .output()
        .await
        .expect("st (scripts/stack up installs schemathesis)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    mesh.stop().await;
}
