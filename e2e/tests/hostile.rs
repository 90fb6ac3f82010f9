#![allow(unreachable_pub, clippy::unwrap_used)]

//! Hostile file names through the whole mesh, over REST and over gRPC: the
//! name is kept as data on the job, the download's `Content-Disposition`
//! carries it safely, and the commands of the email Mailpit receives, run by
//! a real shell (with `curl` replaced by a stand-in that records its
//! arguments), run nothing but `curl` with server-made names.

use e2e::{Mesh, Rest, SAMPLE, fid_in};
use mp3converter_proto::{
    auth::v1::{LoginRequest, auth_service_client::AuthServiceClient},
    media::v1::{
        UploadCommit, UploadMetadata, UploadRequest, media_service_client::MediaServiceClient,
        upload_request::Payload,
    },
};
use test_kit::shell::{email_commands, run_with_fake_curl};

/// What a user sees of the job and the email for a video named `name`.
async fn check(mesh: &Mesh, rest: &Rest, token: &str, email: &str, job_id: &str, name: &str) {
    check_stored(mesh, rest, token, email, job_id, name, name).await;
}

/// [`check`] when the gateway keeps a cleaned name (`stored`: no control or
/// bidirectional-override characters, no path).
async fn check_stored(
    mesh: &Mesh,
    rest: &Rest,
    token: &str,
    email: &str,
    job_id: &str,
    name: &str,
    stored: &str,
) {
    let job: serde_json::Value = rest
        .get(token, &format!("/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["filename"], stored, "{name:?} is kept as data");

    let msg = mesh.email(email).await;
    assert!(!msg.contains('\u{202E}'), "{msg}");
    let ran = run_with_fake_curl(&email_commands(&msg));
    assert!(
        !ran.injected(),
        "{name:?}: the emailed command ran the name:\n{msg}"
    );
    let runs = &ran.curl_runs;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let output = &runs[1][2];
    assert_eq!(runs[1][..2], ["--fail", "--output"]);
    assert!(
        output.ends_with(".mp3")
            && output
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{name:?} → --output {output:?}"
    );

    // The download names the file safely: an ASCII fallback and RFC 6266's
    // filename* (percent-encoded UTF-8), one header line.
    let fid = fid_in(&msg);
    let res = rest.get(token, &format!("/download?fid={fid}")).await;
    let cd = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!cd.contains(['\n', '\r']), "{cd}");
    let fallback = cd
        .strip_prefix("attachment; filename=\"")
        .and_then(|r| r.split_once('"'))
        .map(|(f, _)| f)
        .unwrap_or_else(|| panic!("{cd}"));
    assert!(
        fallback.ends_with(".mp3") && !fallback.contains(['$', '`', '<', '\\', ';']),
        "{cd}"
    );
    // RFC 8187 attr-chars only (`$` and backquote are among them).
    let ext = cd
        .split_once("filename*=UTF-8''")
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("{cd}"));
    assert!(
        ext.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$&+-.^_`|~%".contains(c)),
        "{cd}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_over_rest_and_grpc_stay_data_in_jobs_downloads_and_emails() {
    let mesh = Mesh::start().await;
    let rest = Rest::new(mesh.http);
    let video = std::fs::read(mesh.sample("clip.mkv", SAMPLE)).unwrap();

    // REST: the tutorial's multipart upload, the name in the part's filename.
    let rest_name = "$(touch INJECTED); `touch INJECTED` it's <b>x.mkv";
    let (email, password) = mesh.user().await;
    let token = rest.login(&email, &password).await;
    let job = rest.upload(&token, rest_name, video.clone()).await;
    check(
        &mesh,
        &rest,
        &token,
        &email,
        job["job_id"].as_str().unwrap(),
        rest_name,
    )
    .await;

    // gRPC: the name in the upload's metadata, with what multipart cannot
    // carry (a newline, an RTL override), which the gateway drops.
    let grpc_name = "a\n<img src=x onerror=alert(1)>\u{202E}vkm.exe;touch INJECTED.mkv";
    let grpc_stored = "a<img src=x onerror=alert(1)>vkm.exe;touch INJECTED.mkv";
    let (email, password) = mesh.user().await;
    let token = AuthServiceClient::connect(format!("http://{}", mesh.auth))
        .await
        .unwrap()
        .login(LoginRequest {
            email: email.clone(),
            password,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut msgs = vec![UploadRequest {
        payload: Some(Payload::Metadata(UploadMetadata {
            filename: grpc_name.into(),
            content_type: "video/x-matroska".into(),
            declared_size_bytes: Some(video.len() as u64),
            options: None,
        })),
    }];
    msgs.extend(video.chunks(64 << 10).map(|c| UploadRequest {
        payload: Some(Payload::Chunk(bytes::Bytes::copy_from_slice(c))),
    }));
    msgs.push(UploadRequest {
        payload: Some(Payload::Commit(UploadCommit {
            total_bytes: video.len() as u64,
        })),
    });
    let mut req = tonic::Request::new(futures::stream::iter(msgs));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let job = MediaServiceClient::connect(format!("http://{}", mesh.grpc))
        .await
        .unwrap()
        .upload(req)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    check_stored(
        &mesh,
        &rest,
        &token,
        &email,
        &job.job_id,
        grpc_name,
        grpc_stored,
    )
    .await;
    mesh.stop().await;
}
