//! Atomic: one conditional `UPDATE … WHERE stock >= quantity` per line, in
//! ascending id order; the first that finds too little fails the order and
//! the transaction rolls back what the earlier ones took. Row locks last
//! until the order commits. Never answers `CONCURRENCY_CONFLICT`.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{StockHold, StockStrategy};
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::storage::products;

pub struct Atomic;

#[async_trait]
impl StockStrategy for Atomic {
    fn kind(&self) -> StockStrategyKind {
        StockStrategyKind::Atomic
    }

    async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, _: &StockHold) -> Result<(), AppError> {
        take_each(conn, lines).await
    }
}

/// The take as conditional statements, which the gate and `batch` share.
pub(super) async fn take_each(conn: &mut PgConnection, lines: &OrderLines) -> Result<(), AppError> {
    // No read to race: the conditional statements are the whole take.
    fail::fail_point!("stock::take::read");
    for (product_id, quantity) in lines.iter() {
        if !products::take_stock(conn, product_id, quantity, None).await? {
            return Err(AppError::OutOfStock);
        }
    }
    Ok(())
}
