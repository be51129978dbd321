//! Successful payments: at most one per order (`payments_order_key`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

#[derive(Debug, Clone)]
pub struct PaymentRow {
    pub id: i64,
    pub order_id: i64,
    pub user_id: i64,
    pub status: String,
    pub paid_at: DateTime<Utc>,
}

/// (product id, quantity, revenue) of one order line.
pub type Sale = (i64, i64, i64);

/// A recorded payment, with its order's lines as sales (product, quantity,
/// revenue) for the top sellers.
pub struct RecordedPayment {
    pub payment: PaymentRow,
    pub sales: Vec<Sale>,
}

/// In one statement: the payment, its order set PAID, the order's coupon
/// USED. A second payment of the order is refused by `payments_order_key`.
pub async fn record(
    conn: &mut PgConnection,
    order_id: i64,
    user_id: i64,
    amount: i64,
) -> Result<RecordedPayment, sqlx::Error> {
    let row = sqlx::query!(
        r#"WITH payment AS (
             INSERT INTO payments (order_id, user_id, amount) VALUES ($1, $2, $3)
             RETURNING id, order_id, user_id, status, paid_at
         ), paid AS (
             UPDATE orders SET status = 'PAID', updated_at = now(), paid_at = now() WHERE id = $1
         ), used AS (
             UPDATE coupons SET status = 'USED' WHERE order_id = $1 AND status = 'RESERVED'
         )
         SELECT payment.*,
                ARRAY(SELECT product_id FROM order_items WHERE order_id = $1 ORDER BY product_id) AS "product_ids!",
                ARRAY(SELECT quantity::bigint FROM order_items WHERE order_id = $1 ORDER BY product_id) AS "quantities!",
                ARRAY(SELECT quantity * unit_price FROM order_items WHERE order_id = $1 ORDER BY product_id)
                    AS "revenues!"
         FROM payment"#,
        order_id,
        user_id,
        amount,
    )
    .fetch_one(conn)
    .await?;
    let payment = PaymentRow {
        id: row.id,
        order_id: row.order_id,
        user_id: row.user_id,
        status: row.status,
        paid_at: row.paid_at,
    };
    let sales = row.product_ids.into_iter().zip(row.quantities).zip(row.revenues).map(|((id, q), r)| (id, q, r));
    Ok(RecordedPayment { sales: sales.collect(), payment })
}

pub async fn find(conn: &mut PgConnection, id: i64) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as!(PaymentRow, "SELECT id, order_id, user_id, status, paid_at FROM payments WHERE id = $1", id)
        .fetch_optional(conn)
        .await
}

pub async fn mark_refunded(conn: &mut PgConnection, order_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE payments SET status = 'REFUNDED', refunded_at = now() WHERE order_id = $1", order_id)
        .execute(conn)
        .await
        .map(drop)
}
