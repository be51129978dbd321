//! Optimistic: read without locking, write only if the row's `version` is
//! still the one read (`UPDATE … WHERE version = $read`); a lost race reads
//! again after a jittered backoff. In READ COMMITTED each statement sees
//! what committed before it, so the retry stays in the transaction.
//!
//! Cost: nothing held while reading; under contention most attempts are
//! wasted and the losers pay backoff latency. Fails as `CONCURRENCY_CONFLICT`
//! once the retries are used up, which a hot wallet reaches easily.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{Charge, PointsStrategy, Spend, WalletHold, save_response, wallet_missing, write_charge, write_debit};
use crate::backoff;
use crate::config::PointsStrategyKind;
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::Db;
use crate::storage::{Tx, wallets};

/// Longest wait between two attempts.
const RETRY_CAP: Duration = Duration::from_millis(50);

pub struct Optimistic {
    pub max_retries: u32,
}

/// Waits before attempt `tried` (from 1) after a lost race.
async fn back_off(operation: &'static str, tried: u32) {
    metrics::counter!("shop_optimistic_retries_total", "operation" => operation).increment(1);
    tokio::time::sleep(backoff::full_jitter(tried, RETRY_CAP)).await;
}

/// One attempt; `None`: the wallet changed since it was read.
async fn try_charge(conn: &mut PgConnection, charge: Charge) -> Result<Option<i64>, AppError> {
    // A plain read: nothing is locked until the versioned write.
    let wallet = wallets::read(conn, charge.user_id).await?.ok_or_else(wallet_missing)?;
    fail::fail_point!("points::charge::read");
    write_charge(conn, charge, &wallet, Some(wallet.version)).await
}

fn kept_changing() -> AppError {
    AppError::ConcurrencyConflict("the balance kept changing")
}

#[async_trait]
impl PointsStrategy for Optimistic {
    fn kind(&self) -> PointsStrategyKind {
        PointsStrategyKind::Optimistic
    }

    async fn charge(&self, conn: &mut PgConnection, charge: Charge, _: &WalletHold) -> Result<i64, AppError> {
        for tried in 0..=self.max_retries {
            if tried > 0 {
                back_off("points.charge", tried).await;
            }
            if let Some(balance) = try_charge(conn, charge).await? {
                return Ok(balance);
            }
        }
        Err(kept_changing())
    }

    /// Each attempt in a transaction of its own, so that a charge that lost
    /// the race gives its connection back while it backs off: on a hot
    /// wallet, holding it through the retries halved the charges made.
    async fn charge_alone(&self, db: &Db, charge: Charge, claim: Option<&Claim>) -> Result<i64, AppError> {
        for tried in 0..=self.max_retries {
            if tried > 0 {
                back_off("points.charge", tried).await;
            }
            let mut tx = Tx::begin(db).await?;
            let Some(balance) = try_charge(&mut tx, charge).await? else {
                continue;
            };
            save_response(&mut tx, charge, balance, claim).await?;
            tx.commit().await?;
            return Ok(balance);
        }
        Err(kept_changing())
    }

    /// The retries hold the order's lock meanwhile.
    async fn debit(&self, conn: &mut PgConnection, spend: Spend, _: &WalletHold) -> Result<i64, AppError> {
        for tried in 0..=self.max_retries {
            if tried > 0 {
                back_off("points.debit", tried).await;
            }
            let wallet = wallets::read(conn, spend.user_id).await?.ok_or_else(wallet_missing)?;
            if let Some(balance) = write_debit(conn, spend, wallet.balance, Some(wallet.version)).await? {
                return Ok(balance);
            }
        }
        Err(kept_changing())
    }
}
