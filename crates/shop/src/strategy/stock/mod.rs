//! Stock reservation for an order: every line's units are taken or none
//! are, in the transaction that places the order, and stock never goes
//! below zero (`products_stock_check`, whatever the strategy). Products are
//! always taken in ascending id order, so two orders over the same products
//! never deadlock. The strategies follow the protocol of
//! [`crate::strategy`]: hold, take in the order's transaction, settle.

mod adaptive;
mod atomic;
mod batch;
#[cfg(feature = "naive")]
mod naive;
mod optimistic;
mod pessimistic;
mod redis_gate;
mod redis_lock;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

pub use batch::StockTally;

use super::hot_rows::HotRows;
use super::{Chore, Deps, release_all};
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::lock::Lease;
use crate::storage::Db;
use crate::storage::coupons;
use crate::storage::products::StockChange;

/// When a strategy places orders together (see
/// [`StockStrategy::places_together`]).
pub enum Together<'a> {
    Never,
    Always,
    /// Those with a hot product; the others each alone.
    WhenHot(&'a HotRows),
}

/// What a reservation holds across its transaction.
#[derive(Default)]
pub struct StockHold {
    /// One lease per product, in the order of the lines.
    leases: Vec<Lease>,
    /// Units taken from a gate.
    gate: Option<redis_gate::GateReservation>,
}

impl StockHold {
    /// The gate reservation to record on the order, if any.
    pub fn gate_reservation(&self) -> Option<Uuid> {
        self.gate.as_ref().map(|gate| gate.id)
    }
}

/// Stock changes made outside an order's take, as recorded in their
/// transaction (see [`StockStrategy::record_changes`]).
#[derive(Default)]
pub struct RecordedChanges {
    /// Each with the id of the row that stands for it until the strategy
    /// has learnt of it.
    changes: Vec<(i64, StockChange)>,
}

#[async_trait]
pub trait StockStrategy: Send + Sync {
    fn kind(&self) -> StockStrategyKind;

    /// Before the transaction: what taking the lines must hold across it.
    async fn hold(&self, _db: &Db, _lines: &OrderLines) -> Result<StockHold, AppError> {
        Ok(StockHold::default())
    }

    /// In the order's transaction: takes every line's units in PostgreSQL,
    /// or fails with `OUT_OF_STOCK` (the caller rolls back what was taken).
    async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, hold: &StockHold) -> Result<(), AppError>;

    /// After the transaction, with whether the order was placed.
    async fn settle(&self, hold: StockHold, _placed: Result<(), &AppError>) {
        release_all(hold.leases).await;
    }

    /// Whether orders that arrive together are placed together, in one
    /// transaction whose stock is counted by a [`StockTally`].
    fn places_together(&self) -> Together<'_> {
        Together::Never
    }

    /// In the order's transaction, after the stock: reserves the order's
    /// coupon if it is still available. Only a strategy without any
    /// concurrency control reserves it whatever its state.
    async fn reserve_coupon(
        &self,
        conn: &mut PgConnection,
        coupon_id: i64,
        user_id: i64,
        order_id: i64,
    ) -> Result<bool, AppError> {
        Ok(coupons::reserve(conn, coupon_id, user_id, order_id).await?)
    }

    /// In the transaction that returns units or restocks: makes sure the
    /// strategy will learn of the changes once committed, even if this
    /// instance dies first.
    async fn record_changes(
        &self,
        _conn: &mut PgConnection,
        _changes: Vec<StockChange>,
    ) -> Result<RecordedChanges, AppError> {
        Ok(RecordedChanges::default())
    }

    /// After the transaction of [`StockStrategy::record_changes`] committed.
    async fn changed(&self, _db: &Db, _recorded: RecordedChanges) {}

    /// What must be done in the background while the server runs.
    fn chore(&self, _db: &Db) -> Option<Chore> {
        None
    }

    /// How long units a request held outside PostgreSQL may outlive it if it
    /// dies before writing them, until the chore settles them: none unless
    /// the strategy holds any.
    fn holds_settle_within(&self) -> Duration {
        Duration::ZERO
    }
}

/// The strategy config names.
pub fn build(kind: StockStrategyKind, deps: &Deps<'_>) -> Arc<dyn StockStrategy> {
    match kind {
        StockStrategyKind::Optimistic => {
            Arc::new(optimistic::Optimistic { max_retries: deps.locks.optimistic_max_retries })
        }
        StockStrategyKind::Pessimistic => {
            Arc::new(pessimistic::Pessimistic { lock_timeout: deps.locks.db_lock_timeout() })
        }
        StockStrategyKind::Atomic => Arc::new(atomic::Atomic),
        StockStrategyKind::RedisLock => Arc::new(redis_lock::RedisLock { locks: deps.leases.clone() }),
        StockStrategyKind::RedisGate => Arc::new(redis_gate::StockGate::new(deps)),
        StockStrategyKind::Batch => Arc::new(batch::Batch),
        StockStrategyKind::Adaptive => Arc::new(adaptive::Adaptive::default()),
        #[cfg(feature = "naive")]
        StockStrategyKind::Naive => Arc::new(naive::Naive),
    }
}
