//! Atomic: no read at all. One conditional `UPDATE … RETURNING`, chained to
//! the ledger insert in the same statement, applies the charge only if the
//! limits allow; PostgreSQL serializes concurrent statements on the row.
//!
//! Cost: one statement, in a transaction of its own so that a lost COMMIT
//! can be resolved (see `storage::Tx`); the row lock lasts from the
//! statement to the commit. The rule lives in SQL beside its Rust form in
//! `domain::points`. Never answers `CONCURRENCY_CONFLICT`: a concurrent
//! statement waits for the row and re-checks its condition on the new version.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{Charge, PointsStrategy, Spend, WalletHold, wallet_missing};
use crate::config::PointsStrategyKind;
use crate::error::AppError;
use crate::storage::wallets;

pub struct Atomic;

#[async_trait]
impl PointsStrategy for Atomic {
    fn kind(&self) -> PointsStrategyKind {
        PointsStrategyKind::Atomic
    }

    async fn charge(&self, conn: &mut PgConnection, charge: Charge, _: &WalletHold) -> Result<i64, AppError> {
        charge_once(conn, charge).await
    }

    async fn debit(&self, conn: &mut PgConnection, spend: Spend, _: &WalletHold) -> Result<i64, AppError> {
        debit_once(conn, spend).await
    }
}

/// The debit as one conditional statement, which `batch` shares.
pub(super) async fn debit_once(conn: &mut PgConnection, spend: Spend) -> Result<i64, AppError> {
    wallets::debit_if_covered(conn, spend.user_id, spend.amount, spend.order_id)
        .await?
        .ok_or(AppError::InsufficientPoints)
}

/// The charge as one conditional statement, which `batch` shares.
pub(super) async fn charge_once(conn: &mut PgConnection, charge: Charge) -> Result<i64, AppError> {
    // There is no read to race: the statement below is the whole charge.
    fail::fail_point!("points::charge::read");
    let charged =
        wallets::charge_within_limits(conn, charge.user_id, charge.amount.won(), charge.on, charge.limits).await?;
    if let Some(balance) = charged {
        return Ok(balance);
    }
    // Refused: read the wallet to say which limit (or that there is none).
    let wallet = wallets::read(conn, charge.user_id).await?.ok_or_else(wallet_missing)?;
    match wallet.counters().after_charge(charge.on, charge.limits) {
        Err(exceeded) => Err(exceeded.into()),
        // The counters moved on between the two statements (a new day began).
        Ok(_) => Err(AppError::ConcurrencyConflict("the charge day changed during the charge")),
    }
}
