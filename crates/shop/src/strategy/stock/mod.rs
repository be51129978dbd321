//! Stock reservation for an order: every line's units are taken or none
//! are, in the transaction that places the order, and stock never goes
//! below zero (`products_stock_check`, whatever the strategy). Products are
//! always taken in ascending id order, so two orders over the same products
//! never deadlock.
//!
//! A strategy works in three steps around the caller's transaction:
//! [`StockStrategy::hold`] before it begins (leases, gate units),
//! [`StockStrategy::take`] inside it, and [`StockStrategy::settle`] after it
//! commits or rolls back.

#[cfg(feature = "naive")]
mod naive;
mod optimistic;
mod pessimistic;
mod redis_gate;
mod redis_lock;

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use redis_gate::StockGate;

use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::lock::{Lease, LeaseLocks};
use crate::orders::OrderBatcher;
use crate::storage::products::{self, StockChange};

pub enum StockStrategy {
    Optimistic {
        max_retries: u32,
    },
    Pessimistic {
        lock_timeout: Duration,
    },
    Atomic,
    RedisLock(LeaseLocks),
    RedisGate(StockGate),
    /// Places orders itself, in batches (see `orders::batch`).
    Batch(OrderBatcher),
    #[cfg(feature = "naive")]
    Naive,
}

/// What a reservation holds across its transaction.
#[derive(Default)]
pub struct StockHold {
    /// `redis-lock`: one lease per product, in the order of the lines.
    leases: Vec<Lease>,
    /// `redis-gate`: the units taken from the gate.
    gate: Option<redis_gate::GateReservation>,
}

impl StockHold {
    /// The gate reservation to record on the order, if any.
    pub fn gate_reservation(&self) -> Option<Uuid> {
        self.gate.as_ref().map(|gate| gate.id)
    }
}

impl StockStrategy {
    pub fn kind(&self) -> StockStrategyKind {
        match self {
            Self::Optimistic { .. } => StockStrategyKind::Optimistic,
            Self::Pessimistic { .. } => StockStrategyKind::Pessimistic,
            Self::Atomic => StockStrategyKind::Atomic,
            Self::RedisLock(_) => StockStrategyKind::RedisLock,
            Self::RedisGate(_) => StockStrategyKind::RedisGate,
            Self::Batch(_) => StockStrategyKind::Batch,
            #[cfg(feature = "naive")]
            Self::Naive => StockStrategyKind::Naive,
        }
    }

    /// Whether operations run without any locks (the test-only `naive`
    /// strategy): orders then take their coupon unconditionally too.
    pub fn without_locks(&self) -> bool {
        #[cfg(feature = "naive")]
        if matches!(self, Self::Naive) {
            return true;
        }
        false
    }

    /// Before the transaction: what must be held across it.
    pub async fn hold(&self, db: &PgPool, lines: &OrderLines) -> Result<StockHold, AppError> {
        match self {
            Self::RedisLock(locks) => Ok(StockHold { leases: redis_lock::hold(locks, lines).await?, gate: None }),
            Self::RedisGate(gate) => Ok(StockHold { leases: Vec::new(), gate: Some(gate.reserve(db, lines).await?) }),
            _ => Ok(StockHold::default()),
        }
    }

    /// In the transaction: takes every line's units in PostgreSQL, or fails
    /// with `OUT_OF_STOCK` (the caller rolls back what was taken).
    #[tracing::instrument(skip_all, fields(strategy = ?self.kind()))]
    pub async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, hold: &StockHold) -> Result<(), AppError> {
        match self {
            Self::Optimistic { max_retries } => optimistic::take(conn, lines, *max_retries).await,
            Self::Pessimistic { lock_timeout } => pessimistic::take(conn, lines, *lock_timeout).await,
            // `batch` places its orders itself (`orders::batch`), and the
            // orders of a failed batch one by one under `atomic`.
            Self::Atomic | Self::RedisGate(_) | Self::Batch(_) => {
                // No read to race: the conditional statements are the whole take.
                fail::fail_point!("stock::take::read");
                take_each(conn, lines).await
            }
            Self::RedisLock(locks) => redis_lock::take(conn, locks, lines, &hold.leases).await,
            #[cfg(feature = "naive")]
            Self::Naive => naive::take(conn, lines).await,
        }
    }

    /// After the transaction: `placed` is its outcome.
    pub async fn settle<T>(&self, hold: StockHold, placed: &Result<T, AppError>) {
        for lease in hold.leases.into_iter().rev() {
            lease.release().await;
        }
        if let (Self::RedisGate(gate), Some(reservation)) = (self, hold.gate) {
            gate.settle(reservation, placed).await;
        }
    }

    /// In the transaction that returns units or restocks: makes sure the
    /// strategy will learn of the changes once committed, even if this
    /// instance dies first (under `redis-gate`, they are written down for it).
    pub async fn record_changes(
        &self,
        conn: &mut PgConnection,
        changes: Vec<StockChange>,
    ) -> Result<RecordedChanges, AppError> {
        let changes = match self {
            Self::RedisGate(_) if !changes.is_empty() => products::record_gate_changes(conn, &changes).await?,
            _ => Vec::new(),
        };
        Ok(RecordedChanges { changes })
    }

    /// After the transaction of [`StockStrategy::record_changes`] committed.
    pub async fn changed(&self, db: &PgPool, recorded: RecordedChanges) {
        if let Self::RedisGate(gate) = self {
            gate.changed(db, recorded).await;
        }
    }
}

/// Stock changes made outside an order's take, as recorded in their
/// transaction (see [`StockStrategy::record_changes`]).
pub struct RecordedChanges {
    /// Each with the id of the row that stands for it until the strategy
    /// has learnt of it.
    changes: Vec<(i64, StockChange)>,
}

/// Atomic: one conditional `UPDATE … WHERE stock >= quantity` per line, in
/// ascending id order; the first that finds too little fails the order and
/// the transaction rolls back what the earlier ones took. Row locks last
/// until the order commits. Never answers `CONCURRENCY_CONFLICT`.
async fn take_each(conn: &mut PgConnection, lines: &OrderLines) -> Result<(), AppError> {
    for (product_id, quantity) in lines.iter() {
        if !products::take_stock(conn, product_id, quantity, None).await? {
            return Err(AppError::OutOfStock);
        }
    }
    Ok(())
}
