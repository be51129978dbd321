//! Optimistic: read a line's stock and row version without locking, take it
//! only if the row is unchanged (`… AND version = $read`), and on a lost race
//! read again after a jittered backoff. In READ COMMITTED each statement
//! sees what committed before it, so the retry stays in the transaction.
//! Any change to the product — even another order's — loses the race, so on
//! a hot product most attempts are wasted, and the retries can run out
//! (`CONCURRENCY_CONFLICT`).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{StockHold, StockStrategy};
use crate::backoff;
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::storage::products;

const RETRY_CAP: Duration = Duration::from_millis(50);

pub struct Optimistic {
    pub max_retries: u32,
}

#[async_trait]
impl StockStrategy for Optimistic {
    fn kind(&self) -> StockStrategyKind {
        StockStrategyKind::Optimistic
    }

    async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, _: &StockHold) -> Result<(), AppError> {
        for (product_id, quantity) in lines.iter() {
            take_line(conn, product_id, quantity, self.max_retries).await?;
        }
        Ok(())
    }
}

async fn take_line(conn: &mut PgConnection, product_id: i64, quantity: i32, max_retries: u32) -> Result<(), AppError> {
    for attempt in 0..=max_retries {
        if attempt > 0 {
            metrics::counter!("shop_optimistic_retries_total", "operation" => "stock.take").increment(1);
            tokio::time::sleep(backoff::full_jitter(attempt, RETRY_CAP)).await;
        }
        let row = products::stock_of(conn, &[product_id]).await?.pop().ok_or(AppError::OutOfStock)?;
        if row.stock < quantity as i64 {
            return Err(AppError::OutOfStock);
        }
        fail::fail_point!("stock::take::read");
        if products::take_stock(conn, product_id, quantity, Some(row.version)).await? {
            return Ok(());
        }
    }
    Err(AppError::ConcurrencyConflict("the stock kept changing"))
}
