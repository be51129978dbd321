//! Point charges: read the balance and the charge counters, check the limits,
//! write the new balance and a ledger row — a read-modify-write that loses
//! updates unless concurrent charges of one user are serialized. Each
//! strategy serializes them differently; all write the balance and its ledger
//! row in one transaction.

mod atomic;
mod batch;
#[cfg(feature = "naive")]
mod naive;
mod optimistic;
mod pessimistic;
mod redis_lock;

use std::time::Duration;

use axum::http::StatusCode;
use sqlx::{PgConnection, PgPool};

use crate::config::PointsStrategyKind;
use crate::domain::points::{ChargeAmount, ChargeDay, ChargeLimits, LedgerKind, PointBalance};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::lock::{Lease, LeaseLocks};
use crate::storage::wallets::Wallet;
use crate::storage::{ledger, wallets};
use crate::strategy::{lease_error, lost_race, set_lock_timeout};

pub use batch::ChargeBatcher;

pub enum PointsStrategy {
    Optimistic {
        max_retries: u32,
    },
    Pessimistic {
        lock_timeout: Duration,
    },
    Atomic,
    RedisLock(LeaseLocks),
    Batch(ChargeBatcher),
    #[cfg(feature = "naive")]
    Naive,
}

/// One charge, validated.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    pub user_id: i64,
    pub amount: ChargeAmount,
    pub on: ChargeDay,
    pub limits: ChargeLimits,
}

impl PointsStrategy {
    pub fn kind(&self) -> PointsStrategyKind {
        match self {
            Self::Optimistic { .. } => PointsStrategyKind::Optimistic,
            Self::Pessimistic { .. } => PointsStrategyKind::Pessimistic,
            Self::Atomic => PointsStrategyKind::Atomic,
            Self::RedisLock(_) => PointsStrategyKind::RedisLock,
            Self::Batch(_) => PointsStrategyKind::Batch,
            #[cfg(feature = "naive")]
            Self::Naive => PointsStrategyKind::Naive,
        }
    }

    /// Whether operations run without any locks (the test-only `naive`
    /// strategy): payments then read their order without locking it too.
    pub fn without_locks(&self) -> bool {
        #[cfg(feature = "naive")]
        if matches!(self, Self::Naive) {
            return true;
        }
        false
    }

    /// Charges the wallet; with a claim, the response is stored in the same
    /// transaction. Returns the new balance.
    #[tracing::instrument(skip_all, fields(user_id = charge.user_id, strategy = ?self.kind()))]
    pub async fn charge(&self, db: &PgPool, charge: Charge, claim: Option<&Claim>) -> Result<i64, AppError> {
        match self {
            Self::Optimistic { max_retries } => optimistic::charge(db, charge, claim, *max_retries).await,
            Self::Pessimistic { lock_timeout } => pessimistic::charge(db, charge, claim, *lock_timeout).await,
            Self::Atomic => atomic::charge(db, charge, claim).await,
            Self::RedisLock(locks) => redis_lock::charge(db, locks, charge, claim).await,
            Self::Batch(batcher) => batcher.charge(charge, claim).await,
            #[cfg(feature = "naive")]
            Self::Naive => naive::charge(db, charge, claim).await,
        }
    }
}

/// A payment's debit of one wallet.
#[derive(Debug, Clone, Copy)]
pub struct Spend {
    pub user_id: i64,
    pub amount: i64,
    pub order_id: i64,
}

/// What a payment's debit holds across its transaction: under `redis-lock`,
/// the wallet's lease.
pub struct WalletHold {
    lease: Option<Lease>,
}

impl PointsStrategy {
    /// Before a payment's transaction: what the debit must hold across it.
    /// The debit itself is [`PointsStrategy::debit`], in the transaction, and
    /// the hold ends with [`PointsStrategy::release_wallet`] after it.
    pub async fn hold_wallet(&self, user_id: i64) -> Result<WalletHold, AppError> {
        let lease = match self {
            Self::RedisLock(locks) => Some(
                locks.acquire(&redis_lock::resource(user_id), None).await.map_err(|error| lease_error(error, None))?,
            ),
            _ => None,
        };
        Ok(WalletHold { lease })
    }

    /// In the payment's transaction, after the order is locked (every
    /// transaction takes the order before the wallet): debits the wallet and
    /// writes the `USE` ledger row. Too little balance is
    /// `INSUFFICIENT_POINTS`. Returns the new balance.
    #[tracing::instrument(skip_all, fields(user_id = spend.user_id, order_id = spend.order_id, strategy = ?self.kind()))]
    pub async fn debit(&self, conn: &mut PgConnection, spend: Spend, hold: &WalletHold) -> Result<i64, AppError> {
        match self {
            Self::Optimistic { max_retries } => optimistic::debit(conn, spend, *max_retries).await,
            Self::Pessimistic { lock_timeout } => {
                set_lock_timeout(conn, *lock_timeout).await?;
                let wallet = wallets::read_for_update(conn, spend.user_id)
                    .await
                    .map_err(lost_race)?
                    .ok_or_else(wallet_missing)?;
                write_debit(conn, spend, wallet.balance, None)
                    .await?
                    .ok_or_else(|| AppError::internal(anyhow::anyhow!("a locked wallet changed")))
            }
            Self::Atomic | Self::Batch(_) => {
                wallets::debit_if_covered(conn, spend.user_id, spend.amount, spend.order_id)
                    .await?
                    .ok_or(AppError::InsufficientPoints)
            }
            Self::RedisLock(locks) => {
                let lease =
                    hold.lease.as_ref().ok_or_else(|| AppError::internal(anyhow::anyhow!("no wallet lease")))?;
                redis_lock::debit(conn, locks, spend, lease.fence()).await
            }
            #[cfg(feature = "naive")]
            Self::Naive => naive::debit(conn, spend).await,
        }
    }

    /// After the payment's transaction committed or rolled back.
    pub async fn release_wallet(&self, hold: WalletHold) {
        if let Some(lease) = hold.lease {
            lease.release().await;
        }
    }
}

/// Writes the debit of a wallet read at `balance` (with `expected_version`
/// for the optimistic strategy) and its ledger row. `None`: the wallet
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
/// then the balance, the counters, the ledger row and the stored answer are
/// written.
/// `None`: the wallet changed since it was read. Returns the new balance.
async fn write_charge(
    conn: &mut PgConnection,
    charge: Charge,
    wallet: &Wallet,
    expected_version: Option<i64>,
    claim: Option<&Claim>,
) -> Result<Option<i64>, AppError> {
    let counters = wallet.counters().after_charge(charge.on, charge.limits)?;
    let balance = wallet.balance + charge.amount.won();
    if !wallets::write(conn, charge.user_id, balance, counters, expected_version).await? {
        return Ok(None);
    }
    ledger::append(conn, charge.user_id, LedgerKind::Charge, charge.amount.won(), balance, None).await?;
    save_response(conn, charge, balance, claim).await?;
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
