//! Adaptive: `atomic` while a wallet is quiet, `batch` while charges queue
//! on it (see [`crate::strategy::hot_rows`]). A wallet charged from one tab
//! is written at once on its request's task, in parallel with the others,
//! instead of waiting for the batch in flight; a wallet charged from many
//! tabs, or an instance busy with many wallets, is written in batches.
//!
//! Both paths lock the wallet's row for their statement, so a charge alone
//! and a batch over one wallet queue on it as two `atomic` charges would:
//! the guarantees are those of `atomic` and `batch`, which are the same.
//! Payments' debits are written as `atomic` writes them.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{Charge, PointsStrategy, Spend, WalletHold, atomic, batch};
use crate::config::PointsStrategyKind;
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::Db;
use crate::strategy::hot_rows::HotRows;

pub struct Adaptive {
    hot: HotRows,
    batch: batch::Batch,
}

impl Adaptive {
    pub fn start(db: Db) -> Self {
        Self { hot: HotRows::new("wallets"), batch: batch::Batch::start(db) }
    }
}

#[async_trait]
impl PointsStrategy for Adaptive {
    fn kind(&self) -> PointsStrategyKind {
        PointsStrategyKind::Adaptive
    }

    async fn charge(&self, conn: &mut PgConnection, charge: Charge, _: &WalletHold) -> Result<i64, AppError> {
        atomic::charge_once(conn, charge).await
    }

    async fn debit(&self, conn: &mut PgConnection, spend: Spend, _: &WalletHold) -> Result<i64, AppError> {
        atomic::debit_once(conn, spend).await
    }

    #[tracing::instrument(skip_all, fields(user_id = charge.user_id, strategy = ?self.kind()))]
    async fn charge_alone(&self, db: &Db, charge: Charge, claim: Option<&Claim>) -> Result<i64, AppError> {
        let passage = self.hot.enter([charge.user_id]);
        if passage.together() {
            self.batch.charge_alone(db, charge, claim).await
        } else {
            atomic::Atomic.charge_alone(db, charge, claim).await
        }
    }
}
