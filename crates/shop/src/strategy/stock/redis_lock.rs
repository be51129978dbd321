//! Redis lease locks, one per product, taken in ascending id order before the
//! transaction and released after it commits. Inside, each product row is
//! stamped with its lease's fencing token first, so a holder whose lease ran
//! out cannot take stock after a newer holder. A lock wait past the deadline
//! is `CONCURRENCY_CONFLICT`.

use sqlx::PgConnection;

use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::lock::{Lease, LeaseLocks};
use crate::storage::products;
use crate::strategy::{lease_error, stale_fence};

fn resource(product_id: i64) -> String {
    format!("product:{product_id}")
}

/// Takes the lease of every line's product, in ascending id order.
pub async fn hold(locks: &LeaseLocks, lines: &OrderLines) -> Result<Vec<Lease>, AppError> {
    let mut leases = Vec::new();
    for (product_id, _) in lines.iter() {
        match locks.acquire(&resource(product_id), None).await {
            Ok(lease) => leases.push(lease),
            Err(error) => {
                for lease in leases.into_iter().rev() {
                    lease.release().await;
                }
                return Err(lease_error(error, None));
            }
        }
    }
    Ok(leases)
}

pub async fn take(
    conn: &mut PgConnection,
    locks: &LeaseLocks,
    lines: &OrderLines,
    leases: &[Lease],
) -> Result<(), AppError> {
    // The leases are held: whoever else wants these products waits for them.
    fail::fail_point!("stock::take::read");
    for ((product_id, quantity), lease) in lines.iter().zip(leases) {
        let Some(stock) = products::claim_fence(conn, product_id, lease.fence()).await? else {
            let newest = products::fence(conn, product_id).await?;
            return Err(stale_fence(locks, &resource(product_id), newest).await);
        };
        if stock < quantity as i64 {
            return Err(AppError::OutOfStock);
        }
        products::take_stock(conn, product_id, quantity, None).await?;
    }
    Ok(())
}
