//! Redis lease lock: a lock per user in Redis serializes a wallet's writes
//! across server instances before any database connection is taken, so
//! waiters hold no connection. The lease is taken before the transaction
//! begins and released after it commits.
//!
//! The lease can run out under a live holder, so the transaction's first
//! statement stamps the wallet with the lease's fencing token and only
//! succeeds if no newer holder has written (`wallets::claim_fence`); a stale
//! holder gets `CONCURRENCY_CONFLICT` and changes nothing.
//!
//! Cost: two Redis round trips per charge (acquire, release; renewals if it
//! runs long) on top of the transaction, and polling waiters. Fails as
//! `CONCURRENCY_CONFLICT` when the lock wait runs out.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{Charge, PointsStrategy, Spend, WalletHold, wallet_missing, write_charge, write_debit};
use crate::config::PointsStrategyKind;
use crate::error::AppError;
use crate::lock::LeaseLocks;
use crate::storage::wallets::{self, FenceClaim, Wallet};
use crate::strategy::{lease, stale_fence};

pub struct RedisLock {
    pub locks: LeaseLocks,
}

fn resource(user_id: i64) -> String {
    format!("points:{user_id}")
}

impl RedisLock {
    /// The wallet, stamped with the fencing token of the lease `hold` took.
    async fn fenced(&self, conn: &mut PgConnection, user_id: i64, hold: &WalletHold) -> Result<Wallet, AppError> {
        let lease = hold.leases.first().ok_or_else(|| AppError::internal(anyhow::anyhow!("no wallet lease")))?;
        match wallets::claim_fence(conn, user_id, lease.fence()).await? {
            FenceClaim::Claimed(wallet) => Ok(wallet),
            FenceClaim::Missing => Err(wallet_missing()),
            FenceClaim::Stale { newest } => Err(stale_fence(&self.locks, &resource(user_id), newest).await),
        }
    }
}

#[async_trait]
impl PointsStrategy for RedisLock {
    fn kind(&self) -> PointsStrategyKind {
        PointsStrategyKind::RedisLock
    }

    async fn hold(&self, user_id: i64) -> Result<WalletHold, AppError> {
        let held = WalletHold { leases: vec![lease(&self.locks, &resource(user_id), None).await?] };
        // Tests hold a holder here until its lease has run out.
        fail::fail_point!("points::redis_lock::leased");
        Ok(held)
    }

    async fn charge(&self, conn: &mut PgConnection, charge: Charge, hold: &WalletHold) -> Result<i64, AppError> {
        let wallet = self.fenced(conn, charge.user_id, hold).await?;
        fail::fail_point!("points::charge::read");
        write_charge(conn, charge, &wallet, None).await?.ok_or_else(fenced_changed)
    }

    async fn debit(&self, conn: &mut PgConnection, spend: Spend, hold: &WalletHold) -> Result<i64, AppError> {
        let wallet = self.fenced(conn, spend.user_id, hold).await?;
        write_debit(conn, spend, wallet.balance, None).await?.ok_or_else(fenced_changed)
    }
}

fn fenced_changed() -> AppError {
    AppError::internal(anyhow::anyhow!("a fenced wallet changed"))
}
