//! argon2id password hashes with a configurable cost.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::PasswordCost;
use crate::error::AppError;

/// Hashes and verifies passwords on the blocking pool: one hash costs tens of
/// milliseconds of CPU at production cost, which would stall an async
/// worker. At most `permits` run at once — each holds `ARGON2_MEMORY_KIB`
/// and a core — so a flood of logins (each naming another email, which no
/// per-account throttle stops) queues briefly and is then refused with 503,
/// instead of taking a thread and its memory per request.
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    /// Verified when an email is unknown, so a login takes as long either way
    /// and its timing does not reveal which emails are registered.
    decoy_hash: String,
    permits: Arc<Semaphore>,
}

/// How long a hash waits for its turn before the request is refused.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

impl PasswordHasher {
    pub fn new(cost: PasswordCost) -> anyhow::Result<Self> {
        let PasswordCost { argon2_memory_kib: memory_kib, argon2_iterations: iterations } = cost;
        let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| {
            anyhow::anyhow!("invalid argon2 cost (memory {memory_kib} KiB, {iterations} iterations): {e}")
        })?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let decoy_hash = argon2
            .hash_password(b"decoy password")
            .map_err(|e| anyhow::anyhow!("cannot hash the decoy password: {e}"))?
            .to_string();
        let permits = Arc::new(Semaphore::new(concurrent_hashes(memory_kib)));
        Ok(Self { argon2, decoy_hash, permits })
    }

    pub async fn hash(&self, password: &str) -> Result<String, AppError> {
        let _permit = self.turn().await?;
        let (argon2, password) = (self.argon2.clone(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            argon2
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow::anyhow!("cannot hash a password: {e}"))
        })
        .await
        .context("password hashing task failed")
        .and_then(|hashed| hashed)
        .map_err(AppError::Internal)
    }

    /// Whether `password` matches `hash`; with `None` (unknown account) it
    /// spends the same time and answers false.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, AppError> {
        let _permit = self.turn().await?;
        let known = hash.is_some();
        let hash = hash.unwrap_or(&self.decoy_hash).to_owned();
        let (argon2, password) = (self.argon2.clone(), password.to_owned());
        let matches = tokio::task::spawn_blocking(move || {
            let parsed =
                PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash is not a PHC string: {e}"))?;
            Ok::<_, anyhow::Error>(argon2.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .context("password verification task failed")
        .and_then(|verified| verified)
        .map_err(AppError::Internal)?;
        Ok(known && matches)
    }

    /// Whether `hash` was made at this hasher's algorithm and cost. One that
    /// was not (the cost has been raised since) is replaced at its owner's
    /// next login: until then that login costs another price than one for
    /// an unknown email, which tells that the email exists.
    pub fn is_current(&self, hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(hash) else { return false };
        let current = self.argon2.params();
        parsed.algorithm == Algorithm::Argon2id.ident()
            && Params::try_from(&parsed).is_ok_and(|made| {
                (made.m_cost(), made.t_cost(), made.p_cost()) == (current.m_cost(), current.t_cost(), current.p_cost())
            })
    }

    async fn turn(&self) -> Result<Turn<'_>, AppError> {
        let waiting = Counted::new(metrics::gauge!("shop_password_hashes_waiting"));
        let acquired = tokio::time::timeout(QUEUE_WAIT, self.permits.acquire()).await;
        drop(waiting);
        match acquired {
            Ok(Ok(permit)) => {
                Ok(Turn { _permit: permit, _running: Counted::new(metrics::gauge!("shop_password_hashes_running")) })
            }
            _ => {
                metrics::counter!("shop_password_hashes_refused_total").increment(1);
                Err(AppError::Unavailable("password hashing is at its limit"))
            }
        }
    }
}

/// A turn at hashing, counted while held.
struct Turn<'a> {
    _permit: SemaphorePermit<'a>,
    _running: Counted,
}

/// Counts itself in a gauge while it lives (a request dropped while waiting
/// for its turn included).
struct Counted(metrics::Gauge);

impl Counted {
    fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Hashes at once: two per core (one waits on memory while the other
/// computes), and no more than a quarter of the memory available at start.
fn concurrent_hashes(memory_kib: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let by_cores = 2 * cores;
    let by_memory =
        available_memory_kib().map_or(by_cores, |available| (available / 4 / u64::from(memory_kib.max(1))) as usize);
    by_cores.min(by_memory).max(1)
}

/// `MemAvailable` of `/proc/meminfo`, where there is one; no crate needed
/// for one line of a Linux file.
fn available_memory_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_its_own_hashes_only() {
        let hasher = PasswordHasher::new(PasswordCost { argon2_memory_kib: 64, argon2_iterations: 1 }).unwrap();
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(hasher.verify("correct horse", Some(&hash)).await.unwrap());
        assert!(!hasher.verify("wrong horse", Some(&hash)).await.unwrap());
        assert!(!hasher.verify("decoy password", None).await.unwrap());
    }

    #[tokio::test]
    async fn a_hash_is_current_only_at_the_hashers_cost() {
        let cheap = PasswordHasher::new(PasswordCost { argon2_memory_kib: 64, argon2_iterations: 1 }).unwrap();
        let dearer = PasswordHasher::new(PasswordCost { argon2_memory_kib: 128, argon2_iterations: 1 }).unwrap();
        let hash = cheap.hash("correct horse").await.unwrap();
        assert!(cheap.is_current(&hash));
        assert!(!dearer.is_current(&hash));
        assert!(!cheap.is_current("not a hash"));
    }
}
