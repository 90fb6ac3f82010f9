//! Argon2id password hashing. Hashing is CPU-bound and memory-hard (19 MiB
//! each by default), so it runs on the blocking pool, and a semaphore bounds
//! how many run at once.
//!
//! Under a flood the semaphore alone is not enough: every waiting caller is
//! work promised for later. So the wait is bounded twice, in length (at most
//! `max_waiting` callers queue) and in time (`queue_timeout`), and a caller
//! that cannot get a slot is told at once to come back ([`HashError::Busy`]).
//! A slot moves into the blocking task and is released when the hash ends,
//! not when the caller goes away: a cancelled call (client reset, gateway
//! deadline) must not free a slot while its hash still runs, or the bound
//! means nothing.
//!
//! Each slot also owns Argon2's working memory and keeps it for the next
//! hash. Letting the crate allocate and free 19 MiB per hash leaves the
//! freed blocks in the allocator's per-thread arenas (glibc keeps large
//! frees once its mmap threshold has adapted), one per blocking thread that
//! ever hashed: a login flood then grew the process by hundreds of MiB that
//! it never gave back. With owned buffers the hashes' memory is exactly
//! `max_concurrent` × ARGON2_MEMORY_KIB, whichever thread runs them.

use crate::domain::Password;
use argon2::{
    ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many hashes run at once and how long and how many callers wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_concurrent: usize,
    pub(crate) max_waiting: usize,
    pub(crate) queue_timeout: Duration,
}

impl Limits {
    /// One hash at a time, callers wait as long as it takes: for the CLI.
    pub(crate) const ONE_AT_A_TIME: Self = Self {
        max_concurrent: 1,
        max_waiting: usize::MAX,
        queue_timeout: Duration::MAX,
    };
}

/// Argon2 working memories not in use; never more than `max_concurrent`.
type Memories = Arc<Mutex<Vec<Vec<Block>>>>;

#[derive(Clone)]
pub(crate) struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    memories: Memories,
    waiting: Arc<AtomicUsize>,
    limits: Limits,
    /// A hash of a random password, verified when the email is unknown so
    /// that answering "no such user" costs as much as a wrong password.
    dummy: Arc<str>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.params)
            .field("limits", &self.limits)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed")]
    Join(#[from] tokio::task::JoinError),
    /// Every slot is taken and the queue is full or did not move in time.
    #[error("too many password checks in progress")]
    Busy,
}

fn hash_error(e: impl std::fmt::Display) -> HashError {
    HashError::Hash(e.to_string())
}

/// Counts a caller in the queue for as long as it waits.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The right to hash, with the memory to hash in. Dropped when the hash
/// ends: the memory goes back to the pool, then the permit.
struct Slot {
    memory: Vec<Block>,
    memories: Memories,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// The first `params.block_count()` blocks, grown if a stored hash asks
    /// for more than any before.
    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let n = params.block_count();
        if self.memory.len() < n {
            self.memory.resize(n, Block::default());
        }
        &mut self.memory[..n]
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        self.memories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(memory);
    }
}

impl Hasher {
    pub(crate) async fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        limits: Limits,
    ) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError::Params(e.to_string()))?;
        let limits = Limits {
            max_concurrent: limits.max_concurrent.max(1),
            ..limits
        };
        let mut hasher = Self {
            params,
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            memories: Arc::default(),
            waiting: Arc::new(AtomicUsize::new(0)),
            limits,
            dummy: Arc::from(""),
        };
        let random = uuid::Uuid::new_v4().to_string();
        let dummy = hasher
            .hash(Password::for_login(&random).map_err(HashError::Hash)?)
            .await?;
        hasher.dummy = Arc::from(dummy);
        Ok(hasher)
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// A slot to hash in, or [`HashError::Busy`] without waiting long.
    async fn slot(&self) -> Result<Slot, HashError> {
        let permit = self.permit().await?;
        let memory = self
            .memories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        Ok(Slot {
            memory,
            memories: self.memories.clone(),
            _permit: permit,
        })
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, HashError> {
        // The fast path takes no place in the queue.
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self.waiting.clone());
        if queued >= self.limits.max_waiting {
            metrics::counter!("mp3converter_auth_hash_refusals_total", "why" => "queue_full")
                .increment(1);
            return Err(HashError::Busy);
        }
        let acquire = self.permits.clone().acquire_owned();
        match tokio::time::timeout(self.limits.queue_timeout, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(hash_error(closed)),
            Err(_elapsed) => {
                metrics::counter!("mp3converter_auth_hash_refusals_total", "why" => "timeout")
                    .increment(1);
                Err(HashError::Busy)
            }
        }
    }

    /// A PHC string (`$argon2id$v=19$m=…`) with a fresh random salt.
    pub(crate) async fn hash(&self, password: Password) -> Result<String, HashError> {
        let mut slot = self.slot().await?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let salt = argon2::password_hash::generate_salt();
            let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
            Self::argon2(params.clone())
                .hash_password_into_with_memory(
                    password.as_bytes(),
                    &salt,
                    &mut out,
                    slot.blocks(&params),
                )
                .map_err(hash_error)?;
            let phc = PasswordHash {
                algorithm: ARGON2ID_IDENT,
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params).map_err(hash_error)?,
                salt: Some(Salt::new(&salt).map_err(hash_error)?),
                hash: Some(Output::new(&out).map_err(hash_error)?),
            };
            Ok(phc.to_string())
        })
        .await?
    }

    /// Whether `password` matches `phc`; with `None` (unknown user) it checks
    /// against the dummy hash and answers false, taking the same time.
    pub(crate) async fn verify(
        &self,
        password: Password,
        phc: Option<String>,
    ) -> Result<bool, HashError> {
        let mut slot = self.slot().await?;
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.to_string());
        let ok = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&phc).map_err(hash_error)?;
            let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
                return Err(HashError::Hash(
                    "the stored hash has no salt or output".into(),
                ));
            };
            // The parameters stored in the hash are used, so old hashes still
            // verify after the cost is raised.
            let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(hash_error)?;
            let version = parsed
                .version
                .map(Version::try_from)
                .transpose()
                .map_err(hash_error)?
                .unwrap_or_default();
            let params = Params::try_from(&parsed).map_err(hash_error)?;
            let mut out = vec![0u8; expected.len()];
            Argon2::new(algorithm, version, params.clone())
                .hash_password_into_with_memory(
                    password.as_bytes(),
                    salt,
                    &mut out,
                    slot.blocks(&params),
                )
                .map_err(hash_error)?;
            // `Output`'s equality is constant-time.
            Ok::<_, HashError>(Output::new(&out).map_err(hash_error)? == *expected)
        })
        .await??;
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn limits(max_concurrent: usize, max_waiting: usize, queue_timeout: Duration) -> Limits {
        Limits {
            max_concurrent,
            max_waiting,
            queue_timeout,
        }
    }

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        // Small cost: this tests behaviour, not strength.
        let h = Hasher::new(1024, 1, 1, limits(2, 8, Duration::from_secs(5)))
            .await
            .unwrap();
        let pw = || Password::for_login("correct horse").unwrap();
        let a = h.hash(pw()).await.unwrap();
        let b = h.hash(pw()).await.unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "same salt twice");
        assert!(h.verify(pw(), Some(a.clone())).await.unwrap());
        assert!(
            !h.verify(Password::for_login("wrong").unwrap(), Some(a))
                .await
                .unwrap()
        );
        assert!(!h.verify(pw(), None).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_made_by_the_argon2_crate_still_verify() {
        // Users created before hashing moved to reused memory.
        use argon2::password_hash::PasswordHasher as _;
        let h = Hasher::new(1024, 1, 1, limits(1, 8, Duration::from_secs(5)))
            .await
            .unwrap();
        let params = Params::new(2048, 2, 1, None).unwrap();
        let old = Hasher::argon2(params)
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        let pw = |p: &str| Password::for_login(p).unwrap();
        assert!(
            h.verify(pw("correct horse"), Some(old.clone()))
                .await
                .unwrap()
        );
        assert!(!h.verify(pw("correct horsf"), Some(old)).await.unwrap());
        // And ours verify with the crate's verifier.
        use argon2::password_hash::PasswordVerifier as _;
        let ours = h.hash(pw("battery staple")).await.unwrap();
        assert!(
            Hasher::argon2(Params::default())
                .verify_password(b"battery staple", &PasswordHash::new(&ours).unwrap())
                .is_ok()
        );
    }

    #[tokio::test]
    async fn working_memory_is_reused_one_buffer_per_slot() {
        let h = Hasher::new(1024, 1, 1, limits(2, 32, Duration::from_secs(30)))
            .await
            .unwrap();
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(
                    async move { h.verify(Password::for_login("pw").unwrap(), None).await },
                )
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let memories = h.memories.lock().unwrap();
        assert!(
            (1..=2).contains(&memories.len()),
            "{} buffers for 2 slots",
            memories.len()
        );
        assert!(memories.iter().all(|m| m.len() == 1024));
    }

    /// Takes every permit, as running hashes would.
    async fn saturate(h: &Hasher) -> Vec<OwnedSemaphorePermit> {
        let mut held = Vec::new();
        while let Ok(p) = h.permits.clone().try_acquire_owned() {
            held.push(p);
        }
        held
    }

    #[tokio::test]
    async fn a_saturated_hasher_answers_busy_after_the_queue_timeout() {
        let h = Hasher::new(1024, 1, 1, limits(1, 8, Duration::from_millis(100)))
            .await
            .unwrap();
        let held = saturate(&h).await;
        let started = Instant::now();
        let res = h.verify(Password::for_login("pw").unwrap(), None).await;
        assert!(matches!(res, Err(HashError::Busy)), "{res:?}");
        let waited = started.elapsed();
        assert!(
            (Duration::from_millis(90)..Duration::from_secs(2)).contains(&waited),
            "{waited:?}"
        );
        drop(held);
        assert!(
            h.verify(Password::for_login("pw").unwrap(), None)
                .await
                .is_ok()
        );
        assert_eq!(h.waiting.load(Ordering::Acquire), 0, "queue count leaks");
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once() {
        let h = Hasher::new(1024, 1, 1, limits(1, 2, Duration::from_secs(30)))
            .await
            .unwrap();
        let held = saturate(&h).await;
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(
                    async move { h.verify(Password::for_login("pw").unwrap(), None).await },
                )
            })
            .collect();
        while h.waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let res = h.verify(Password::for_login("pw").unwrap(), None).await;
        assert!(matches!(res, Err(HashError::Busy)), "{res:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(held);
        for q in queued {
            assert!(q.await.unwrap().is_ok(), "the queued ones are served");
        }
    }

    #[tokio::test]
    async fn a_cancelled_caller_keeps_its_permit_until_the_hash_ends() {
        // Costly enough that the hash outlives the cancelled caller.
        let h = Hasher::new(64 * 1024, 3, 1, limits(1, 8, Duration::from_secs(30)))
            .await
            .unwrap();
        let call = {
            let h = h.clone();
            tokio::spawn(async move { h.hash(Password::for_login("pw").unwrap()).await })
        };
        // Wait until the hash runs (its permit is taken), then cancel the caller.
        while h.permits.available_permits() == 1 {
            tokio::task::yield_now().await;
        }
        call.abort();
        let _ = call.await;
        assert_eq!(
            h.permits.available_permits(),
            0,
            "the permit went back while the hash still runs"
        );
        // It comes back once the hash is done.
        let started = Instant::now();
        while h.permits.available_permits() == 0 {
            assert!(started.elapsed() < Duration::from_secs(30));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
