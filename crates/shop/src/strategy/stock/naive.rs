//! Naive (tests only): read each line's stock without a lock, then write
//! `stock = read - quantity` unconditionally. Two orders that read the same
//! stock both take from it and one unit is sold twice — `stock >= 0` does
//! not notice, as both write the same non-negative number.

use sqlx::PgConnection;

use crate::domain::order::OrderLines;
use crate::error::AppError;
use crate::storage::products;

pub async fn take(conn: &mut PgConnection, lines: &OrderLines) -> Result<(), AppError> {
    let rows = products::stock_of(conn, &lines.product_ids()).await?;
    fail::fail_point!("stock::take::read");
    for ((product_id, quantity), row) in lines.iter().zip(&rows) {
        if row.stock < quantity as i64 {
            return Err(AppError::OutOfStock);
        }
        products::set_stock(conn, product_id, row.stock - quantity as i64).await?;
    }
    Ok(())
}
