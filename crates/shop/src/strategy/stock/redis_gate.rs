//! Redis gate: one Lua script takes every line's units from per-product
//! counters in Redis, or none; only orders that got their units go on to
//! PostgreSQL, where the same conditional decrement as `atomic` runs as the
//! last line of defence. A sale that has run out is answered from Redis.
//!
//! Each reservation has an id, recorded with its lines and the time it was
//! made (*pending*) and written on the order it becomes. It is settled by
//! whoever removes it from `pending` first: the request after its commit,
//! the request giving its units back after a failure, or the reconciler,
//! which completes reservations older than `reconcile_after` whose order
//! exists and gives back the units of the others (a crash between the gate
//! and the write). A request stops before committing once it is two thirds
//! of that old.
//!
//! A counter missing from Redis (never loaded, or lost in a restart) is
//! loaded from PostgreSQL with `SET NX`, so the first loader wins. Units
//! that were in flight when Redis lost them can be handed out again; the
//! PostgreSQL decrement refuses the surplus. Stock returned by a cancelled or
//! expired order is added back only to counters that exist (a missing one
//! loads the returned stock with it); an admin's change drops the counter.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::order::OrderLines;
use crate::http::error::AppError;
use crate::storage::{orders, products};

/// KEYS: pending, reservations, one counter per line. ARGV: reservation id,
/// one quantity per line. Answers `OK`, `OUT_OF_STOCK` or `NOT_LOADED`.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local lines = #KEYS - 2
          for i = 1, lines do
              local left = redis.call('GET', KEYS[i + 2])
              if not left then return 'NOT_LOADED' end
              if tonumber(left) < tonumber(ARGV[i + 1]) then return 'OUT_OF_STOCK' end
          end
          local record = {}
          for i = 1, lines do
              redis.call('DECRBY', KEYS[i + 2], ARGV[i + 1])
              record[i] = KEYS[i + 2] .. '=' .. ARGV[i + 1]
          end
          local now = redis.call('TIME')
          redis.call('ZADD', KEYS[1], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[1])
          redis.call('HSET', KEYS[2], ARGV[1], table.concat(record, ' '))
          return 'OK'",
    )
});

/// Settles a reservation by returning its units. KEYS: pending,
/// reservations, one counter per line. ARGV: reservation id, quantities.
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
          redis.call('HDEL', KEYS[2], ARGV[1])
          for i = 3, #KEYS do
              if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[i - 1]) end
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

/// Adds returned units to the counters that exist. KEYS: counters. ARGV: quantities.
static RETURN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"for i = 1, #KEYS do
              if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[i]) end
          end
          return 1",
    )
});

/// Units taken from the gate for one order, not yet settled.
pub struct GateReservation {
    pub id: Uuid,
    lines: Vec<(i64, i32)>,
    made_at: Instant,
    /// After this long the reconciler may give the units back, so the order
    /// must not commit any more.
    valid_for: Duration,
}

impl GateReservation {
    pub fn check_before_commit(&self) -> Result<(), AppError> {
        if self.made_at.elapsed() > self.valid_for {
            return Err(AppError::ConcurrencyConflict("the order could not be written in time"));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct StockGate {
    redis: ConnectionManager,
    prefix: String,
    reconcile_after: Duration,
}

impl StockGate {
    pub fn new(redis: ConnectionManager, prefix: &str, reconcile_after: Duration) -> Self {
        Self { redis, prefix: prefix.to_owned(), reconcile_after }
    }

    pub fn reconcile_every(&self) -> Duration {
        self.reconcile_after / 3
    }

    fn counter_prefix(&self) -> String {
        format!("{}stock-gate:product:", self.prefix)
    }

    fn counter(&self, product_id: i64) -> String {
        format!("{}{product_id}", self.counter_prefix())
    }

    fn pending(&self) -> String {
        format!("{}stock-gate:pending", self.prefix)
    }

    fn reservations(&self) -> String {
        format!("{}stock-gate:reservations", self.prefix)
    }

    /// Takes every line's units from the gate, before the transaction.
    pub async fn reserve(&self, db: &PgPool, lines: &OrderLines) -> Result<GateReservation, AppError> {
        let reservation = GateReservation {
            id: Uuid::new_v4(),
            lines: lines.iter().collect(),
            made_at: Instant::now(),
            valid_for: self.reconcile_after * 2 / 3,
        };
        self.take(db, lines, reservation.id).await?;
        fail::fail_point!("stock::gate::reserved", |_| Err(AppError::internal(anyhow::anyhow!(
            "simulated crash after the stock gate"
        ))));
        Ok(reservation)
    }

    /// After the transaction: completes the reservation, or gives its units
    /// back if the order was not written.
    pub async fn settle(&self, reservation: GateReservation, committed: bool) {
        let settled = if committed {
            COMPLETE
                .key(self.pending())
                .key(self.reservations())
                .arg(reservation.id.to_string())
                .invoke_async::<i64>(&mut self.redis.clone())
                .await
        } else {
            self.give_back(reservation.id, reservation.lines).await
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "could not settle a stock reservation; the reconciler will");
        }
    }

    async fn take(&self, db: &PgPool, lines: &OrderLines, reservation: Uuid) -> Result<(), AppError> {
        let mut script = RESERVE.key(self.pending());
        script.key(self.reservations());
        for (product_id, _) in lines.iter() {
            script.key(self.counter(product_id));
        }
        script.arg(reservation.to_string());
        for (_, quantity) in lines.iter() {
            script.arg(quantity);
        }
        for _ in 0..3 {
            let answer: String = script.invoke_async(&mut self.redis.clone()).await?;
            metrics::counter!("shop_stock_gate_total", "outcome" => answer.to_lowercase()).increment(1);
            match answer.as_str() {
                "OK" => return Ok(()),
                "OUT_OF_STOCK" => return Err(AppError::OutOfStock),
                "NOT_LOADED" => self.load(db, lines).await?,
                other => {
                    return Err(AppError::internal(anyhow::anyhow!("unexpected gate answer {other}")));
                }
            }
        }
        Err(AppError::ConcurrencyConflict("the stock gate is being loaded"))
    }

    /// Loads the counters missing from Redis from PostgreSQL; `SET NX`, so a
    /// counter is loaded once however many requests find it missing.
    async fn load(&self, db: &PgPool, lines: &OrderLines) -> Result<(), AppError> {
        let rows = products::stock_of(&mut *db.acquire().await?, &lines.product_ids()).await?;
        let mut redis = self.redis.clone();
        for row in rows {
            let loaded: bool = redis.set_nx(self.counter(row.id), row.stock).await?;
            if loaded {
                metrics::counter!("shop_stock_gate_loads_total").increment(1);
            }
        }
        Ok(())
    }

    async fn give_back(&self, reservation: Uuid, lines: Vec<(i64, i32)>) -> redis::RedisResult<i64> {
        let mut script = GIVE_BACK.key(self.pending());
        script.key(self.reservations());
        for (product_id, _) in &lines {
            script.key(self.counter(*product_id));
        }
        script.arg(reservation.to_string());
        for (_, quantity) in &lines {
            script.arg(quantity);
        }
        script.invoke_async(&mut self.redis.clone()).await
    }

    /// Adds units returned to PostgreSQL's stock (committed) to the gate.
    pub async fn returned(&self, units: &[(i64, i32)]) {
        let mut script = RETURN.prepare_invoke();
        for (product_id, quantity) in units {
            script.key(self.counter(*product_id)).arg(quantity);
        }
        if let Err(error) = script.invoke_async::<i64>(&mut self.redis.clone()).await {
            tracing::warn!(%error, "could not return units to the stock gate; dropping its counters");
            for (product_id, _) in units {
                self.forget(*product_id).await;
            }
        }
    }

    /// Drops a product's counter, to be loaded afresh from PostgreSQL.
    pub async fn forget(&self, product_id: i64) {
        if let Err(error) = self.redis.clone().del::<_, i64>(self.counter(product_id)).await {
            tracing::warn!(%error, product_id, "could not drop a stock gate counter");
        }
    }

    /// Settles reservations pending longer than `reconcile_after`: completed
    /// if their order exists, else their units go back. Safe on many
    /// instances at once: each is settled by whoever removes it first.
    pub async fn reconcile(&self, db: &PgPool) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut redis).await?;
        let cutoff = seconds * 1000 + micros / 1000 - self.reconcile_after.as_millis() as i64;
        let stale: Vec<String> = redis.zrangebyscore_limit(self.pending(), "-inf", cutoff, 0, 500).await?;
        for id in stale {
            let Ok(reservation) = Uuid::parse_str(&id) else {
                continue;
            };
            let placed = orders::placed_under(&mut *db.acquire().await?, reservation).await?;
            let action = if placed {
                COMPLETE.key(self.pending()).key(self.reservations()).arg(&id).invoke_async::<i64>(&mut redis).await?;
                "completed"
            } else {
                let record: Option<String> = redis.hget(self.reservations(), &id).await?;
                let lines = record.as_deref().map(|record| self.parse_record(record)).unwrap_or_default();
                self.give_back(reservation, lines).await?;
                "returned"
            };
            metrics::counter!("shop_stock_gate_reconciled_total", "action" => action).increment(1);
            tracing::info!(reservation = %id, action, "reconciled a stale stock reservation");
        }
        Ok(())
    }

    /// Reads `<counter key>=<quantity> …` as written by the reserve script.
    fn parse_record(&self, record: &str) -> Vec<(i64, i32)> {
        let prefix = self.counter_prefix();
        record
            .split(' ')
            .filter_map(|line| {
                let (key, quantity) = line.split_once('=')?;
                Some((key.strip_prefix(&prefix)?.parse().ok()?, quantity.parse().ok()?))
            })
            .collect()
    }
}
