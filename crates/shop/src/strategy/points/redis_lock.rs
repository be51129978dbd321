//! Redis lease lock: a lock per user in Redis serializes charges across
//! server instances before any database connection is taken, so waiters hold
//! no connection. The lock is taken before the transaction begins and
//! released after it commits.
//!
//! The lease can run out under a live holder, so the transaction's first
//! statement stamps the wallet with the lease's fencing token and only
//! succeeds if no newer holder has written (`wallets::claim_fence`); a stale
//! holder gets `CONCURRENCY_CONFLICT` and changes nothing.
//!
//! Cost: two Redis round trips per charge (acquire, release; renewals if it
//! runs long) on top of the transaction, and polling waiters. Fails as
//! `CONCURRENCY_CONFLICT` when the lock wait runs out.

use sqlx::{PgConnection, PgPool};

use super::{Charge, Spend, wallet_missing, write_charge, write_debit};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::lock::LeaseLocks;
use crate::storage::Tx;
use crate::storage::wallets::{self, FenceClaim};
use crate::strategy::{stale_fence, under_lease};

pub async fn charge(db: &PgPool, locks: &LeaseLocks, charge: Charge, claim: Option<&Claim>) -> Result<i64, AppError> {
    let resource = resource(charge.user_id);
    under_lease(locks, &resource, None, async |fence| {
        // Tests hold a holder here until its lease has run out.
        fail::fail_point!("points::redis_lock::leased");
        let mut tx = Tx::begin(db).await?;
        let wallet = match wallets::claim_fence(&mut tx, charge.user_id, fence).await? {
            FenceClaim::Claimed(wallet) => wallet,
            FenceClaim::Missing => return Err(wallet_missing()),
            FenceClaim::Stale { newest } => return Err(stale_fence(locks, &resource, newest).await),
        };
        fail::fail_point!("points::charge::read");
        let balance = write_charge(&mut tx, charge, &wallet, None, claim)
            .await?
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("a fenced wallet changed")))?;
        tx.commit().await?;
        Ok(balance)
    })
    .await
}

pub fn resource(user_id: i64) -> String {
    format!("points:{user_id}")
}

/// See `PointsStrategy::debit`: under the wallet's lease (taken by
/// `hold_wallet`), with its fencing token stamped on the wallet first.
pub async fn debit(conn: &mut PgConnection, locks: &LeaseLocks, spend: Spend, fence: i64) -> Result<i64, AppError> {
    let wallet = match wallets::claim_fence(conn, spend.user_id, fence).await? {
        FenceClaim::Claimed(wallet) => wallet,
        FenceClaim::Missing => return Err(wallet_missing()),
        FenceClaim::Stale { newest } => {
            return Err(stale_fence(locks, &resource(spend.user_id), newest).await);
        }
    };
    write_debit(conn, spend, wallet.balance, None)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("a fenced wallet changed")))
}
