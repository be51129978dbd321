//! Pessimistic: `SELECT … FOR UPDATE` locks the wallet row for the whole
//! transaction, so concurrent charges of one user queue in PostgreSQL.
//!
//! Cost: a waiting charge holds a pooled connection while it waits, so a hot
//! wallet can tie up the pool. Fails as `CONCURRENCY_CONFLICT` only when the
//! wait exceeds `lock_timeout`.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{Charge, wallet_missing, write_charge};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::{Tx, wallets};
use crate::strategy::{lost_race, set_lock_timeout};

pub async fn charge(
    db: &PgPool,
    charge: Charge,
    claim: Option<&Claim>,
    lock_timeout: Duration,
) -> Result<i64, AppError> {
    let mut tx = Tx::begin(db).await?;
    set_lock_timeout(&mut tx, lock_timeout).await?;
    let waiting = Instant::now();
    let wallet = wallets::read_for_update(&mut tx, charge.user_id).await.map_err(lost_race)?;
    metrics::histogram!("shop_lock_wait_seconds", "lock" => "postgres").record(waiting.elapsed());
    let wallet = wallet.ok_or_else(wallet_missing)?;
    fail::fail_point!("points::charge::read");
    let balance = write_charge(&mut tx, charge, &wallet, None, claim)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("a locked wallet changed")))?;
    tx.commit().await?;
    Ok(balance)
}
