//! Redis gate: one Lua script decides at once — one per user, units left —
//! and hands out a unit; only then is the coupon written to PostgreSQL. A
//! rush is answered from Redis: requests that cannot win never reach the
//! database, and those that can do not queue on a row lock to learn it.
//!
//! Per campaign Redis holds `left` (units not yet handed out), the set of
//! holders, and the *pending* grants (holder → time granted) whose coupon is
//! not yet known to be in PostgreSQL. Removing a holder from `pending` is how
//! a grant is settled, by whoever gets there first:
//!
//! - the issuing request after its commit (`ZREM`), or after a failed write
//!   by giving the unit back (the give-back script `ZREM`s first and only
//!   returns the unit if that removed something);
//! - the reconciler, for grants older than `reconcile_after`: if the coupon
//!   is in PostgreSQL it completes the grant, else it gives the unit back —
//!   so a crash between the gate and the write loses no unit for good. A
//!   request stops before committing once it is two thirds of that old, so a
//!   grant the reconciler returns can no longer commit.
//!
//! If Redis loses the keys (a restart without persistence), the script says
//! so and the gate is rebuilt from PostgreSQL before it answers again: one
//! instance takes a loading lock and loads `left = total − issued` and the
//! holders, the others wait for it. Grants that were in flight during the
//! loss may then be handed out twice by Redis; the database's
//! `coupon_types_issued_check` and `coupons_user_type_key` refuse the
//! surplus, which closes the gate (`left = 0`). Redis must not evict these
//! keys (`maxmemory-policy noeviction`).

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use sqlx::PgPool;

use super::{count_issued, write_coupon};
use crate::domain::coupon::{CouponType, CouponView};
use crate::http::error::AppError;
use crate::idempotency::Claim;
use crate::storage::{Tx, coupons};

/// Hands out a unit. KEYS: state, holders, pending. ARGV: user. Public so
/// the load generator can measure Redis running it alone.
pub const GRANT_LUA: &str = r"if redis.call('EXISTS', KEYS[1]) == 0 then return 'NOT_LOADED' end
          if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 'ALREADY_ISSUED' end
          if tonumber(redis.call('HGET', KEYS[1], 'left')) <= 0 then return 'SOLD_OUT' end
          redis.call('HINCRBY', KEYS[1], 'left', -1)
          redis.call('SADD', KEYS[2], ARGV[1])
          local now = redis.call('TIME')
          redis.call('ZADD', KEYS[3], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[1])
          return 'GRANTED'";

static GRANT: LazyLock<Script> = LazyLock::new(|| Script::new(GRANT_LUA));

/// Settles a pending grant by returning its unit. KEYS: state, holders,
/// pending. ARGV: user, keep holder (1 when the user turned out to hold one).
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
          redis.call('HINCRBY', KEYS[1], 'left', 1)
          if ARGV[2] == '0' then redis.call('SREM', KEYS[2], ARGV[1]) end
          return 1",
    )
});

/// Settles a pending grant that the database refused as sold out: the
/// database is the truth, so the gate closes. KEYS: state, holders, pending.
/// ARGV: user.
static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
          redis.call('SREM', KEYS[2], ARGV[1])
          redis.call('HSET', KEYS[1], 'left', 0)
          return 1",
    )
});

/// Swaps a loaded campaign in. KEYS: state, holders, pending, staged
/// holders, active campaigns, loading lock. ARGV: left, campaign id, loader token.
static LOAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[4]) == 1 then
              redis.call('RENAME', KEYS[4], KEYS[2])
          else
              redis.call('DEL', KEYS[2])
          end
          redis.call('DEL', KEYS[3])
          redis.call('HSET', KEYS[1], 'left', ARGV[1])
          redis.call('SADD', KEYS[5], ARGV[2])
          if redis.call('GET', KEYS[6]) == ARGV[3] then redis.call('DEL', KEYS[6]) end
          return 1",
    )
});

/// How long one instance may take to load a campaign before another may.
const LOADING_LEASE: Duration = Duration::from_secs(10);
const HOLDERS_PER_SADD: usize = 5_000;

#[derive(Clone)]
pub struct CouponGate {
    redis: ConnectionManager,
    prefix: String,
    /// A grant still pending after this long is reconciled.
    reconcile_after: Duration,
}

struct Keys {
    state: String,
    holders: String,
    pending: String,
    staged: String,
    loading: String,
}

enum Grant {
    Granted,
    NotLoaded,
}

impl CouponGate {
    pub fn new(redis: ConnectionManager, prefix: &str, reconcile_after: Duration) -> Self {
        Self { redis, prefix: prefix.to_owned(), reconcile_after }
    }

    /// How often the reconciler should run so that a lost unit is back
    /// within `reconcile_after` plus this.
    pub fn reconcile_every(&self) -> Duration {
        self.reconcile_after / 3
    }

    fn keys(&self, type_id: i64) -> Keys {
        let base = format!("{}coupon-gate:{type_id}", self.prefix);
        Keys {
            state: format!("{base}:state"),
            holders: format!("{base}:holders"),
            pending: format!("{base}:pending"),
            staged: format!("{base}:staged"),
            loading: format!("{base}:loading"),
        }
    }

    fn active_key(&self) -> String {
        format!("{}coupon-gate:active", self.prefix)
    }

    pub async fn issue(
        &self,
        db: &PgPool,
        coupon_type: &CouponType,
        user_id: i64,
        claim: Option<&Claim>,
    ) -> Result<CouponView, AppError> {
        let keys = self.keys(coupon_type.id);
        let granted_at = Instant::now();
        self.grant(db, coupon_type, &keys, user_id).await?;
        // A simulated crash: the unit is handed out and never written.
        fail::fail_point!("coupons::gate::granted", |_| Err(AppError::internal(anyhow::anyhow!(
            "simulated crash after the coupon gate"
        ))));
        // The gate has decided; others racing now get its answer.
        fail::fail_point!("coupons::issue::read");
        let written = async {
            let mut tx = Tx::begin(db).await?;
            count_issued(&mut tx, coupon_type.id).await?;
            let view = write_coupon(&mut tx, coupon_type, user_id, claim).await?;
            if granted_at.elapsed() > self.reconcile_after * 2 / 3 {
                // The reconciler may already have returned this unit.
                return Err(AppError::ConcurrencyConflict("the coupon could not be written in time"));
            }
            tx.commit().await?;
            Ok(view)
        }
        .await;
        let settled = match &written {
            Ok(_) => self.redis.clone().zrem(&keys.pending, user_id).await.map(|_: i64| ()),
            Err(AppError::CouponSoldOut) => self.settle(&CLOSE, &keys, user_id, None).await,
            Err(AppError::CouponAlreadyIssued) => self.settle(&GIVE_BACK, &keys, user_id, Some(true)).await,
            Err(_) => self.settle(&GIVE_BACK, &keys, user_id, Some(false)).await,
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "could not settle a coupon grant; the reconciler will");
        }
        written
    }

    async fn grant(&self, db: &PgPool, coupon_type: &CouponType, keys: &Keys, user_id: i64) -> Result<(), AppError> {
        for _ in 0..3 {
            let answer: String = GRANT
                .key(&keys.state)
                .key(&keys.holders)
                .key(&keys.pending)
                .arg(user_id)
                .invoke_async(&mut self.redis.clone())
                .await?;
            metrics::counter!("shop_coupon_gate_total", "outcome" => answer.to_lowercase()).increment(1);
            let grant = match answer.as_str() {
                "GRANTED" => Grant::Granted,
                "NOT_LOADED" => Grant::NotLoaded,
                "SOLD_OUT" => return Err(AppError::CouponSoldOut),
                "ALREADY_ISSUED" => return Err(AppError::CouponAlreadyIssued),
                other => {
                    return Err(AppError::internal(anyhow::anyhow!("unexpected gate answer {other}")));
                }
            };
            match grant {
                Grant::Granted => return Ok(()),
                Grant::NotLoaded => self.load(db, coupon_type.id, keys).await?,
            }
        }
        Err(AppError::ConcurrencyConflict("the coupon gate is being rebuilt"))
    }

    async fn settle(
        &self,
        script: &Script,
        keys: &Keys,
        user_id: i64,
        keep_holder: Option<bool>,
    ) -> redis::RedisResult<()> {
        let mut invocation = script.key(&keys.state);
        invocation.key(&keys.holders).key(&keys.pending).arg(user_id);
        if let Some(keep) = keep_holder {
            invocation.arg(u8::from(keep));
        }
        invocation.invoke_async::<i64>(&mut self.redis.clone()).await.map(drop)
    }

    /// Loads the campaign from PostgreSQL, once across instances: whoever
    /// takes the loading lock loads, the others wait until it has.
    async fn load(&self, db: &PgPool, type_id: i64, keys: &Keys) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let token = uuid::Uuid::new_v4().to_string();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(LOADING_LEASE.as_millis() as u64));
        let loader: Option<String> = redis.set_options(&keys.loading, &token, options).await?;
        if loader.is_none() {
            return self.wait_for_load(keys).await;
        }
        // Another loader may have finished between our NOT_LOADED and our lock.
        if redis.exists(&keys.state).await? {
            let _: i64 = redis.del(&keys.loading).await?;
            return Ok(());
        }
        let (left, holders) = coupons::holders(&mut *db.acquire().await?, type_id).await?;
        let _: () = redis.del(&keys.staged).await?;
        for chunk in holders.chunks(HOLDERS_PER_SADD) {
            let _: () = redis.sadd(&keys.staged, chunk).await?;
        }
        LOAD.key(&keys.state)
            .key(&keys.holders)
            .key(&keys.pending)
            .key(&keys.staged)
            .key(self.active_key())
            .key(&keys.loading)
            .arg(left)
            .arg(type_id)
            .arg(&token)
            .invoke_async::<i64>(&mut redis)
            .await?;
        metrics::counter!("shop_coupon_gate_loads_total").increment(1);
        tracing::info!(type_id, left, holders = holders.len(), "loaded the coupon gate from PostgreSQL");
        Ok(())
    }

    async fn wait_for_load(&self, keys: &Keys) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let deadline = Instant::now() + LOADING_LEASE;
        while Instant::now() < deadline {
            if redis.exists(&keys.state).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The loader died; its lease has run out, so the next attempt loads.
        Ok(())
    }

    /// Settles grants pending longer than `reconcile_after`: completed if the
    /// coupon is in PostgreSQL, else its unit is given back. Safe on many
    /// instances at once: each grant is settled by whoever removes it first.
    pub async fn reconcile(&self, db: &PgPool) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let campaigns: Vec<i64> = redis.smembers(self.active_key()).await?;
        let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut redis).await?;
        let cutoff = seconds * 1000 + micros / 1000 - self.reconcile_after.as_millis() as i64;
        for type_id in campaigns {
            let keys = self.keys(type_id);
            let stale: Vec<i64> = redis.zrangebyscore_limit(&keys.pending, "-inf", cutoff, 0, 500).await?;
            for user_id in stale {
                let issued = coupons::holds(&mut *db.acquire().await?, type_id, user_id).await?;
                let action = if issued {
                    let _: i64 = redis.zrem(&keys.pending, user_id).await?;
                    "completed"
                } else {
                    self.settle(&GIVE_BACK, &keys, user_id, Some(false)).await?;
                    "returned"
                };
                metrics::counter!("shop_coupon_gate_reconciled_total", "action" => action).increment(1);
                tracing::info!(type_id, user_id, action, "reconciled a stale coupon grant");
            }
        }
        Ok(())
    }
}
