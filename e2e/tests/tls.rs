#![allow(unreachable_pub, clippy::unwrap_used)]

//! Encrypted and authenticated hops, against the real services and the
//! stack's TLS endpoints (`scripts/stack certs` makes the development CA, a
//! certificate per service and the intruders' ones):
//!
//! - the whole journey with mutual TLS between the services and TLS to
//!   PostgreSQL, RabbitMQ, MongoDB and SMTP, and the servers' own view that
//!   those connections are encrypted (`pg_stat_ssl`, `rabbitmqctl
//!   list_connections ssl`);
//! - every gRPC port refuses a client without a certificate, with one from
//!   another CA, or with the wrong identity;
//! - a rotated certificate is served without a restart and without dropping
//!   the connections already open;
//! - a half-configured service refuses to start.

use clap::Parser;
use e2e::{Mesh, Rest, SAMPLE, TlsStack, ffprobe, fid_in, tls_channel};
use std::{net::SocketAddr, time::Duration};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// grpc.health.v1 Check over `channel`: Ok when the call went through.
async fn health(channel: tonic::transport::Channel) -> Result<i32, tonic::Status> {
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        HealthClient::new(channel).check(HealthCheckRequest::default()),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("no answer in 10 s"))?;
    Ok(res?.into_inner().status)
}

fn plaintext(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_works_with_tls_on_every_hop_and_the_servers_see_it_encrypted() {
    let mesh = Mesh::start_tls().await;
    let (email, password) = mesh.user().await;
    let rest = Rest::new(mesh.http);
    let token = rest.login(&email, &password).await;
    let video = mesh.sample("tls.mkv", SAMPLE);
    rest.upload(&token, "tls.mkv", std::fs::read(&video).unwrap())
        .await;
    let text = mesh.email(&email).await;
    let fid = fid_in(&text);
    let res = rest.get(&token, &format!("/download?fid={fid}")).await;
    assert_eq!(res.status(), 200);
    let out = mesh.dir.path().join("tls.mp3");
    std::fs::write(&out, res.bytes().await.unwrap()).unwrap();
    assert_eq!(ffprobe(&out).0, "mp3");

    // PostgreSQL's view: every connection to this mesh's three databases
    // (auth-svc's, notify-svc's and the jobs) is TLS.
    let (pg, conn) = tokio_postgres::connect(&mesh.stack.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = pg
        .query(
            "SELECT a.datname, a.application_name, s.ssl, coalesce(s.version, '') \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = ANY($1)",
            &[&mesh.pg_databases.to_vec()],
        )
        .await
        .unwrap();
    for db in &mesh.pg_databases {
        let mine: Vec<_> = rows
            .iter()
            .filter(|r| r.get::<_, String>(0) == *db)
            .collect();
        assert!(!mine.is_empty(), "no connection to {db}");
        for r in mine {
            let (app, ssl, version): (String, bool, String) = (r.get(1), r.get(2), r.get(3));
            assert!(ssl, "{app}'s connection to {db} is not TLS");
            assert!(version.starts_with("TLSv1."), "{version}");
        }
    }

    // RabbitMQ's view: the services' connections (named by them) are TLS.
    let out = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack"),
    )
    .args([
        "rabbitmqctl",
        "list_connections",
        "ssl",
        "client_properties",
        "--no-table-headers",
        "-q",
    ])
    .output()
    .unwrap();
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    for svc in ["gateway-svc", "converter-svc", "notify-svc"] {
        assert!(
            list.lines().any(|l| {
                let (ssl, props) = l.split_once('\t').unwrap_or_default();
                let name = props
                    .split_once(r#"{"connection_name",""#)
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(name, _)| name);
                ssl == "true" && name.is_some_and(|n| n.starts_with(svc))
            }),
            "no TLS connection of {svc} in:\n{list}"
        );
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_port_refuses_clients_without_the_right_certificate() {
    let mesh = Mesh::start_tls().await;
    let tls = mesh.tls.clone().unwrap();
    for (port, addr, name) in [
        ("auth-svc", mesh.auth, "auth-svc"),
        ("gateway-svc", mesh.grpc, "gateway-svc"),
    ] {
        // The one identity both accept.
        let ok = health(tls_channel(
            addr,
            tls.client_config(Some("gateway-svc"), "ca.pem"),
            name,
        ))
        .await;
        assert_eq!(
            ok.unwrap(),
            1,
            "{port}: the gateway's certificate is served"
        );

        let refused = [
            ("plaintext", health(plaintext(addr)).await),
            (
                "TLS without a client certificate",
                health(tls_channel(addr, tls.client_config(None, "ca.pem"), name)).await,
            ),
            (
                "a certificate from another CA naming gateway-svc",
                health(tls_channel(
                    addr,
                    tls.client_config(Some("intruder"), "ca.pem"),
                    name,
                ))
                .await,
            ),
            (
                "the right CA, the wrong identity",
                health(tls_channel(
                    addr,
                    tls.client_config(Some("intruder-same-ca"), "ca.pem"),
                    name,
                ))
                .await,
            ),
            (
                "the server is not who the client expects",
                health(tls_channel(
                    addr,
                    tls.client_config(Some("gateway-svc"), "ca.pem"),
                    "notify-svc",
                ))
                .await,
            ),
        ];
        for (what, res) in refused {
            // Refused by the transport (the handshake, or the connection
            // closed right after it), never by a handler.
            let err = res.expect_err(&format!("{port} accepted {what}"));
            let by_transport = std::error::Error::source(&err)
                .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
            assert!(by_transport, "{port}, {what}: {err}");
        }
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_restart_or_dropped_connections() {
    let tls = TlsStack::from_env();
    let stack = test_kit::Stack::from_env();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(tls.file("auth-svc.pem"), &cert).unwrap();
    std::fs::copy(tls.file("auth-svc-key.pem"), &key).unwrap();
    let db = stack.fresh_database("tlsrot").await;
    let auth = auth_svc::app::App::build(
        auth_svc::config::Cli::try_parse_from([
            "auth-svc",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--jwt-secret",
            e2e::SECRET,
            "--tls-mode",
            "mtls",
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-file",
            &tls.file("ca.pem"),
            "--tls-allowed-clients",
            "gateway-svc",
            "--tls-reload-interval",
            "200ms",
        ])
        .unwrap()
        .config,
    )
    .await
    .unwrap();
    let addr = auth.grpc_addr();
    let token = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(auth.run_until(token.clone()));

    let before = tls_channel(
        addr,
        tls.client_config(Some("gateway-svc"), "ca.pem"),
        "auth-svc",
    );
    assert_eq!(health(before.clone()).await.unwrap(), 1);

    // The new pair (here: another certificate of the CA, which names
    // gateway-svc), written as a secret update would: the key first, then
    // the certificate. Between the two the pair does not match and is
    // ignored.
    std::fs::copy(tls.file("gateway-svc-key.pem"), &key).unwrap();
    std::fs::copy(tls.file("gateway-svc.pem"), &cert).unwrap();
    let renewed = test_kit::wait_until("the new certificate served", e2e::T, || {
        let ch = tls_channel(
            addr,
            tls.client_config(Some("gateway-svc"), "ca.pem"),
            "gateway-svc",
        );
        async move { health(ch).await.ok() }
    })
    .await;
    assert_eq!(renewed, 1);
    // The connection opened before the rotation still works.
    assert_eq!(health(before).await.unwrap(), 1);
    // New connections get the new certificate only.
    assert!(
        health(tls_channel(
            addr,
            tls.client_config(Some("gateway-svc"), "ca.pem"),
            "auth-svc",
        ))
        .await
        .is_err()
    );
    token.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_half_configured_service_refuses_to_start() {
    let tls = TlsStack::from_env();
    // Certificate files without TLS_MODE=mtls.
    let err = auth_svc::app::App::build(
        auth_svc::config::Cli::try_parse_from([
            "auth-svc",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "--jwt-secret",
            e2e::SECRET,
            "--tls-cert-file",
            &tls.file("auth-svc.pem"),
        ])
        .unwrap()
        .config,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("TLS_MODE=off"), "{err}");
    // mTLS towards auth-svc over an http:// URL.
    let err = gateway_svc::app::App::build(
        gateway_svc::config::Config::try_parse_from([
            "gateway-svc",
            "--mongodb-uri",
            "mongodb://127.0.0.1:1",
            "--amqp-url",
            "amqp://127.0.0.1:1/%2f",
            "--auth-url",
            "http://127.0.0.1:1",
            "--tls-mode",
            "mtls",
            "--tls-cert-file",
            &tls.file("gateway-svc.pem"),
            "--tls-key-file",
            &tls.file("gateway-svc-key.pem"),
            "--tls-ca-file",
            &tls.file("ca.pem"),
        ])
        .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("AUTH_URL=https"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_edge_serves_https_with_http2_when_given_a_certificate() {
    let tls = TlsStack::from_env();
    let (cert, key) = (tls.file("gateway-svc.pem"), tls.file("gateway-svc-key.pem"));
    let mesh = Mesh::start_with(&[
        ("gateway-svc", "--http-tls-cert-file", &cert),
        ("gateway-svc", "--http-tls-key-file", &key),
    ])
    .await;
    let curl = |url: String, extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
            .args(["-w", "%{http_version} %{http_code}"])
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let https = format!("https://localhost:{}/", mesh.http.port());
    // ALPN picks HTTP/2; the certificate is checked against the CA.
    assert_eq!(
        curl(https.clone(), &["--cacert", &tls.file("ca.pem"), "--http2"]),
        "2 200"
    );
    assert_eq!(
        curl(
            https.clone(),
            &["--cacert", &tls.file("ca.pem"), "--http1.1"]
        ),
        "1.1 200"
    );
    // Not from another CA, and no plaintext on that port.
    assert_eq!(
        curl(https, &["--cacert", &tls.file("other-ca.pem")]),
        "0 000"
    );
    assert_eq!(curl(format!("http://{}/", mesh.http), &[]), "0 000");
    mesh.stop().await;
}
