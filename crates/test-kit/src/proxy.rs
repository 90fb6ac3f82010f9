//! A TCP proxy in front of one of the stack's services, that a test can cut:
//! a dependency going away for the service under test only, while the real
//! server keeps serving every other test.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::broadcast,
};

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
    /// Bytes clients sent through it.
    sent: Arc<AtomicU64>,
    /// Where new connections go.
    target: Arc<std::sync::Mutex<String>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<free port> to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = broadcast::channel(1);
        let sent = Arc::new(AtomicU64::new(0));
        let target = Arc::new(std::sync::Mutex::new(target.to_owned()));
        let (up2, cut2, sent2, target2) = (up.clone(), cut.clone(), sent.clone(), target.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let mut stop = cut2.subscribe();
                let target = target2.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let sent = sent2.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let upstream = async {
                        let mut buf = vec![0; 64 << 10];
                        loop {
                            match from_client.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    // Counted as the client sent them: what a
                                    // cut swallows, the client must send again.
                                    sent.fetch_add(n as u64, Ordering::Relaxed);
                                    if to_server.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to_server.shutdown().await;
                    };
                    tokio::select! {
                        _ = async {
                            tokio::join!(upstream, tokio::io::copy(&mut from_server, &mut to_client))
                        } => {}
                        _ = stop.recv() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            sent,
            target,
        }
    }

    /// New connections go to `target` from now on (another replica).
    pub fn retarget(&self, target: &str) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target.to_owned();
    }

    /// The bytes clients have sent to it so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The network drops: open connections are cut; new ones go through.
    pub fn cut(&self) {
        let _ = self.cut.send(());
    }

    /// The dependency dies: open connections are cut, new ones refused.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    /// It comes back.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
