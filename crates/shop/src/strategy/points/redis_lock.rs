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
//! Cost: three Redis round trips per charge (acquire, release, a renewal if
//! it runs long) on top of the transaction, and polling waiters. Fails as
//! `CONCURRENCY_CONFLICT` when the lock wait runs out.

use sqlx::PgPool;

use super::{Charge, save_response, wallet_missing};
use crate::domain::points::LedgerKind;
use crate::http::error::AppError;
use crate::idempotency::Claim;
use crate::lock::{LeaseLocks, LockError};
use crate::storage::ledger;
use crate::storage::wallets::{self, FenceClaim};

pub async fn charge(
    db: &PgPool,
    locks: &LeaseLocks,
    charge: Charge,
    claim: Option<&Claim>,
) -> Result<i64, AppError> {
    let resource = format!("points:{}", charge.user_id);
    let lease = locks
        .acquire(&resource)
        .await
        .map_err(|error| match error {
            LockError::Timeout => {
                AppError::ConcurrencyConflict("timed out waiting for the wallet lock")
            }
            LockError::Redis(error) => AppError::from(error),
        })?;
    let fence = lease.fence();
    let outcome = charge_under_lease(db, locks, &resource, fence, charge, claim).await;
    // After commit (or rollback): the next holder must see this charge.
    if let Err(error) = lease.release().await {
        tracing::warn!(%error, "lock release failed; the lease will expire");
    }
    outcome
}

async fn charge_under_lease(
    db: &PgPool,
    locks: &LeaseLocks,
    resource: &str,
    fence: i64,
    charge: Charge,
    claim: Option<&Claim>,
) -> Result<i64, AppError> {
    // Tests hold a holder here until its lease has run out.
    fail::fail_point!("points::redis_lock::leased");
    let mut tx = db.begin().await?;
    let wallet = match wallets::claim_fence(&mut tx, charge.user_id, fence).await? {
        FenceClaim::Claimed(wallet) => wallet,
        FenceClaim::Missing => return Err(wallet_missing()),
        FenceClaim::Stale { newest } => {
            metrics::counter!("shop_fence_rejections_total", "resource" => "points").increment(1);
            // If Redis lost its counter, lift it above what the database has seen.
            locks.advance_fence(resource, newest).await?;
            return Err(AppError::ConcurrencyConflict(
                "the wallet lock was lost to another holder",
            ));
        }
    };
    let counters = wallet.counters().after_charge(charge.on, charge.limits)?;
    let balance = wallet.balance + charge.amount.won();
    wallets::write(&mut tx, charge.user_id, balance, counters, None).await?;
    ledger::append(
        &mut tx,
        charge.user_id,
        LedgerKind::Charge,
        charge.amount.won(),
        balance,
        None,
    )
    .await?;
    save_response(&mut tx, charge, balance, claim).await?;
    tx.commit().await?;
    Ok(balance)
}
