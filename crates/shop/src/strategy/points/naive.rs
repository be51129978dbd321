//! Naive (tests only): read the wallet without a lock, write the new balance
//! unconditionally. Two charges that read the same balance both write it
//! plus their own amount, and one is lost: the race the other strategies
//! exist to prevent. A payment reads its order unlocked too, so two
//! payments of one order both see it PENDING.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{Charge, PointsStrategy, Spend, WalletHold, wallet_missing, write_charge, write_debit};
use crate::config::PointsStrategyKind;
use crate::error::AppError;
use crate::storage::orders::{self, OrderRow};
use crate::storage::wallets;

pub struct Naive;

#[async_trait]
impl PointsStrategy for Naive {
    fn kind(&self) -> PointsStrategyKind {
        PointsStrategyKind::Naive
    }

    async fn charge(&self, conn: &mut PgConnection, charge: Charge, _: &WalletHold) -> Result<i64, AppError> {
        let wallet = wallets::read(conn, charge.user_id).await?.ok_or_else(wallet_missing)?;
        fail::fail_point!("points::charge::read");
        write_charge(conn, charge, &wallet, None).await?.ok_or_else(unapplied)
    }

    async fn debit(&self, conn: &mut PgConnection, spend: Spend, _: &WalletHold) -> Result<i64, AppError> {
        let wallet = wallets::read(conn, spend.user_id).await?.ok_or_else(wallet_missing)?;
        write_debit(conn, spend, wallet.balance, None).await?.ok_or_else(unapplied)
    }

    async fn lock_order(&self, conn: &mut PgConnection, order_id: i64) -> Result<Option<OrderRow>, AppError> {
        Ok(orders::find(conn, order_id).await?)
    }
}

fn unapplied() -> AppError {
    AppError::internal(anyhow::anyhow!("an unconditional write did not apply"))
}
