//! Redis lease locks: mutual exclusion across server instances.
//!
//! A lock is a key set with `SET NX PX` to a random owner token, so only its
//! owner can renew or release it (release is a compare-and-delete in Lua). A
//! lease expires by itself if its holder dies; while the holder works, a
//! keep-alive task renews it. Waiters poll with jittered backoff up to a
//! deadline, then give up (the caller answers `CONCURRENCY_CONFLICT`).
//!
//! Within one instance, waiters for a resource first line up on an
//! in-process async mutex, so only one of them polls Redis and the hand-off
//! between local waiters is immediate. Without it a rush of a thousand
//! waiters polls Redis tens of thousands of times a second and starves the
//! holder of the CPU it needs to finish.
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

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::OwnedMutexGuard;
use tokio::task::AbortHandle;
use uuid::Uuid;

use crate::backoff;
use crate::redis_conn::RunScript;
use crate::redis_conn::{Keyspace, RedisConn};

/// KEYS: lock, fencing counter, give-up flag (optional), all of the
/// resource's slot. Returns the fencing token, `-1` if the give-up flag is
/// raised, or nil while the lock is held. Run twice by the same owner (a
/// client retrying after a lost reply), it answers the token it took.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
          if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
              return redis.call('INCR', KEYS[2])
          end
          if redis.call('GET', KEYS[1]) == ARGV[1] then return tonumber(redis.call('GET', KEYS[2])) end
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
    /// The give-up flag was raised while waiting: the holder's work has made
    /// the wait pointless (a campaign sold out, say).
    #[error("gave up waiting for the lock")]
    GaveUp,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Longest sleep between two polls for a lock held elsewhere.
const POLL_CAP: Duration = Duration::from_millis(10);

/// One async mutex per resource some local request waits for or holds.
type LocalQueues = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

#[derive(Clone)]
pub struct LeaseLocks {
    redis: RedisConn,
    keys: Keyspace,
    lease: Duration,
    wait: Duration,
    local: LocalQueues,
}

impl LeaseLocks {
    pub fn new(redis: RedisConn, keys: &Keyspace, lease: Duration, wait: Duration) -> Self {
        Self { redis, keys: keys.clone(), lease, wait, local: LocalQueues::default() }
    }

    /// Waits for the lock on `resource` until the configured deadline, or
    /// until the resource's flag `give_up_on` (see [`LeaseLocks::raise_flag`])
    /// is raised.
    pub async fn acquire(&self, resource: &str, give_up_on: Option<&str>) -> Result<Lease, LockError> {
        let key = self.keys.key(resource, "lock");
        let fence_key = self.fence_key(resource);
        let token = Uuid::new_v4().to_string();
        let started = Instant::now();
        let deadline = started + self.wait;
        let turn = self.local_turn(resource, deadline).await?;
        let mut redis = self.redis.clone();
        let mut acquire = ACQUIRE.key(&key);
        acquire.key(&fence_key);
        if let Some(flag) = give_up_on {
            acquire.key(self.flag_key(resource, flag));
        }
        acquire.arg(&token).arg(self.lease.as_millis() as u64);
        for attempt in 0.. {
            let fence: Option<i64> = acquire.run(&mut redis).await?;
            if fence == Some(-1) {
                return Err(LockError::GaveUp);
            }
            if let Some(fence) = fence {
                metrics::histogram!("shop_lock_wait_seconds", "lock" => "redis").record(started.elapsed());
                let keep_alive = tokio::spawn(keep_alive(redis.clone(), key.clone(), token.clone(), self.lease));
                return Ok(Lease { redis, key, token, fence, keep_alive: keep_alive.abort_handle(), turn });
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(backoff::full_jitter(attempt, POLL_CAP).min(deadline - now)).await;
        }
        metrics::counter!("shop_lock_timeouts_total", "lock" => "redis").increment(1);
        Err(LockError::Timeout)
    }

    /// Waits for this instance's turn at `resource`, until `deadline`. A
    /// local holder that stalls past its lease must not hold up the others
    /// (its lease is gone, and the fencing token guards its write), so after
    /// one lease length a waiter goes on to poll Redis without its turn.
    async fn local_turn(&self, resource: &str, deadline: Instant) -> Result<Option<LocalTurn>, LockError> {
        let queue = self.local.lock().expect("not poisoned").entry(resource.to_owned()).or_default().clone();
        let patience = deadline.min(Instant::now() + self.lease);
        let guard = tokio::time::timeout_at(patience.into(), queue.lock_owned()).await;
        match guard {
            Ok(guard) => {
                Ok(Some(LocalTurn { queues: self.local.clone(), resource: resource.to_owned(), guard: Some(guard) }))
            }
            Err(_) => {
                forget_if_idle(&self.local, resource);
                if Instant::now() < deadline { Ok(None) } else { Err(LockError::Timeout) }
            }
        }
    }

    /// Lifts the fencing counter of `resource` to at least `fence`, after the
    /// database refused a token because Redis had lost the counter.
    pub async fn advance_fence(&self, resource: &str, fence: i64) -> Result<(), redis::RedisError> {
        ADVANCE_FENCE.key(self.fence_key(resource)).arg(fence).run::<i64>(&mut self.redis.clone()).await.map(drop)
    }

    /// Raises a flag of `resource` that makes waiters acquiring with it give
    /// up. Flags record facts that stay true (a campaign sold out), so they
    /// never expire.
    pub async fn raise_flag(&self, resource: &str, flag: &str) -> Result<(), redis::RedisError> {
        redis::cmd("SET").arg(self.flag_key(resource, flag)).arg(1).query_async(&mut self.redis.clone()).await
    }

    fn flag_key(&self, resource: &str, flag: &str) -> String {
        self.keys.key(resource, format_args!("flag:{flag}"))
    }

    fn fence_key(&self, resource: &str) -> String {
        self.keys.key(resource, "fence")
    }
}

/// A held lock. Release it after the transaction it guards has committed;
/// dropped unreleased (a cancelled request), it stops renewing and expires.
pub struct Lease {
    redis: RedisConn,
    key: String,
    token: String,
    fence: i64,
    keep_alive: AbortHandle,
    /// Released after the Redis lock, so the next local waiter finds it free.
    turn: Option<LocalTurn>,
}

/// This instance's turn at a resource; the next local waiter's comes when it
/// drops.
struct LocalTurn {
    queues: LocalQueues,
    resource: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for LocalTurn {
    fn drop(&mut self) {
        drop(self.guard.take());
        forget_if_idle(&self.queues, &self.resource);
    }
}

impl Lease {
    /// The fencing token: greater than that of every earlier holder.
    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// Releases the lease (compare-and-delete). If Redis does not answer,
    /// the lease runs out by itself, and the next holder waits until then.
    pub async fn release(mut self) {
        self.keep_alive.abort();
        let released = RELEASE.key(&self.key).arg(&self.token).run::<i64>(&mut self.redis).await;
        drop(self.turn.take());
        if let Err(error) = released {
            tracing::warn!(%error, lock = %self.key, "lock release failed; the lease will expire");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

/// Renews the lease at a third of its length until aborted or the lease is lost.
async fn keep_alive(mut redis: RedisConn, key: String, token: String, lease: Duration) {
    loop {
        tokio::time::sleep(lease / 3).await;
        // Tests cut a holder off from Redis here to let its lease run out.
        fail::fail_point!("lock::renew", |_| ());
        let renewed = RENEW.key(&key).arg(&token).arg(lease.as_millis() as u64).run::<i64>(&mut redis).await;
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

/// Drops a resource's local queue once no local request holds or awaits it.
fn forget_if_idle(queues: &LocalQueues, resource: &str) {
    let mut queues = queues.lock().expect("not poisoned");
    // Clones are only made under this lock, so a count of one (the map's)
    // means no local request waits for the resource any more.
    if queues.get(resource).is_some_and(|queue| Arc::strong_count(queue) == 1) {
        queues.remove(resource);
    }
}
