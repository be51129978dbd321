//! The append-only point ledger: balance = sum of a user's rows.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::points::LedgerKind;

#[derive(Debug, Clone)]
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
    sqlx::query!(
        "INSERT INTO point_ledger (user_id, kind, amount, balance_after, order_id) VALUES ($1, $2, $3, $4, $5)",
        user_id,
        kind.as_str(),
        amount,
        balance_after,
        order_id,
    )
    .execute(conn)
    .await
    .map(drop)
}

/// A `CHARGE` row of a batch.
pub struct NewCharge {
    pub user_id: i64,
    pub amount: i64,
    pub balance_after: i64,
}

/// Appends `CHARGE` rows in the order given, so their ids follow it.
pub async fn append_charges(conn: &mut PgConnection, rows: &[NewCharge]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO point_ledger (user_id, kind, amount, balance_after)
         SELECT user_id, 'CHARGE', amount, balance_after
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS t(user_id, amount, balance_after, n)
         ORDER BY n",
        &rows.iter().map(|row| row.user_id).collect::<Vec<_>>(),
        &rows.iter().map(|row| row.amount).collect::<Vec<_>>(),
        &rows.iter().map(|row| row.balance_after).collect::<Vec<_>>(),
    )
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
    sqlx::query_as!(
        LedgerRow,
        "SELECT id, kind, amount, balance_after, order_id, created_at FROM point_ledger
         WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
        user_id,
        before_id,
        limit,
    )
    .fetch_all(conn)
    .await
}
