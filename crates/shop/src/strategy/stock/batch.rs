//! Batch: the orders an instance receives together are placed together, in
//! one transaction (`orders::batch` decides them). A hot product's row is
//! then locked and written once per batch instead of once per order, and a
//! batch costs a handful of round trips and one WAL flush whatever its
//! size: a product sells faster than its single row can be updated, and
//! never oversells.
//!
//! The batch's stock is a [`StockTally`]: its products read (without a
//! lock, or locked in ascending id order when decided again after a race),
//! counted down in memory as each order is decided in arrival order, and
//! written with one statement — when read without a lock, the statement
//! that inserts the orders, conditional on the stock still being there.
//! `products_stock_check` backs the count. Alone — an order whose batch failed, redone on its own — an order
//! takes its stock as `atomic` does.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{StockHold, StockStrategy, Together, atomic};
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::storage::orders::StockTake;
use crate::storage::products::{self, ProductRow};

pub struct Batch;

#[async_trait]
impl StockStrategy for Batch {
    fn kind(&self) -> StockStrategyKind {
        StockStrategyKind::Batch
    }

    async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, _: &StockHold) -> Result<(), AppError> {
        atomic::take_each(conn, lines).await
    }

    fn places_together(&self) -> Together<'_> {
        Together::Always
    }
}

/// The stock of a batch of orders, under lock.
pub struct StockTally {
    left: HashMap<i64, i64>,
    taken: BTreeMap<i64, i64>,
}

impl StockTally {
    /// Locks and reads the products (ascending id): the rows found, and
    /// their stock to count down.
    pub async fn lock(conn: &mut PgConnection, product_ids: &[i64]) -> Result<(Vec<ProductRow>, Self), AppError> {
        let found = products::lock_for_orders(conn, product_ids).await?;
        fail::fail_point!("stock::take::read");
        let left = found.iter().map(|product| (product.id, product.stock)).collect();
        Ok((found, Self { left, taken: BTreeMap::new() }))
    }

    /// Reads the products without a lock: the rows found, and their stock
    /// to count down; [`StockTally::into_take`] says what to take.
    pub async fn read(conn: &mut PgConnection, product_ids: &[i64]) -> Result<(Vec<ProductRow>, Self), AppError> {
        let found = products::by_ids(conn, product_ids).await?;
        fail::fail_point!("stock::take::read");
        let left = found.iter().map(|product| (product.id, product.stock)).collect();
        Ok((found, Self { left, taken: BTreeMap::new() }))
    }

    /// Whether what the orders before left covers every line (of products
    /// found).
    pub fn covers(&self, lines: &OrderLines) -> bool {
        lines.iter().all(|(id, quantity)| self.left.get(&id).is_some_and(|left| *left >= quantity as i64))
    }

    /// Counts the lines as taken; [`StockTally::covers`] said they fit.
    pub fn take(&mut self, lines: &OrderLines) {
        for (id, quantity) in lines.iter() {
            *self.left.get_mut(&id).expect("covered, so found") -= quantity as i64;
            *self.taken.entry(id).or_default() += quantity as i64;
        }
    }

    /// What was counted, for a statement that takes it from products read
    /// without a lock if each still has it (`storage::orders::insert_many`).
    pub fn into_take(self) -> StockTake {
        let (product_ids, quantities) = self.taken.into_iter().unzip();
        StockTake { product_ids, quantities }
    }

    /// Writes what was taken, one statement for every product.
    pub async fn write(self, conn: &mut PgConnection) -> Result<(), AppError> {
        if self.taken.is_empty() {
            return Ok(());
        }
        let (ids, quantities): (Vec<i64>, Vec<i64>) = self.taken.into_iter().unzip();
        if products::take_stock_many(conn, &ids, &quantities).await? != ids.len() as u64 {
            return Err(AppError::internal(anyhow::anyhow!("a locked product vanished")));
        }
        Ok(())
    }
}
