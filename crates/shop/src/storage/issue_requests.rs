//! Asynchronous coupon issue requests: written `PENDING` when accepted,
//! finished `ISSUED` or `REJECTED` (with a reason) by a consumer, at most
//! one pending per user and campaign (`coupon_issue_requests_pending_key`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// A request as its requester sees it.
pub struct RequestRow {
    pub id: Uuid,
    pub user_id: i64,
    pub code: String,
    pub status: String,
    pub coupon_id: Option<i64>,
    pub reason: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

/// A request to (re)queue, or as a consumer reads it from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRequest {
    pub id: Uuid,
    pub user_id: i64,
    pub type_id: i64,
    pub gate_grant: Option<i64>,
}

/// How a consumer finished a request.
pub struct Outcome {
    pub request: QueuedRequest,
    /// The coupon issued, or why none was.
    pub issued: Result<i64, &'static str>,
}

/// Writes an accepted request down. Under a gate it is queued already, and
/// its consumer waits for this row.
pub async fn insert_pending(conn: &mut PgConnection, id: Uuid, user_id: i64, type_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO coupon_issue_requests (id, user_id, coupon_type_id) VALUES ($1, $2, $3)",
        id,
        user_id,
        type_id,
    )
    .execute(conn)
    .await
    .map(drop)
}

pub async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<RequestRow>, sqlx::Error> {
    sqlx::query_as!(
        RequestRow,
        "SELECT r.id, r.user_id, t.code, r.status, r.coupon_id, r.reason, r.requested_at, r.processed_at
         FROM coupon_issue_requests r JOIN coupon_types t ON t.id = r.coupon_type_id WHERE r.id = $1",
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Of these requests, the ones written down, locked, with whether each is
/// still pending.
pub async fn lock_among(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<(Uuid, bool)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT id, status = 'PENDING' AS "pending!" FROM coupon_issue_requests
           WHERE id = ANY($1) ORDER BY id FOR UPDATE"#,
        ids,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.pending)).collect())
}

/// Records how each request ended, inserting any that was queued but never
/// written (its instance died in between); a request already finished
/// keeps its first outcome.
pub async fn finish_many(conn: &mut PgConnection, outcomes: &[Outcome]) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = outcomes.iter().map(|outcome| outcome.request.id).collect();
    let users: Vec<i64> = outcomes.iter().map(|outcome| outcome.request.user_id).collect();
    let types: Vec<i64> = outcomes.iter().map(|outcome| outcome.request.type_id).collect();
    let coupons: Vec<Option<i64>> = outcomes.iter().map(|outcome| outcome.issued.ok()).collect();
    let reasons: Vec<Option<String>> = outcomes.iter().map(|outcome| outcome.issued.err().map(str::to_owned)).collect();
    sqlx::query!(
        "INSERT INTO coupon_issue_requests (id, user_id, coupon_type_id, status, coupon_id, reason, processed_at)
         SELECT id, user_id, type_id, CASE WHEN coupon_id IS NULL THEN 'REJECTED' ELSE 'ISSUED' END,
                coupon_id, reason, now()
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[])
              AS finished(id, user_id, type_id, coupon_id, reason)
         ON CONFLICT (id) DO UPDATE
         SET status = excluded.status, coupon_id = excluded.coupon_id, reason = excluded.reason,
             processed_at = excluded.processed_at
         WHERE coupon_issue_requests.status = 'PENDING'",
        &ids,
        &users,
        &types,
        &coupons as _,
        &reasons as _,
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Requests pending since before `older_than`, oldest first: those the
/// queue may have lost.
pub async fn pending_since(
    conn: &mut PgConnection,
    older_than: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<QueuedRequest>, sqlx::Error> {
    sqlx::query_as!(
        QueuedRequest,
        r#"SELECT id, user_id, coupon_type_id AS type_id, NULL::bigint AS gate_grant FROM coupon_issue_requests
           WHERE status = 'PENDING' AND requested_at < $1 ORDER BY requested_at LIMIT $2"#,
        older_than,
        limit,
    )
    .fetch_all(conn)
    .await
}
