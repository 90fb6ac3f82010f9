//! Argon2id password hashing. Hashing is CPU-bound and memory-hard, so it runs
//! on the blocking pool, and a semaphore bounds how many run at once.

use crate::domain::Password;
use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Clone)]
pub(crate) struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified when the email is unknown so
    /// that answering "no such user" costs as much as a wrong password.
    dummy: Arc<str>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.params)
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
}

impl Hasher {
    pub(crate) async fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        max_concurrent: usize,
    ) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError::Params(e.to_string()))?;
        let mut hasher = Self {
            params,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
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

    /// A PHC string (`$argon2id$v=19$m=…`) with a fresh random salt.
    pub(crate) async fn hash(&self, password: Password) -> Result<String, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError::Hash(e.to_string()))?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            Self::argon2(params)
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| HashError::Hash(e.to_string()))
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
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError::Hash(e.to_string()))?;
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.to_string());
        let params = self.params.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&phc).map_err(|e| HashError::Hash(e.to_string()))?;
            // The parameters stored in the hash are used, so old hashes still
            // verify after the cost is raised.
            Ok::<_, HashError>(
                Self::argon2(params)
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
            )
        })
        .await??;
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        // Small cost: this tests behaviour, not strength.
        let h = Hasher::new(1024, 1, 1, 2).await.unwrap();
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
}
