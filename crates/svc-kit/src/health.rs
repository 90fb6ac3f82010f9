//! Readiness of a service, derived from the reachability of its dependencies
//! (database, broker, GridFS, SMTP). Reported as grpc.health.v1 (overall
//! service "") for gRPC probes and as `/readyz` for HTTP probes.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};
use tonic_health::{ServingStatus, server::HealthReporter};

#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    reporter: HealthReporter,
}

#[derive(Debug, Default)]
struct State {
    components: BTreeMap<&'static str, bool>,
    services: Vec<&'static str>,
    draining: bool,
}

impl Health {
    /// Starts with every component down (not ready until checked) and returns
    /// the grpc.health.v1 server to mount.
    pub async fn new(
        components: &[&'static str],
    ) -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let state = State {
            components: components.iter().map(|c| (*c, false)).collect(),
            services: Vec::new(),
            draining: false,
        };
        let health = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                reporter,
            }),
        };
        health.publish().await;
        (health, server)
    }

    /// Records whether `component` is reachable; logs transitions.
    pub async fn set(&self, component: &'static str, up: bool) {
        let changed = {
            let mut st = self.lock();
            let prev = st.components.insert(component, up);
            prev != Some(up)
        };
        if changed {
            if up {
                tracing::info!(component, "dependency reachable");
            } else {
                tracing::warn!(component, "dependency unreachable");
            }
            self.publish().await;
        }
    }

    /// Drains (see [`Health::drain`]) as soon as `token` is cancelled, so
    /// probes take the instance out of rotation first thing on SIGTERM.
    pub fn drain_on(&self, token: tokio_util::sync::CancellationToken) {
        let health = self.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            health.drain().await;
        });
    }

    /// Marks the service as draining (shutdown has begun): never ready again.
    pub async fn drain(&self) {
        self.lock().draining = true;
        self.publish().await;
    }

    pub fn is_ready(&self) -> bool {
        let st = self.lock();
        !st.draining && st.components.values().all(|up| *up)
    }

    /// Each component and whether it is up, for `/readyz`.
    pub fn components(&self) -> BTreeMap<&'static str, bool> {
        self.lock().components.clone()
    }

    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// Mirrors readiness onto the overall ("") grpc.health.v1 status and onto
    /// every tracked service name.
    async fn publish(&self) {
        let (status, names) = {
            let st = self.lock();
            let ready = !st.draining && st.components.values().all(|up| *up);
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            (status, st.services.clone())
        };
        self.inner.reporter.set_service_status("", status).await;
        for name in names {
            self.inner.reporter.set_service_status(name, status).await;
        }
    }

    /// Also report a named gRPC service (fully qualified, e.g.
    /// `mp3converter.auth.v1.AuthService`) with the same status as "".
    pub async fn track_service(&self, name: &'static str) {
        self.lock().services.push(name);
        self.publish().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // map itself is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `check` succeeds within `limit`. The check runs as a task of its
/// own, so a timeout abandons it instead of dropping a driver future half-way
/// (which the MongoDB driver warns against); a dependency that hangs is as
/// down as one that refuses.
pub async fn within<F, T, E>(limit: std::time::Duration, check: F) -> bool
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    matches!(
        tokio::time::timeout(limit, tokio::spawn(check)).await,
        Ok(Ok(Ok(_)))
    )
}

/// The dependencies a service's readiness follows ([`Health::probes`]): all
/// asked at once every `interval` (first at once), each within `limit`
/// ([`within`]), each verdict set on its component.
#[must_use = "probes do nothing until run"]
pub struct Probes {
    health: Health,
    interval: std::time::Duration,
    limit: std::time::Duration,
    checks: Vec<(&'static str, Check)>,
}

type Check = Box<dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("interval", &self.interval)
            .field("limit", &self.limit)
            .field(
                "components",
                &self.checks.iter().map(|(c, _)| c).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Health {
    pub fn probes(&self, interval: std::time::Duration, limit: std::time::Duration) -> Probes {
        Probes {
            health: self.clone(),
            interval,
            limit,
            checks: Vec::new(),
        }
    }
}

impl Probes {
    /// `component` is up while `check` on a clone of `dependency` succeeds.
    pub fn check<D, F, Fut, T, E>(
        mut self,
        component: &'static str,
        dependency: D,
        check: F,
    ) -> Self
    where
        D: Clone + Send + Sync + 'static,
        F: Fn(D) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let limit = self.limit;
        self.checks.push((
            component,
            Box::new(move || Box::pin(within(limit, check(dependency.clone())))),
        ));
        self
    }

    /// Probes until `token` is cancelled.
    pub async fn run(self, token: tokio_util::sync::CancellationToken) {
        let Self {
            health,
            interval,
            checks,
            ..
        } = self;
        every(interval, token, || async {
            let verdicts = futures::future::join_all(checks.iter().map(|(_, check)| check())).await;
            for ((component, _), up) in checks.iter().zip(verdicts) {
                health.set(component, up).await;
            }
        })
        .await;
    }
}

/// Runs `check` every `interval` (first at once) until `token` is cancelled:
/// the loop behind each service's dependency probes.
pub async fn every<F, Fut>(
    interval: std::time::Duration,
    token: tokio_util::sync::CancellationToken,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        check().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn probes_set_each_component_from_its_own_check() {
        let (health, _server) = Health::new(&["up", "refuses", "hangs"]).await;
        let token = CancellationToken::new();
        let probes = health
            .probes(Duration::from_millis(20), Duration::from_millis(50))
            .check("up", (), |()| async { Ok::<_, ()>(()) })
            .check("refuses", (), |()| async { Err::<(), _>("refused") })
            .check("hangs", (), |()| std::future::pending::<Result<(), ()>>());
        let running = tokio::spawn(probes.run(token.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel();
        running.await.unwrap();
        let c = health.components();
        assert_eq!(
            (c["up"], c["refuses"], c["hangs"]),
            (true, false, false),
            "{c:?}"
        );
        assert!(!health.is_ready(), "two of three are down");
    }
}
