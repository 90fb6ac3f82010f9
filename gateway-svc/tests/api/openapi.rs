//! The OpenAPI description the edge serves: valid by Redocly's linter, and
//! naming only routes that exist, with the methods they take.

use crate::helpers::*;

#[tokio::test]
async fn the_openapi_document_lints_clean_and_names_routes_that_exist() {
    let auth = Auth::start().await;
    let app = spawn_app(&auth).await;
    let res = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let text = res.text().await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    // Redocly CLI (scripts/stack installs it), with the repository's rules.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join(".tools/bin/redocly"))
        .args(["lint", "--format", "stylish", "--config"])
        .arg(root.join("redocly.yaml"))
        .arg(&file)
        .output()
        .expect("redocly (scripts/stack up installs it)");
    assert!(
        out.status.success(),
        "redocly lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every operation it names is routed: not the fallback's 404, not 405.
    let http = reqwest::Client::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "0").replace("{file}", "app.js");
            let res = http
                .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            assert_ne!(res.status(), 405, "{method} {path}");
            let body = res.text().await.unwrap_or_default();
            assert!(!body.contains("no such route"), "{method} {path}: {body}");
        }
    }
    app.stop().await;
    auth.stop().await;
}
