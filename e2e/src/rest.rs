//! The REST edge with the tutorial's request shapes, and gRPC uploads sent
//! as a client on a slow link sends them.

use super::*;

/// The REST edge, called with the tutorial's request shapes.
#[derive(Debug)]
pub struct Rest {
    pub http: reqwest::Client,
    pub base: String,
}

impl Rest {
    pub fn new(http_addr: SocketAddr) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{http_addr}"),
        }
    }

    /// curl -X POST http://HOST/login -u EMAIL:PASSWORD
    pub async fn login(&self, email: &str, password: &str) -> String {
        let res = self
            .http
            .post(format!("{}/login", self.base))
            .basic_auth(email, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// curl -X POST -F 'file=@./NAME' -H 'Authorization: Bearer TOKEN' http://HOST/upload
    pub async fn upload(&self, token: &str, name: &str, bytes: Vec<u8>) -> serde_json::Value {
        self.upload_with(token, name, bytes, &[]).await
    }

    /// The same, with extra request headers (e.g. `traceparent`).
    pub async fn upload_with(
        &self,
        token: &str,
        name: &str,
        bytes: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> serde_json::Value {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
        let mut req = self
            .http
            .post(format!("{}/upload", self.base))
            .bearer_auth(token)
            .multipart(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// GET with the bearer token; the response checked to be 200.
    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        res
    }
}

/// A gRPC upload sent the way a client on a slow link sends it: metadata,
/// `pieces` chunks with `pause` between them, then the commit, unless `cut`
/// (the client goes away after that many pieces).
pub async fn grpc_upload_paced(
    grpc: SocketAddr,
    token: &str,
    name: &str,
    bytes: &[u8],
    pieces: usize,
    pause: Duration,
    cut: Option<usize>,
) -> Result<mp3converter_proto::media::v1::Job, tonic::Status> {
    use mp3converter_proto::media::v1::{
        UploadCommit, UploadMetadata, UploadRequest, media_service_client::MediaServiceClient,
        upload_request::Payload,
    };
    let mut media = MediaServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(4);
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let call = tokio::spawn(async move { media.upload(req).await });
    let send = |p| tx.send(UploadRequest { payload: Some(p) });
    send(Payload::Metadata(UploadMetadata {
        filename: name.to_owned(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let size = bytes.len().div_ceil(pieces.max(1)).max(1);
    for (i, part) in bytes.chunks(size).enumerate() {
        if cut == Some(i) {
            drop(tx);
            return call.await.unwrap().map(|r| r.into_inner().job.unwrap());
        }
        for c in part.chunks(1 << 20) {
            send(Payload::Chunk(bytes::Bytes::copy_from_slice(c)))
                .await
                .unwrap();
        }
        tokio::time::sleep(pause).await;
    }
    send(Payload::Commit(UploadCommit {
        total_bytes: bytes.len() as u64,
    }))
    .await
    .unwrap();
    drop(tx);
    call.await.unwrap().map(|r| r.into_inner().job.unwrap())
}

/// The MP3 id in an email: the value of `fid=` in the download command.
pub fn fid_in(text: &str) -> String {
    let start = text.find("fid=").expect("a download command in the email") + 4;
    text[start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}
