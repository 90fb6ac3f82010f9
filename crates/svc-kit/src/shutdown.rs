//! Graceful shutdown: SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C)
//! cancels one token that every server and consumer of the process watches.

use std::{future::Future, time::Duration};
use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A token cancelled when the process receives SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        signal().await;
        t.cancel();
    });
    token
}

/// Waits for `fut` but gives up `grace` after `token` is cancelled: draining
/// must end before Kubernetes' terminationGracePeriodSeconds, even if a
/// long-lived stream keeps a server from stopping on its own.
pub async fn drain_within<F: Future>(
    token: &CancellationToken,
    grace: Duration,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => return Some(out),
        () = token.cancelled() => {}
    }
    match tokio::time::timeout(grace, fut).await {
        Ok(out) => Some(out),
        Err(_) => {
            tracing::warn!(?grace, "grace period over, abandoning what is left");
            None
        }
    }
}
