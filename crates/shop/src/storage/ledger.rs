//! The append-only point ledger: balance = sum of a user's rows.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::points::LedgerKind;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerRow {
    pub id: i64,
    pub kind: String,
    pub amount: i64,
    pub balance_after: i64,
    pub order_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

pub async fn append(
    conn: &mut PgConnection,
    user_id: i64,
    kind: LedgerKind,
    amount: i64,
    balance_after: i64,
    order_id: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO point_ledger (user_id, kind, amount, balance_after, order_id) VALUES ($1, $2, $3, $4, $5)")
        .bind(user_id)
        .bind(kind.as_str())
        .bind(amount)
        .bind(balance_after)
        .bind(order_id)
        .execute(conn)
        .await
        .map(drop)
}

/// Newest first, strictly older than `before_id` when given.
pub async fn page(
    conn: &mut PgConnection,
    user_id: i64,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, amount, balance_after, order_id, created_at FROM point_ledger
         WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(user_id)
    .bind(before_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}
