//! Redis lease locks, one per product, taken in ascending id order before the
//! transaction and released after it commits. Inside, each product row is
//! stamped with its lease's fencing token first, so a holder whose lease ran
//! out cannot take stock after a newer holder. A lock wait past the deadline
//! is `CONCURRENCY_CONFLICT`.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{StockHold, StockStrategy};
use crate::config::StockStrategyKind;
use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::lock::LeaseLocks;
use crate::storage::Db;
use crate::storage::products;
use crate::strategy::{lease, release_all, stale_fence};

pub struct RedisLock {
    pub locks: LeaseLocks,
}

fn resource(product_id: i64) -> String {
    format!("product:{product_id}")
}

#[async_trait]
impl StockStrategy for RedisLock {
    fn kind(&self) -> StockStrategyKind {
        StockStrategyKind::RedisLock
    }

    /// Takes the lease of every line's product, in ascending id order.
    async fn hold(&self, _: &Db, lines: &OrderLines) -> Result<StockHold, AppError> {
        let mut leases = Vec::new();
        for (product_id, _) in lines.iter() {
            match lease(&self.locks, &resource(product_id), None).await {
                Ok(lease) => leases.push(lease),
                Err(error) => {
                    release_all(leases).await;
                    return Err(error);
                }
            }
        }
        Ok(StockHold { leases, gate: None })
    }

    async fn take(&self, conn: &mut PgConnection, lines: &OrderLines, hold: &StockHold) -> Result<(), AppError> {
        // The leases are held: whoever else wants these products waits for them.
        fail::fail_point!("stock::take::read");
        for ((product_id, quantity), lease) in lines.iter().zip(&hold.leases) {
            let Some(stock) = products::claim_fence(conn, product_id, lease.fence()).await? else {
                let newest = products::fence(conn, product_id).await?;
                return Err(stale_fence(&self.locks, &resource(product_id), newest).await);
            };
            if stock < quantity as i64 {
                return Err(AppError::OutOfStock);
            }
            products::take_stock(conn, product_id, quantity, None).await?;
        }
        Ok(())
    }
}
