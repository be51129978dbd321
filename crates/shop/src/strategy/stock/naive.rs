//! Naive (tests only): read each line's stock without a lock, then write
//! `stock = read - quantity` unconditionally. Two orders that read the same
//! stock both take from it and one unit is sold twice — `stock >= 0` does
//! not notice, as both write the same non-negative number. The order's
//! coupon is reserved whatever its state, so two orders can hold one.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{StockHold, StockStrategy};
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::storage::products;

pub struct Naive;

#[async_trait]
impl StockStrategy for Naive {
    fn kind(&self) -> StockStrategyKind {
        StockStrategyKind::Naive
    }

    async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, _: &StockHold) -> Result<(), AppError> {
        let rows = products::stock_of(conn, &lines.product_ids()).await?;
        fail::fail_point!("stock::take::read");
        for ((product_id, quantity), row) in lines.iter().zip(&rows) {
            if row.stock < quantity as i64 {
                return Err(AppError::OutOfStock);
            }
            sqlx::query!("UPDATE products SET stock = $2 WHERE id = $1", product_id, row.stock - quantity as i64)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    async fn reserve_coupon(
        &self,
        conn: &mut PgConnection,
        coupon_id: i64,
        _: i64,
        order_id: i64,
    ) -> Result<bool, AppError> {
        sqlx::query!("UPDATE coupons SET status = 'RESERVED', order_id = $2 WHERE id = $1", coupon_id, order_id)
            .execute(conn)
            .await?;
        Ok(true)
    }
}
