//! Adaptive: `atomic` while a product is quiet, `batch` while orders queue
//! on it (see [`crate::strategy::hot_rows`]). An order of quiet products is
//! placed at once on its request's task, in parallel with the others,
//! instead of waiting for the batch in flight; an order with a hot product
//! in it, or one an instance busy with many products receives, goes to the
//! batch (`orders::batch`).
//!
//! Both paths take each product's row lock for their statement, so an
//! order alone and a batch over one product queue on it as two `atomic`
//! orders would: the guarantees are those of `atomic` and `batch`, which
//! are the same.
//!
//! The gate is not one of its paths: on a product selling out, `batch`
//! answered 2.2–2.6 times as many orders as `redis-gate` did
//! (docs/benchmarks.md, one product of 100), as a batch refuses its orders
//! with one read of the row.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{StockHold, StockStrategy, Together, atomic};
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::strategy::hot_rows::HotRows;

pub struct Adaptive {
    hot: HotRows,
}

impl Default for Adaptive {
    fn default() -> Self {
        Self { hot: HotRows::new("products") }
    }
}

#[async_trait]
impl StockStrategy for Adaptive {
    fn kind(&self) -> StockStrategyKind {
        StockStrategyKind::Adaptive
    }

    async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, _: &StockHold) -> Result<(), AppError> {
        atomic::take_each(conn, lines).await
    }

    fn places_together(&self) -> Together<'_> {
        Together::WhenHot(&self.hot)
    }
}
