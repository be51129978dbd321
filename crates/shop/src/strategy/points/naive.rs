//! Naive (tests only): read the wallet without a lock, write the new balance
//! unconditionally. Two charges that read the same balance both write it
//! plus their own amount, and one is lost: the race the other strategies
//! exist to prevent.

use sqlx::{Acquire, PgConnection, PgPool};

use super::{Charge, Spend, wallet_missing, write_charge, write_debit};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::wallets;

pub async fn charge(db: &PgPool, charge: Charge, claim: Option<&Claim>) -> Result<i64, AppError> {
    let mut conn = db.acquire().await?;
    let wallet = wallets::read(&mut conn, charge.user_id).await?.ok_or_else(wallet_missing)?;
    fail::fail_point!("points::charge::read");
    let mut tx = conn.begin().await?;
    let balance = write_charge(&mut tx, charge, &wallet, None, claim)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("an unconditional write did not apply")))?;
    tx.commit().await?;
    Ok(balance)
}

pub async fn debit(conn: &mut PgConnection, spend: Spend) -> Result<i64, AppError> {
    let wallet = wallets::read(conn, spend.user_id).await?.ok_or_else(wallet_missing)?;
    write_debit(conn, spend, wallet.balance, None)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("an unconditional write did not apply")))
}
