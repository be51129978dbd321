//! Redis gate: one Lua script takes every line's units from per-product
//! counters in Redis, or none; only orders that got their units go on to
//! PostgreSQL, where the same conditional decrement as `atomic` runs as the
//! last line of defence. A sale that has run out is answered from Redis.
//!
//! Each reservation has an id, recorded with its lines and the time it was
//! made (*pending*) and written on the order it becomes. It is settled by
//! whoever removes it from `pending` first: the request after its commit,
//! the request giving its units back after a failure (requests run to their
//! end even when their client leaves), or the reconciler, which completes
//! reservations older than `reconcile_after` whose order exists and gives
//! back the units of the others (a crash between the gate and the write).
//!
//! The gate may hand out too many units, never too few: PostgreSQL refuses
//! the surplus, and an order the gate let through but PostgreSQL refused
//! drops its products' counters so they are loaded afresh. Too few would
//! lose sales for good, so every way the counters are written keeps them
//! at or above the truth:
//!
//! - A counter is loaded from PostgreSQL with the row's `version`, and only
//!   if it does not exist (the first loader wins).
//! - Stock that comes back outside an order's take (a cancelled or expired
//!   order's units, an admin's new level) is applied with the version it
//!   produced: to a counter loaded at an older version only. When the
//!   counter does not exist it is kept aside, and the next load adds what
//!   its snapshot did not yet hold — so a change committed between a
//!   loader's read and its write is neither lost nor counted twice.
//! - Such a change is also written to PostgreSQL in its own transaction
//!   (`stock_gate_changes`), and deleted once applied. If its instance dies
//!   after the commit, Redis does not answer, or the commit's outcome could
//!   not be confirmed, the reconciler applies it from there: at least once,
//!   so at worst twice — too many units, never too few.
//! - Units in flight when Redis lost its keys can be handed out again, and a
//!   slow order the reconciler gave up on may still commit: over-counts,
//!   which PostgreSQL refuses.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{RecordedChanges, StockHold, StockStrategy, atomic};
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::storage::products::StockChange;
use crate::storage::{Tx, orders, products};
use crate::strategy::{Chore, Deps};

/// How long a change is kept aside for a counter not yet loaded (far
/// longer than a load takes from its read to its write), and its id
/// remembered as applied (far longer than it can wait to be passed on again).
const KEPT_ASIDE: Duration = Duration::from_secs(24 * 3600);

/// KEYS: pending, reservations, one counter per line. ARGV: reservation id,
/// one quantity per line. Answers `OK`, `OUT_OF_STOCK` or `NOT_LOADED`.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local lines = #KEYS - 2
          for i = 1, lines do
              local left = redis.call('HGET', KEYS[i + 2], 'left')
              if not left then return 'NOT_LOADED' end
              if tonumber(left) < tonumber(ARGV[i + 1]) then return 'OUT_OF_STOCK' end
          end
          local record = {}
          for i = 1, lines do
              redis.call('HINCRBY', KEYS[i + 2], 'left', -tonumber(ARGV[i + 1]))
              record[i] = KEYS[i + 2] .. '=' .. ARGV[i + 1]
          end
          local now = redis.call('TIME')
          redis.call('ZADD', KEYS[1], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[1])
          redis.call('HSET', KEYS[2], ARGV[1], table.concat(record, ' '))
          return 'OK'",
    )
});

/// Settles a reservation by returning its units, read from its record.
/// KEYS: pending, reservations. ARGV: reservation id.
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
          local record = redis.call('HGET', KEYS[2], ARGV[1])
          redis.call('HDEL', KEYS[2], ARGV[1])
          if not record then return 1 end
          for counter, quantity in string.gmatch(record, '(%S+)=(%d+)') do
              if redis.call('EXISTS', counter) == 1 then redis.call('HINCRBY', counter, 'left', quantity) end
          end
          return 1",
    )
});

/// Settles a reservation whose order committed. KEYS: pending,
/// reservations. ARGV: reservation id.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('ZREM', KEYS[1], ARGV[1])
          redis.call('HDEL', KEYS[2], ARGV[1])
          return 1",
    )
});

/// Applies stock changes committed in PostgreSQL, each once: KEYS:
/// counter, kept-aside changes, applied changes, repeated per change. ARGV:
/// change id, delta, version, repeated; then how long to keep a change
/// aside and to remember it applied (ms).
static CHANGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local keep = ARGV[#ARGV]
          for i = 1, #KEYS, 3 do
              local id, delta, version = ARGV[i], ARGV[i + 1], ARGV[i + 2]
              if redis.call('HSETNX', KEYS[i + 2], id, 1) == 1 then
                  redis.call('PEXPIRE', KEYS[i + 2], keep)
                  local loaded = redis.call('HGET', KEYS[i], 'version')
                  if loaded then
                      if tonumber(version) > tonumber(loaded) then
                          redis.call('HINCRBY', KEYS[i], 'left', delta)
                      end
                  else
                      redis.call('HSET', KEYS[i + 1], version, delta)
                      redis.call('PEXPIRE', KEYS[i + 1], keep)
                  end
              end
          end
          return 1",
    )
});

/// Loads a counter that does not exist, adding the changes kept aside that
/// its snapshot does not hold — unless the counter was dropped since the
/// loader began, whose read may then be older than what was dropped. KEYS:
/// counter, kept-aside changes, drops. ARGV: stock, version, drops seen
/// before the read. Answers 1 if loaded.
static LOAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
          if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[3] then return 0 end
          local left = tonumber(ARGV[1])
          local kept = redis.call('HGETALL', KEYS[2])
          for i = 1, #kept, 2 do
              if tonumber(kept[i]) > tonumber(ARGV[2]) then left = left + tonumber(kept[i + 1]) end
          end
          redis.call('HSET', KEYS[1], 'left', left, 'version', ARGV[2])
          redis.call('DEL', KEYS[2])
          return 1",
    )
});

/// Drops a counter, counting the drop. KEYS: counter, drops.
static DROP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('DEL', KEYS[1])
          redis.call('INCR', KEYS[2])
          return 1",
    )
});

/// Units taken from the gate for one order, not yet settled.
pub struct GateReservation {
    pub id: Uuid,
    products: Vec<i64>,
}

#[derive(Clone)]
pub struct StockGate {
    redis: ConnectionManager,
    prefix: String,
    reconcile_after: Duration,
}

#[async_trait]
impl StockStrategy for StockGate {
    fn kind(&self) -> StockStrategyKind {
        StockStrategyKind::RedisGate
    }

    async fn hold(&self, db: &PgPool, lines: &OrderLines) -> Result<StockHold, AppError> {
        Ok(StockHold { leases: Vec::new(), gate: Some(self.reserve(db, lines).await?) })
    }

    /// PostgreSQL has the last word: `atomic`'s conditional statements.
    async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, _: &StockHold) -> Result<(), AppError> {
        atomic::take_each(conn, lines).await
    }

    async fn settle(&self, hold: StockHold, placed: Result<(), &AppError>) {
        if let Some(reservation) = hold.gate {
            self.settle_reservation(reservation, placed).await;
        }
    }

    /// The changes are written down, for the reconciler to apply if this
    /// instance cannot.
    async fn record_changes(
        &self,
        conn: &mut PgConnection,
        changes: Vec<StockChange>,
    ) -> Result<RecordedChanges, AppError> {
        if changes.is_empty() {
            return Ok(RecordedChanges::default());
        }
        Ok(RecordedChanges { changes: products::record_gate_changes(conn, &changes).await? })
    }

    /// Applies stock changes just committed in PostgreSQL (see the module
    /// documentation), and deletes the rows that recorded them. If Redis
    /// does not answer, the rows stay, and the reconciler applies them.
    async fn changed(&self, db: &PgPool, recorded: RecordedChanges) {
        if recorded.changes.is_empty() {
            return;
        }
        if let Err(error) = self.apply(&recorded.changes).await {
            tracing::warn!(%error, "could not tell the stock gate of a change; the reconciler will");
            return;
        }
        let ids: Vec<i64> = recorded.changes.iter().map(|(id, _)| *id).collect();
        let forgotten = async { products::forget_gate_changes(&mut *db.acquire().await?, &ids).await };
        match forgotten.await {
            Ok(()) => self.forget_applied(&recorded.changes).await,
            // The reconciler passes them on again; the gate counts them once.
            Err(error) => tracing::warn!(%error, "could not delete applied stock gate changes"),
        }
    }

    /// Settles what was left behind, often enough that lost units are back
    /// within `reconcile_after` and a third.
    fn chore(&self, db: &PgPool) -> Option<Chore> {
        let (gate, db) = (self.clone(), db.clone());
        Some(Chore {
            every: self.reconcile_every(),
            what: "reconcile the stock gate",
            run: Box::new(move || Box::pin(gate.clone().reconcile(db.clone()))),
        })
    }

    fn holds_settle_within(&self) -> Duration {
        self.reconcile_after + self.reconcile_every()
    }
}

impl StockGate {
    pub fn new(deps: &Deps<'_>) -> Self {
        Self {
            redis: deps.redis.clone(),
            prefix: deps.redis_key_prefix.to_owned(),
            reconcile_after: deps.locks.gate_reconcile_after(),
        }
    }

    fn reconcile_every(&self) -> Duration {
        self.reconcile_after / 3
    }

    /// A hash of `left` (units the gate may still hand out) and `version`
    /// (of the product row it was loaded from).
    fn counter(&self, product_id: i64) -> String {
        format!("{}stock-gate:counter:{product_id}", self.prefix)
    }

    /// Changes committed while the counter was not loaded, by version.
    fn kept_aside(&self, product_id: i64) -> String {
        format!("{}stock-gate:changes:{product_id}", self.prefix)
    }

    /// The ids of the changes applied (or kept aside), so that a change
    /// passed on twice — by its instance and by the reconciler, or again
    /// after a lost reply — counts once.
    fn applied(&self, product_id: i64) -> String {
        format!("{}stock-gate:applied:{product_id}", self.prefix)
    }

    /// How many times the counter was dropped: a load that began before a
    /// drop must not install what it read.
    fn drops(&self, product_id: i64) -> String {
        format!("{}stock-gate:drops:{product_id}", self.prefix)
    }

    fn pending(&self) -> String {
        format!("{}stock-gate:pending", self.prefix)
    }

    fn reservations(&self) -> String {
        format!("{}stock-gate:reservations", self.prefix)
    }

    /// Takes every line's units from the gate, before the transaction.
    async fn reserve(&self, db: &PgPool, lines: &OrderLines) -> Result<GateReservation, AppError> {
        let reservation = GateReservation { id: Uuid::new_v4(), products: lines.product_ids() };
        let mut script = RESERVE.key(self.pending());
        script.key(self.reservations());
        for (product_id, _) in lines.iter() {
            script.key(self.counter(product_id));
        }
        script.arg(reservation.id.to_string());
        for (_, quantity) in lines.iter() {
            script.arg(quantity);
        }
        for _ in 0..3 {
            let answer: String = script.invoke_async(&mut self.redis.clone()).await?;
            metrics::counter!("shop_stock_gate_total", "outcome" => answer.to_lowercase()).increment(1);
            match answer.as_str() {
                "OK" => {
                    fail::fail_point!("stock::gate::reserved", |_| Err(AppError::internal(anyhow::anyhow!(
                        "simulated crash after the stock gate"
                    ))));
                    return Ok(reservation);
                }
                "OUT_OF_STOCK" => return Err(AppError::OutOfStock),
                "NOT_LOADED" => self.load(db, &reservation.products).await?,
                other => {
                    return Err(AppError::internal(anyhow::anyhow!("unexpected gate answer {other}")));
                }
            }
        }
        Err(AppError::Unavailable("the stock gate is being loaded"))
    }

    /// After the transaction: completes the reservation if its order
    /// committed, else gives its units back. An order PostgreSQL refused for
    /// want of stock shows the counters were too high: they are dropped, to
    /// be loaded afresh.
    async fn settle_reservation(&self, reservation: GateReservation, placed: Result<(), &AppError>) {
        let script = match placed {
            Ok(_) => &COMPLETE,
            // It may have been placed: the reconciler looks for the order.
            Err(AppError::OutcomeUnknown) => return,
            Err(_) => &GIVE_BACK,
        };
        let settled = script
            .key(self.pending())
            .key(self.reservations())
            .arg(reservation.id.to_string())
            .invoke_async::<i64>(&mut self.redis.clone())
            .await;
        if let Err(error) = settled {
            tracing::warn!(%error, "could not settle a stock reservation; the reconciler will");
        }
        if matches!(placed, Err(AppError::OutOfStock)) {
            for product_id in reservation.products {
                self.forget(product_id).await;
            }
        }
    }

    /// Loads the counters missing from Redis from PostgreSQL.
    async fn load(&self, db: &PgPool, product_ids: &[i64]) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let drop_keys: Vec<String> = product_ids.iter().map(|id| self.drops(*id)).collect();
        let drops: Vec<Option<i64>> = redis.mget(&drop_keys).await?;
        let rows = products::stock_of(&mut *db.acquire().await?, product_ids).await?;
        // Tests hold a load here while the stock changes in PostgreSQL.
        fail::fail_point!("stock::gate::read");
        for row in rows {
            let seen = product_ids.iter().position(|id| *id == row.id).and_then(|at| drops[at]).unwrap_or(0);
            let loaded: i64 = LOAD
                .key(self.counter(row.id))
                .key(self.kept_aside(row.id))
                .key(self.drops(row.id))
                .arg(row.stock)
                .arg(row.version)
                .arg(seen)
                .invoke_async(&mut redis)
                .await?;
            if loaded == 1 {
                metrics::counter!("shop_stock_gate_loads_total").increment(1);
            }
        }
        Ok(())
    }

    async fn apply(&self, changes: &[(i64, StockChange)]) -> redis::RedisResult<()> {
        let mut script = CHANGE.prepare_invoke();
        for (id, change) in changes {
            script.key(self.counter(change.product_id));
            script.key(self.kept_aside(change.product_id)).key(self.applied(change.product_id));
            script.arg(id).arg(change.delta).arg(change.version);
        }
        script.arg(KEPT_ASIDE.as_millis() as u64);
        script.invoke_async::<i64>(&mut self.redis.clone()).await.map(drop)
    }

    /// Once the rows of applied changes are gone, nothing can pass them on
    /// again: their ids need not be remembered. (If this fails, they expire.)
    async fn forget_applied(&self, changes: &[(i64, StockChange)]) {
        let mut pipe = redis::pipe();
        for (id, change) in changes {
            pipe.hdel(self.applied(change.product_id), id).ignore();
        }
        if let Err(error) = pipe.query_async::<()>(&mut self.redis.clone()).await {
            tracing::debug!(%error, "could not forget applied stock gate changes; they expire");
        }
    }

    /// Drops a product's counter, to be loaded afresh from PostgreSQL. If
    /// Redis does not answer, the counter stays too high, which PostgreSQL
    /// refuses.
    async fn forget(&self, product_id: i64) {
        let dropped = DROP
            .key(self.counter(product_id))
            .key(self.drops(product_id))
            .invoke_async::<i64>(&mut self.redis.clone())
            .await;
        if let Err(error) = dropped {
            tracing::warn!(%error, product_id, "could not drop a stock gate counter");
        }
    }

    /// Applies the changes whose instance did not (it died, or Redis did not
    /// answer it), oldest first; safe on many instances at once.
    async fn apply_left_behind(&self, db: &PgPool) -> Result<(), AppError> {
        let mut tx = Tx::begin(db).await?;
        // Its own instance applies a change within milliseconds of the commit.
        let left_behind_after = self.reconcile_every();
        let left = products::lock_stale_gate_changes(&mut tx, left_behind_after, 500).await?;
        if left.is_empty() {
            return Ok(());
        }
        self.apply(&left).await?;
        let ids: Vec<i64> = left.iter().map(|(id, _)| *id).collect();
        products::forget_gate_changes(&mut tx, &ids).await?;
        tx.commit().await?;
        self.forget_applied(&left).await;
        metrics::counter!("shop_stock_gate_changes_left_behind_total").increment(ids.len() as u64);
        Ok(())
    }

    /// Settles reservations pending longer than `reconcile_after`: completed
    /// if their order exists, else their units go back. Safe on many
    /// instances at once: each is settled by whoever removes it first.
    async fn reconcile(self, db: PgPool) -> Result<(), AppError> {
        self.apply_left_behind(&db).await?;
        let mut redis = self.redis.clone();
        let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut redis).await?;
        let cutoff = seconds * 1000 + micros / 1000 - self.reconcile_after.as_millis() as i64;
        let stale: Vec<String> = redis.zrangebyscore_limit(self.pending(), "-inf", cutoff, 0, 500).await?;
        for id in stale {
            let Ok(reservation) = Uuid::parse_str(&id) else {
                continue;
            };
            let placed = orders::placed_under(&mut *db.acquire().await?, reservation).await?;
            let (script, action) = if placed { (&COMPLETE, "completed") } else { (&GIVE_BACK, "returned") };
            script.key(self.pending()).key(self.reservations()).arg(&id).invoke_async::<i64>(&mut redis).await?;
            metrics::counter!("shop_stock_gate_reconciled_total", "action" => action).increment(1);
            tracing::info!(reservation = %id, action, "reconciled a stale stock reservation");
        }
        Ok(())
    }
}
