//! Optimistic: read without locking, write only if the row's `version` is
//! still the one read (`UPDATE … WHERE version = $read`); a lost race retries
//! from the read after a jittered backoff.
//!
//! Cost: nothing held while reading; under contention most attempts are
//! wasted and the losers pay backoff latency. Fails as `CONCURRENCY_CONFLICT`
//! once the retries are used up, which a hot wallet reaches easily.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::{Charge, Spend, wallet_missing, write_charge, write_debit};
use crate::backoff;
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::{Tx, wallets};

/// Longest wait between two attempts.
const RETRY_CAP: Duration = Duration::from_millis(50);

pub async fn charge(db: &PgPool, charge: Charge, claim: Option<&Claim>, max_retries: u32) -> Result<i64, AppError> {
    for attempt in 0..=max_retries {
        if attempt > 0 {
            metrics::counter!("shop_optimistic_retries_total", "operation" => "points.charge").increment(1);
            tokio::time::sleep(backoff::full_jitter(attempt, RETRY_CAP)).await;
        }
        // A plain read: each statement sees what committed before it, and
        // nothing is locked until the versioned write.
        let mut tx = Tx::begin(db).await?;
        let wallet = wallets::read(&mut tx, charge.user_id).await?.ok_or_else(wallet_missing)?;
        fail::fail_point!("points::charge::read");
        let Some(balance) = write_charge(&mut tx, charge, &wallet, Some(wallet.version), claim).await? else {
            continue;
        };
        tx.commit().await?;
        return Ok(balance);
    }
    Err(AppError::ConcurrencyConflict("the balance kept changing"))
}

/// See `PointsStrategy::debit`. In READ COMMITTED each statement sees what
/// committed before it, so a lost race re-reads and retries in the
/// transaction (which holds the order's lock meanwhile).
pub async fn debit(conn: &mut PgConnection, spend: Spend, max_retries: u32) -> Result<i64, AppError> {
    for attempt in 0..=max_retries {
        if attempt > 0 {
            metrics::counter!("shop_optimistic_retries_total", "operation" => "points.debit").increment(1);
            tokio::time::sleep(backoff::full_jitter(attempt, RETRY_CAP)).await;
        }
        let wallet = wallets::read(conn, spend.user_id).await?.ok_or_else(wallet_missing)?;
        if let Some(balance) = write_debit(conn, spend, wallet.balance, Some(wallet.version)).await? {
            return Ok(balance);
        }
    }
    Err(AppError::ConcurrencyConflict("the balance kept changing"))
}
