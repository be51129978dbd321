//! Pessimistic: `SELECT … ORDER BY id FOR UPDATE` locks every product of
//! the order in ascending id order, checks the stock, then takes it. Orders
//! over one product queue in PostgreSQL, each waiter holding a connection;
//! a wait past `lock_timeout` is `CONCURRENCY_CONFLICT`.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{StockHold, StockStrategy};
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::storage::products;
use crate::strategy::{lost_race, set_lock_timeout};

pub struct Pessimistic {
    pub lock_timeout: Duration,
}

#[async_trait]
impl StockStrategy for Pessimistic {
    fn kind(&self) -> StockStrategyKind {
        StockStrategyKind::Pessimistic
    }

    async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, _: &StockHold) -> Result<(), AppError> {
        take(conn, lines, self.lock_timeout).await
    }
}

async fn take(conn: &mut PgConnection, lines: &OrderLines, lock_timeout: Duration) -> Result<(), AppError> {
    set_lock_timeout(conn, lock_timeout).await?;
    let rows = products::lock_stock(conn, &lines.product_ids()).await.map_err(lost_race)?;
    fail::fail_point!("stock::take::read");
    for ((_, quantity), row) in lines.iter().zip(&rows) {
        if row.stock < quantity as i64 {
            return Err(AppError::OutOfStock);
        }
    }
    for (product_id, quantity) in lines.iter() {
        products::take_stock(conn, product_id, quantity, None).await?;
    }
    Ok(())
}
