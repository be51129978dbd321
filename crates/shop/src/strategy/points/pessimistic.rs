//! Pessimistic: `SELECT … FOR UPDATE` locks the wallet row for the rest of
//! the transaction, so concurrent writes of one wallet queue in PostgreSQL.
//!
//! Cost: a waiting charge holds a pooled connection while it waits, so a hot
//! wallet can tie up the pool. Fails as `CONCURRENCY_CONFLICT` only when the
//! wait exceeds `lock_timeout`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{Charge, PointsStrategy, Spend, WalletHold, wallet_missing, write_charge, write_debit};
use crate::config::PointsStrategyKind;
use crate::error::AppError;
use crate::storage::wallets::{self, Wallet};
use crate::strategy::{lost_race, set_lock_timeout};

pub struct Pessimistic {
    pub lock_timeout: Duration,
}

impl Pessimistic {
    async fn lock(&self, conn: &mut PgConnection, user_id: i64) -> Result<Wallet, AppError> {
        set_lock_timeout(conn, self.lock_timeout).await?;
        let waiting = Instant::now();
        let wallet = wallets::read_for_update(conn, user_id).await.map_err(lost_race)?;
        metrics::histogram!("shop_lock_wait_seconds", "lock" => "postgres").record(waiting.elapsed());
        wallet.ok_or_else(wallet_missing)
    }
}

#[async_trait]
impl PointsStrategy for Pessimistic {
    fn kind(&self) -> PointsStrategyKind {
        PointsStrategyKind::Pessimistic
    }

    async fn charge(&self, conn: &mut PgConnection, charge: Charge, _: &WalletHold) -> Result<i64, AppError> {
        let wallet = self.lock(conn, charge.user_id).await?;
        fail::fail_point!("points::charge::read");
        write_charge(conn, charge, &wallet, None).await?.ok_or_else(locked_changed)
    }

    async fn debit(&self, conn: &mut PgConnection, spend: Spend, _: &WalletHold) -> Result<i64, AppError> {
        let wallet = self.lock(conn, spend.user_id).await?;
        write_debit(conn, spend, wallet.balance, None).await?.ok_or_else(locked_changed)
    }
}

fn locked_changed() -> AppError {
    AppError::internal(anyhow::anyhow!("a locked wallet changed"))
}
