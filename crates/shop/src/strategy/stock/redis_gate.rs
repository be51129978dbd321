//! Redis gate: a Lua script per line takes the line's units from its
//! product's counter in Redis; only orders that got every line's units go
//! on to PostgreSQL, where the same conditional decrement as `atomic` runs
//! as the last line of defence. A sale that has run out is answered from
//! Redis.
//!
//! Everything the gate keeps for a product lives in the product's slot, so
//! a Redis Cluster spreads products over its masters and each script runs
//! on one. The lines of an order are taken one product at a time, in
//! product order; when one is short, the units already taken go back. While
//! they are out, another order may be refused for units that come back a
//! moment later — as it may be while any order's units are out between the
//! gate and its commit.
//!
//! Each reservation has an id, recorded in each of its products with its
//! quantity and the time it was made (*pending*), and written on the order
//! it becomes. It is settled, product by product, by whoever removes it
//! from that product's `pending` first: the request after its commit, the
//! request giving its units back after a failure (requests run to their end
//! even when their client leaves), or the reconciler, which completes
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

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::{AsyncCommands, Script};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{RecordedChanges, StockHold, StockStrategy, atomic};
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::redis_conn::RunScript;
use crate::redis_conn::{Keyspace, RedisConn};
use crate::storage::Db;
use crate::storage::products::StockChange;
use crate::storage::{Tx, orders, products};
use crate::strategy::active::ActiveSet;
use crate::strategy::{Chore, Deps};

/// How long a change is kept aside for a counter not yet loaded (far
/// longer than a load takes from its read to its write), and its id
/// remembered as applied (far longer than it can wait to be passed on again).
const KEPT_ASIDE: Duration = Duration::from_secs(24 * 3600);
/// Products the reconciler looks at side by side.
const RECONCILE_CONCURRENCY: usize = 16;

/// Takes one line's units. KEYS: the product's counter, pending,
/// reservations. ARGV: reservation id, quantity. Answers `OK`,
/// `OUT_OF_STOCK` or `NOT_LOADED`. Run twice for one reservation (a client
/// retrying after a lost reply), it takes the units once.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 'OK' end
          local left = redis.call('HGET', KEYS[1], 'left')
          if not left then return 'NOT_LOADED' end
          if tonumber(left) < tonumber(ARGV[2]) then return 'OUT_OF_STOCK' end
          redis.call('HINCRBY', KEYS[1], 'left', -tonumber(ARGV[2]))
          local now = redis.call('TIME')
          redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[1])
          redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
          return 'OK'",
    )
});

/// Settles a reservation in one product by returning its units. KEYS: the
/// product's counter, pending, reservations. ARGV: reservation id.
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
          local quantity = redis.call('HGET', KEYS[3], ARGV[1])
          redis.call('HDEL', KEYS[3], ARGV[1])
          if quantity and redis.call('EXISTS', KEYS[1]) == 1 then
              redis.call('HINCRBY', KEYS[1], 'left', quantity)
          end
          return 1",
    )
});

/// Settles a reservation in one product whose order committed. KEYS: the
/// product's counter, pending, reservations. ARGV: reservation id.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('ZREM', KEYS[2], ARGV[1])
          redis.call('HDEL', KEYS[3], ARGV[1])
          return 1",
    )
});

/// A product's reservations pending longer than ARGV[1] ms by its node's
/// clock, at most ARGV[2] of them. KEYS: the product's pending.
static STALE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local now = redis.call('TIME')
          local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[1])
          return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, ARGV[2])",
    )
});

/// Applies stock changes of one product committed in PostgreSQL, each
/// once: KEYS: counter, kept-aside changes, applied changes. ARGV: change
/// id, delta, version, repeated; then how long to keep a change aside and
/// to remember it applied (ms).
static CHANGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local keep = ARGV[#ARGV]
          for i = 1, #ARGV - 1, 3 do
              local id, delta, version = ARGV[i], ARGV[i + 1], ARGV[i + 2]
              if redis.call('HSETNX', KEYS[3], id, 1) == 1 then
                  redis.call('PEXPIRE', KEYS[3], keep)
                  local loaded = redis.call('HGET', KEYS[1], 'version')
                  if loaded then
                      if tonumber(version) > tonumber(loaded) then
                          redis.call('HINCRBY', KEYS[1], 'left', delta)
                      end
                  else
                      redis.call('HSET', KEYS[2], version, delta)
                      redis.call('PEXPIRE', KEYS[2], keep)
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
    redis: RedisConn,
    keys: Keyspace,
    reconcile_after: Duration,
    /// The products the reconciler visits.
    active: ActiveSet,
}

/// A product's keys, of its slot.
struct ProductKeys {
    /// A hash of `left` (units the gate may still hand out) and `version`
    /// (of the product row it was loaded from).
    counter: String,
    /// Changes committed while the counter was not loaded, by version.
    kept_aside: String,
    /// The ids of the changes applied (or kept aside), so that a change
    /// passed on twice — by its instance and by the reconciler, or again
    /// after a lost reply — counts once.
    applied: String,
    /// How many times the counter was dropped: a load that began before a
    /// drop must not install what it read.
    drops: String,
    /// Reservations not yet settled, by the time they were made.
    pending: String,
    /// The quantity each pending reservation took.
    reservations: String,
}

#[async_trait]
impl StockStrategy for StockGate {
    fn kind(&self) -> StockStrategyKind {
        StockStrategyKind::RedisGate
    }

    async fn hold(&self, db: &Db, lines: &OrderLines) -> Result<StockHold, AppError> {
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
    async fn changed(&self, db: &Db, recorded: RecordedChanges) {
        if recorded.changes.is_empty() {
            return;
        }
        if let Err(error) = self.apply(&recorded.changes).await {
            tracing::warn!(%error, "could not tell the stock gate of a change; the reconciler will");
            return;
        }
        let ids: Vec<i64> = recorded.changes.iter().map(|(id, _)| *id).collect();
        let forgotten = async {
            let mut conn = db.write().await?;
            products::forget_gate_changes(&mut conn, &ids).await?;
            conn.commit().await
        };
        match forgotten.await {
            Ok(()) => self.forget_applied(&recorded.changes).await,
            // The reconciler passes them on again; the gate counts them once.
            Err(error) => tracing::warn!(%error, "could not delete applied stock gate changes"),
        }
    }

    /// Settles what was left behind, often enough that lost units are back
    /// within `reconcile_after` and a third.
    fn chore(&self, db: &Db) -> Option<Chore> {
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
            keys: deps.keys.clone(),
            reconcile_after: deps.locks.gate_reconcile_after(),
            active: ActiveSet::new(deps.keys.key("stock-gate", "active")),
        }
    }

    fn reconcile_every(&self) -> Duration {
        self.reconcile_after / 3
    }

    fn product_keys(&self, product_id: i64) -> ProductKeys {
        let product = format!("product:{product_id}");
        let key = |name: &str| self.keys.key(&product, format_args!("gate:{name}"));
        ProductKeys {
            counter: key("counter"),
            kept_aside: key("changes"),
            applied: key("applied"),
            drops: key("drops"),
            pending: key("pending"),
            reservations: key("reservations"),
        }
    }

    /// Takes every line's units from the gate, before the transaction: one
    /// product at a time in product order, giving back what was taken if a
    /// line is short or Redis fails midway.
    async fn reserve(&self, db: &Db, lines: &OrderLines) -> Result<GateReservation, AppError> {
        let mut reservation = GateReservation { id: Uuid::new_v4(), products: Vec::new() };
        self.active.touch(lines.product_ids());
        let mut outcome = Ok(());
        for (product_id, quantity) in lines.iter() {
            let mut loads = 0;
            let keys = self.product_keys(product_id);
            let mut script = RESERVE.key(&keys.counter);
            script.key(&keys.pending).key(&keys.reservations).arg(reservation.id.to_string()).arg(quantity);
            outcome = loop {
                let answer: String = match script.run(&mut self.redis.clone()).await {
                    Ok(answer) => answer,
                    Err(error) => break Err(AppError::from(error)),
                };
                metrics::counter!("shop_stock_gate_total", "outcome" => answer.to_lowercase()).increment(1);
                match answer.as_str() {
                    "OK" => break Ok(()),
                    "OUT_OF_STOCK" => break Err(AppError::OutOfStock),
                    "NOT_LOADED" if loads < 3 => {
                        loads += 1;
                        if let Err(error) = self.load(db, product_id).await {
                            break Err(error);
                        }
                    }
                    "NOT_LOADED" => break Err(AppError::Unavailable("the stock gate is being loaded")),
                    other => break Err(AppError::internal(anyhow::anyhow!("unexpected gate answer {other}"))),
                }
            };
            // A line whose script may have run (its reply was lost) is
            // given back with the others.
            reservation.products.push(product_id);
            if outcome.is_err() {
                break;
            }
        }
        if let Err(error) = outcome {
            self.settle_all(&GIVE_BACK, &reservation).await;
            return Err(error);
        }
        fail::fail_point!("stock::gate::reserved", |_| Err(AppError::internal(anyhow::anyhow!(
            "simulated crash after the stock gate"
        ))));
        Ok(reservation)
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
        self.settle_all(script, &reservation).await;
        if matches!(placed, Err(AppError::OutOfStock)) {
            for product_id in reservation.products {
                self.forget(product_id).await;
            }
        }
    }

    /// Settles the reservation in each of its products, side by side.
    async fn settle_all(&self, script: &Script, reservation: &GateReservation) {
        let id = reservation.id.to_string();
        let settles = reservation.products.iter().map(|product_id| self.settle_one(script, *product_id, &id));
        if let Err(error) = futures_util::future::try_join_all(settles).await {
            tracing::warn!(%error, "could not settle a stock reservation; the reconciler will");
        }
    }

    async fn settle_one(&self, script: &Script, product_id: i64, reservation: &str) -> redis::RedisResult<()> {
        let keys = self.product_keys(product_id);
        let mut invocation = script.key(&keys.counter);
        invocation.key(&keys.pending).key(&keys.reservations).arg(reservation);
        invocation.run::<i64>(&mut self.redis.clone()).await.map(drop)
    }

    /// Loads a product's counter, missing from Redis, from PostgreSQL.
    async fn load(&self, db: &Db, product_id: i64) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let keys = self.product_keys(product_id);
        // Known to the reconciler before any reservation can be pending.
        self.active.add(&mut redis, product_id).await?;
        let drops: Option<i64> = redis.get(&keys.drops).await?;
        let rows = products::stock_of(&mut *db.read().await?, &[product_id]).await?;
        // Tests hold a load here while the stock changes in PostgreSQL.
        fail::fail_point!("stock::gate::read");
        // A product that is gone is left unloaded.
        if let Some(row) = rows.into_iter().find(|row| row.id == product_id) {
            let loaded: i64 = LOAD
                .key(&keys.counter)
                .key(&keys.kept_aside)
                .key(&keys.drops)
                .arg(row.stock)
                .arg(row.version)
                .arg(drops.unwrap_or(0))
                .run(&mut redis)
                .await?;
            if loaded == 1 {
                metrics::counter!("shop_stock_gate_loads_total").increment(1);
            }
        }
        Ok(())
    }

    /// Applies changes, one script per product, side by side.
    async fn apply(&self, changes: &[(i64, StockChange)]) -> redis::RedisResult<()> {
        let mut by_product: BTreeMap<i64, Vec<&(i64, StockChange)>> = BTreeMap::new();
        for change in changes {
            by_product.entry(change.1.product_id).or_default().push(change);
        }
        let scripts = by_product.into_iter().map(|(product_id, changes)| {
            let keys = self.product_keys(product_id);
            let mut script = CHANGE.key(&keys.counter);
            script.key(&keys.kept_aside).key(&keys.applied);
            for (id, change) in changes {
                script.arg(id).arg(change.delta).arg(change.version);
            }
            script.arg(KEPT_ASIDE.as_millis() as u64);
            let mut redis = self.redis.clone();
            async move { script.run::<i64>(&mut redis).await }
        });
        futures_util::future::try_join_all(scripts).await.map(drop)
    }

    /// Once the rows of applied changes are gone, nothing can pass them on
    /// again: their ids need not be remembered. (If this fails, they expire.)
    async fn forget_applied(&self, changes: &[(i64, StockChange)]) {
        let forgets = changes.iter().map(|(id, change)| {
            let key = self.product_keys(change.product_id).applied;
            let mut redis = self.redis.clone();
            async move { redis.hdel::<_, _, i64>(key, id).await }
        });
        if let Err(error) = futures_util::future::try_join_all(forgets).await {
            tracing::debug!(%error, "could not forget applied stock gate changes; they expire");
        }
    }

    /// Drops a product's counter, to be loaded afresh from PostgreSQL. If
    /// Redis does not answer, the counter stays too high, which PostgreSQL
    /// refuses.
    async fn forget(&self, product_id: i64) {
        let keys = self.product_keys(product_id);
        let dropped = DROP.key(&keys.counter).key(&keys.drops).run::<i64>(&mut self.redis.clone()).await;
        if let Err(error) = dropped {
            tracing::warn!(%error, product_id, "could not drop a stock gate counter");
        }
    }

    /// Applies the changes whose instance did not (it died, or Redis did not
    /// answer it), oldest first; safe on many instances at once.
    async fn apply_left_behind(&self, db: &Db) -> Result<(), AppError> {
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
    /// instances at once: each is settled by whoever removes it first. Every
    /// product ever loaded is looked at, a few side by side; one whose node
    /// fails is looked at next round.
    async fn reconcile(self, db: Db) -> Result<(), AppError> {
        if let Err(error) = self.apply_left_behind(&db).await {
            tracing::warn!(%error, "could not pass on the stock changes left behind; trying next round");
        }
        let products = self.active.round(&mut self.redis.clone()).await;
        let (gate, db) = (&self, &db);
        futures_util::stream::iter(products)
            .for_each_concurrent(RECONCILE_CONCURRENCY, |product_id| async move {
                if let Err(error) = gate.reconcile_product(db, product_id).await {
                    tracing::warn!(%error, product_id, "could not reconcile a product's stock reservations");
                }
            })
            .await;
        Ok(())
    }

    async fn reconcile_product(&self, db: &Db, product_id: i64) -> Result<(), AppError> {
        let keys = self.product_keys(product_id);
        let stale: Vec<String> = STALE
            .key(&keys.pending)
            .arg(self.reconcile_after.as_millis() as u64)
            .arg(500)
            .run(&mut self.redis.clone())
            .await?;
        for id in stale {
            let Ok(reservation) = Uuid::parse_str(&id) else {
                continue;
            };
            let placed = orders::placed_under(&mut *db.read().await?, reservation).await?;
            let (script, action) = if placed { (&COMPLETE, "completed") } else { (&GIVE_BACK, "returned") };
            self.settle_one(script, product_id, &id).await?;
            metrics::counter!("shop_stock_gate_reconciled_total", "action" => action).increment(1);
            tracing::info!(reservation = %id, product_id, action, "reconciled a stale stock reservation");
        }
        Ok(())
    }
}
