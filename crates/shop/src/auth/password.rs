//! argon2id password hashes with a configurable cost.

use anyhow::Context;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};

/// Hashes and verifies passwords on the blocking pool: one hash costs tens of
/// milliseconds of CPU at production cost, which would stall an async worker.
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    /// Verified when an email is unknown, so a login takes as long either way
    /// and its timing does not reveal which emails are registered.
    decoy_hash: String,
}

impl PasswordHasher {
    pub fn new(memory_kib: u32, iterations: u32) -> anyhow::Result<Self> {
        let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| {
            anyhow::anyhow!("invalid argon2 cost (memory {memory_kib} KiB, {iterations} iterations): {e}")
        })?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let decoy_hash = argon2
            .hash_password(b"decoy password")
            .map_err(|e| anyhow::anyhow!("cannot hash the decoy password: {e}"))?
            .to_string();
        Ok(Self { argon2, decoy_hash })
    }

    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let (argon2, password) = (self.argon2.clone(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            argon2
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow::anyhow!("cannot hash a password: {e}"))
        })
        .await
        .context("password hashing task failed")?
    }

    /// Whether `password` matches `hash`; with `None` (unknown account) it
    /// spends the same time and answers false.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> anyhow::Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or(&self.decoy_hash).to_owned();
        let (argon2, password) = (self.argon2.clone(), password.to_owned());
        let matches = tokio::task::spawn_blocking(move || {
            let parsed =
                PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash is not a PHC string: {e}"))?;
            Ok::<_, anyhow::Error>(argon2.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .context("password verification task failed")??;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_its_own_hashes_only() {
        let hasher = PasswordHasher::new(64, 1).unwrap();
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(hasher.verify("correct horse", Some(&hash)).await.unwrap());
        assert!(!hasher.verify("wrong horse", Some(&hash)).await.unwrap());
        assert!(!hasher.verify("decoy password", None).await.unwrap());
    }
}
