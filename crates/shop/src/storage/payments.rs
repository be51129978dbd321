//! Successful payments: at most one per order (`payments_order_key`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: i64,
    pub order_id: i64,
    pub user_id: i64,
    pub amount: i64,
    pub status: String,
    pub paid_at: DateTime<Utc>,
}

pub async fn insert(
    conn: &mut PgConnection,
    order_id: i64,
    user_id: i64,
    amount: i64,
) -> Result<PaymentRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO payments (order_id, user_id, amount) VALUES ($1, $2, $3)
         RETURNING id, order_id, user_id, amount, status, paid_at",
    )
    .bind(order_id)
    .bind(user_id)
    .bind(amount)
    .fetch_one(conn)
    .await
}

pub async fn find(conn: &mut PgConnection, id: i64) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, order_id, user_id, amount, status, paid_at FROM payments WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn mark_refunded(conn: &mut PgConnection, order_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments SET status = 'REFUNDED', refunded_at = now() WHERE order_id = $1")
        .bind(order_id)
        .execute(conn)
        .await
        .map(drop)
}
