//! Redis lease locks: mutual exclusion across server instances.
//!
//! A lock is a key set with `SET NX PX` to a random owner token, so only its
//! owner can renew or release it (release is a compare-and-delete in Lua). A
//! lease expires by itself if its holder dies; while the holder works, a
//! keep-alive task renews it. Waiters poll with jittered backoff up to a
//! deadline, then give up (the caller answers `CONCURRENCY_CONFLICT`).
//!
//! A lease can still run out under a live holder — a pause longer than the
//! lease, or a holder cut off from Redis — and then two holders overlap. So
//! every acquisition also takes a *fencing token*, a per-resource counter
//! incremented in the same script, and the holder's database write must be
//! conditional on its token being newer than the last one written there (see
//! `storage::wallets::claim_fence`). The stale holder's write is then refused.
//!
//! Redis without persistence can lose the counter; the database keeps the
//! highest token it saw, and [`LeaseLocks::advance_fence`] lifts the counter
//! back above it, so a reset costs one refused request, not correctness.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::task::AbortHandle;
use uuid::Uuid;

use crate::strategy::backoff;

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
              return redis.call('INCR', KEYS[2])
          end
          return false",
    )
});

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
              return redis.call('PEXPIRE', KEYS[1], ARGV[2])
          end
          return 0",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
              return redis.call('DEL', KEYS[1])
          end
          return 0",
    )
});

static ADVANCE_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
              redis.call('SET', KEYS[1], ARGV[1])
          end
          return 0",
    )
});

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("timed out waiting for the lock")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct LeaseLocks {
    redis: ConnectionManager,
    prefix: String,
    lease: Duration,
    wait: Duration,
}

impl LeaseLocks {
    pub fn new(redis: ConnectionManager, prefix: &str, lease: Duration, wait: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            lease,
            wait,
        }
    }

    /// Waits for the lock on `resource` until the configured deadline.
    pub async fn acquire(&self, resource: &str) -> Result<Lease, LockError> {
        let key = format!("{}lock:{resource}", self.prefix);
        let fence_key = self.fence_key(resource);
        let token = Uuid::new_v4().to_string();
        let started = Instant::now();
        let deadline = started + self.wait;
        let mut redis = self.redis.clone();
        for attempt in 0.. {
            let fence: Option<i64> = ACQUIRE
                .key(&key)
                .key(&fence_key)
                .arg(&token)
                .arg(self.lease.as_millis() as u64)
                .invoke_async(&mut redis)
                .await?;
            if let Some(fence) = fence {
                metrics::histogram!("shop_lock_wait_seconds", "lock" => "redis")
                    .record(started.elapsed());
                let keep_alive = tokio::spawn(keep_alive(
                    redis.clone(),
                    key.clone(),
                    token.clone(),
                    self.lease,
                ));
                return Ok(Lease {
                    redis,
                    key,
                    token,
                    fence,
                    keep_alive: keep_alive.abort_handle(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(backoff::full_jitter(attempt).min(deadline - now)).await;
        }
        metrics::counter!("shop_lock_timeouts_total", "lock" => "redis").increment(1);
        Err(LockError::Timeout)
    }

    /// Lifts the fencing counter of `resource` to at least `fence`, after the
    /// database refused a token because Redis had lost the counter.
    pub async fn advance_fence(&self, resource: &str, fence: i64) -> Result<(), redis::RedisError> {
        ADVANCE_FENCE
            .key(self.fence_key(resource))
            .arg(fence)
            .invoke_async::<i64>(&mut self.redis.clone())
            .await
            .map(drop)
    }

    fn fence_key(&self, resource: &str) -> String {
        format!("{}fence:{resource}", self.prefix)
    }
}

/// A held lock. Release it after the transaction it guards has committed;
/// dropped unreleased (a cancelled request), it stops renewing and expires.
pub struct Lease {
    redis: ConnectionManager,
    key: String,
    token: String,
    fence: i64,
    keep_alive: AbortHandle,
}

impl Lease {
    /// The fencing token: greater than that of every earlier holder.
    pub fn fence(&self) -> i64 {
        self.fence
    }

    pub async fn release(mut self) -> Result<(), redis::RedisError> {
        self.keep_alive.abort();
        RELEASE
            .key(&self.key)
            .arg(&self.token)
            .invoke_async::<i64>(&mut self.redis)
            .await
            .map(drop)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

/// Renews the lease at a third of its length until aborted or the lease is lost.
async fn keep_alive(mut redis: ConnectionManager, key: String, token: String, lease: Duration) {
    loop {
        tokio::time::sleep(lease / 3).await;
        // Tests cut a holder off from Redis here to let its lease run out.
        fail::fail_point!("lock::renew", |_| ());
        let renewed = RENEW
            .key(&key)
            .arg(&token)
            .arg(lease.as_millis() as u64)
            .invoke_async::<i64>(&mut redis)
            .await;
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(lock = %key, "lease lost before release; the fencing token guards the write");
                return;
            }
            Err(error) => tracing::warn!(lock = %key, %error, "lease renewal failed; retrying"),
        }
    }
}
