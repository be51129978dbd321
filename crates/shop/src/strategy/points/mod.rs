//! Point charges and payments' debits: read the balance (and, for a charge,
//! the charge counters), check, write the new balance and a ledger row — a
//! read-modify-write that loses updates unless concurrent writes of one
//! wallet are serialized. Each strategy serializes them differently, in the
//! protocol of [`crate::strategy`]; all write the balance and its ledger row
//! in one transaction.

mod adaptive;
mod atomic;
mod batch;
#[cfg(feature = "naive")]
mod naive;
mod optimistic;
mod pessimistic;
mod redis_lock;

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::StatusCode;
use sqlx::PgConnection;

use super::{Deps, release_all};
use crate::config::PointsStrategyKind;
use crate::domain::points::{ChargeAmount, ChargeDay, ChargeLimits, LedgerKind, PointBalance};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::lock::Lease;
use crate::storage::Db;
use crate::storage::orders::OrderRow;
use crate::storage::wallets::Wallet;
use crate::storage::{Tx, ledger, orders, wallets};

/// One charge, validated.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    pub user_id: i64,
    pub amount: ChargeAmount,
    pub on: ChargeDay,
    pub limits: ChargeLimits,
}

/// A payment's debit of one wallet.
#[derive(Debug, Clone, Copy)]
pub struct Spend {
    pub user_id: i64,
    pub amount: i64,
    pub order_id: i64,
}

/// What a wallet's writer holds across its transaction.
#[derive(Default)]
pub struct WalletHold {
    leases: Vec<Lease>,
}

#[async_trait]
pub trait PointsStrategy: Send + Sync {
    fn kind(&self) -> PointsStrategyKind;

    /// Before the transaction: what writing the wallet must hold across it.
    async fn hold(&self, _user_id: i64) -> Result<WalletHold, AppError> {
        Ok(WalletHold::default())
    }

    /// In the caller's transaction: charges the wallet within its limits.
    /// Returns the new balance.
    async fn charge(&self, conn: &mut PgConnection, charge: Charge, hold: &WalletHold) -> Result<i64, AppError>;

    /// In a payment's transaction, after its order is locked (every
    /// transaction takes the order before the wallet): debits the wallet and
    /// writes the `USE` ledger row. Too little balance is
    /// `INSUFFICIENT_POINTS`. Returns the new balance.
    async fn debit(&self, conn: &mut PgConnection, spend: Spend, hold: &WalletHold) -> Result<i64, AppError>;

    /// After the transaction committed or rolled back.
    async fn settle(&self, hold: WalletHold) {
        release_all(hold.leases).await;
    }

    /// A charge asked for on its own: held, made in a transaction of its own
    /// with its answer stored under the request's Idempotency-Key, settled.
    /// `batch` makes the charges that arrive together in one transaction.
    #[tracing::instrument(skip_all, fields(user_id = charge.user_id, strategy = ?self.kind()))]
    async fn charge_alone(&self, db: &Db, charge: Charge, claim: Option<&Claim>) -> Result<i64, AppError> {
        let hold = self.hold(charge.user_id).await?;
        let charged = async {
            let mut tx = Tx::begin(db).await?;
            let balance = self.charge(&mut tx, charge, &hold).await?;
            save_response(&mut tx, charge, balance, claim).await?;
            tx.commit().await?;
            Ok(balance)
        }
        .await;
        self.settle(hold).await;
        charged
    }

    /// A payment's first statement: its order, locked. Only a strategy
    /// without any concurrency control reads it unlocked.
    async fn lock_order(&self, conn: &mut PgConnection, order_id: i64) -> Result<Option<OrderRow>, AppError> {
        Ok(orders::lock(conn, order_id).await?)
    }
}

/// The strategy config names.
pub fn build(kind: PointsStrategyKind, deps: &Deps<'_>) -> Arc<dyn PointsStrategy> {
    match kind {
        PointsStrategyKind::Optimistic => {
            Arc::new(optimistic::Optimistic { max_retries: deps.locks.optimistic_max_retries })
        }
        PointsStrategyKind::Pessimistic => {
            Arc::new(pessimistic::Pessimistic { lock_timeout: deps.locks.db_lock_timeout() })
        }
        PointsStrategyKind::Atomic => Arc::new(atomic::Atomic),
        PointsStrategyKind::RedisLock => Arc::new(redis_lock::RedisLock { locks: deps.leases.clone() }),
        PointsStrategyKind::Batch => Arc::new(batch::Batch::start(deps.db.clone())),
        PointsStrategyKind::Adaptive => Arc::new(adaptive::Adaptive::start(deps.db.clone())),
        #[cfg(feature = "naive")]
        PointsStrategyKind::Naive => Arc::new(naive::Naive),
    }
}

/// Writes the debit of a wallet read at `balance` (with `expected_version`,
/// only if it is unchanged since) and its ledger row. `None`: the wallet
/// changed since it was read. Returns the new balance.
async fn write_debit(
    conn: &mut PgConnection,
    spend: Spend,
    balance: i64,
    expected_version: Option<i64>,
) -> Result<Option<i64>, AppError> {
    let left = balance - spend.amount;
    if left < 0 {
        return Err(AppError::InsufficientPoints);
    }
    if !wallets::set_balance(conn, spend.user_id, left, expected_version).await? {
        return Ok(None);
    }
    ledger::append(conn, spend.user_id, LedgerKind::Use, -spend.amount, left, Some(spend.order_id)).await?;
    Ok(Some(left))
}

/// Writes a charge onto the wallet as read (with `expected_version`, only if
/// it is unchanged since): the limits are checked on what was read — a stale
/// read shows at most as many charges as there were, so a refusal is final —
/// then the balance, the counters and the ledger row are written.
/// `None`: the wallet changed since it was read. Returns the new balance.
async fn write_charge(
    conn: &mut PgConnection,
    charge: Charge,
    wallet: &Wallet,
    expected_version: Option<i64>,
) -> Result<Option<i64>, AppError> {
    let counters = wallet.counters().after_charge(charge.on, charge.limits)?;
    let balance = wallet.balance + charge.amount.won();
    if !wallets::write(conn, charge.user_id, balance, counters, expected_version).await? {
        return Ok(None);
    }
    ledger::append(conn, charge.user_id, LedgerKind::Charge, charge.amount.won(), balance, None).await?;
    Ok(Some(balance))
}

/// Stores the response under the request's Idempotency-Key, in the
/// transaction of the charge.
async fn save_response(
    conn: &mut PgConnection,
    charge: Charge,
    balance: i64,
    claim: Option<&Claim>,
) -> Result<(), AppError> {
    match claim {
        Some(claim) => {
            let body = PointBalance { user_id: charge.user_id, balance };
            claim.save(conn, StatusCode::OK, &body).await
        }
        None => Ok(()),
    }
}

fn wallet_missing() -> AppError {
    AppError::not_found("user not found")
}
