//! Coupon campaigns and the coupons issued from them.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::coupon::{CouponKind, CouponTerms, CouponType};

#[derive(Debug, Clone, sqlx::FromRow)]
struct CouponTypeRow {
    id: i64,
    code: String,
    kind: String,
    value: i64,
    min_order_amount: i64,
    total_quantity: i64,
    valid_days: i32,
    issue_starts_at: Option<DateTime<Utc>>,
    issue_ends_at: Option<DateTime<Utc>>,
}

impl From<CouponTypeRow> for CouponType {
    fn from(row: CouponTypeRow) -> Self {
        Self {
            id: row.id,
            code: row.code,
            kind: CouponKind::from_stored(&row.kind),
            value: row.value,
            min_order_amount: row.min_order_amount,
            total_quantity: row.total_quantity,
            valid_days: row.valid_days,
            issue_starts_at: row.issue_starts_at,
            issue_ends_at: row.issue_ends_at,
        }
    }
}

macro_rules! type_columns {
    () => {
        "id, code, kind, value, min_order_amount, total_quantity, valid_days, issue_starts_at, issue_ends_at"
    };
}

pub async fn insert_type(conn: &mut PgConnection, terms: &CouponTerms) -> Result<CouponType, sqlx::Error> {
    let row: CouponTypeRow = sqlx::query_as(concat!(
        "INSERT INTO coupon_types (code, kind, value, min_order_amount, total_quantity, valid_days,
                                   issue_starts_at, issue_ends_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        type_columns!()
    ))
    .bind(terms.code.as_str())
    .bind(terms.kind.as_str())
    .bind(terms.value)
    .bind(terms.min_order_amount)
    .bind(terms.total_quantity)
    .bind(terms.valid_days)
    .bind(terms.issue_starts_at)
    .bind(terms.issue_ends_at)
    .fetch_one(conn)
    .await?;
    Ok(row.into())
}

pub async fn find_type_by_code(conn: &mut PgConnection, code: &str) -> Result<Option<CouponType>, sqlx::Error> {
    let row: Option<CouponTypeRow> =
        sqlx::query_as(concat!("SELECT ", type_columns!(), " FROM coupon_types WHERE code = $1"))
            .bind(code)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(Into::into))
}

/// A campaign with how many coupons it has issued so far.
pub struct TypeWithCount {
    pub coupon_type: CouponType,
    pub issued: i64,
}

pub async fn types_with_counts(conn: &mut PgConnection) -> Result<Vec<TypeWithCount>, sqlx::Error> {
    let rows: Vec<CouponTypeRowWithCount> =
        sqlx::query_as(concat!("SELECT issued_quantity, ", type_columns!(), " FROM coupon_types ORDER BY id"))
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|row| TypeWithCount { coupon_type: row.row.into(), issued: row.issued_quantity }).collect())
}

pub async fn issued_count(conn: &mut PgConnection, type_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT issued_quantity FROM coupon_types WHERE id = $1").bind(type_id).fetch_one(conn).await
}

#[derive(sqlx::FromRow)]
struct CouponTypeRowWithCount {
    issued_quantity: i64,
    #[sqlx(flatten)]
    row: CouponTypeRow,
}

/// The monotonic facts about one user and one campaign: once sold out or
/// held, always so. A lock-free read of them gives a final answer.
pub struct IssueFacts {
    pub sold_out: bool,
    pub held: bool,
}

pub async fn issue_facts(conn: &mut PgConnection, type_id: i64, user_id: i64) -> Result<IssueFacts, sqlx::Error> {
    let (sold_out, held): (bool, bool) = sqlx::query_as(
        "SELECT issued_quantity >= total_quantity,
                EXISTS (SELECT 1 FROM coupons WHERE coupon_type_id = $1 AND user_id = $2)
         FROM coupon_types WHERE id = $1",
    )
    .bind(type_id)
    .bind(user_id)
    .fetch_one(conn)
    .await?;
    Ok(IssueFacts { sold_out, held })
}

/// Counts one more issued coupon. Over the total it violates
/// `coupon_types_issued_check`: the database's own refusal to over-issue.
pub async fn count_issued(conn: &mut PgConnection, type_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE coupon_types SET issued_quantity = issued_quantity + 1 WHERE id = $1")
        .bind(type_id)
        .execute(conn)
        .await
        .map(drop)
}

/// Counts one more issued coupon if any is left; `false` when sold out.
pub async fn count_issued_if_left(conn: &mut PgConnection, type_id: i64) -> Result<bool, sqlx::Error> {
    let counted = sqlx::query(
        "UPDATE coupon_types SET issued_quantity = issued_quantity + 1
         WHERE id = $1 AND issued_quantity < total_quantity",
    )
    .bind(type_id)
    .execute(conn)
    .await?;
    Ok(counted.rows_affected() == 1)
}

/// Reads the issued count and total, locking the campaign row.
pub async fn lock_type(conn: &mut PgConnection, type_id: i64) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT issued_quantity, total_quantity FROM coupon_types WHERE id = $1 FOR UPDATE")
        .bind(type_id)
        .fetch_one(conn)
        .await
}

/// Stamps the campaign row with a lease holder's fencing token if it is
/// newer than the last one (see `wallets::claim_fence`); returns the issued
/// count and total, or `None` for a stale token.
pub async fn claim_fence(conn: &mut PgConnection, type_id: i64, fence: i64) -> Result<Option<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE coupon_types SET fence = $2 WHERE id = $1 AND fence < $2
         RETURNING issued_quantity, total_quantity",
    )
    .bind(type_id)
    .bind(fence)
    .fetch_optional(conn)
    .await
}

pub async fn fence(conn: &mut PgConnection, type_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT fence FROM coupon_types WHERE id = $1").bind(type_id).fetch_one(conn).await
}

pub async fn holds(conn: &mut PgConnection, type_id: i64, user_id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM coupons WHERE coupon_type_id = $1 AND user_id = $2)")
        .bind(type_id)
        .bind(user_id)
        .fetch_one(conn)
        .await
}

/// The gate grant the user's coupon of this campaign was written under, if
/// they hold one (`Some(None)`: not written through the gate).
pub async fn gate_grant_of(
    conn: &mut PgConnection,
    type_id: i64,
    user_id: i64,
) -> Result<Option<Option<i64>>, sqlx::Error> {
    sqlx::query_scalar("SELECT gate_grant FROM coupons WHERE coupon_type_id = $1 AND user_id = $2")
        .bind(type_id)
        .bind(user_id)
        .fetch_optional(conn)
        .await
}

/// The holders of a campaign and how many are left, read in one snapshot.
pub async fn holders(conn: &mut PgConnection, type_id: i64) -> Result<(i64, Vec<i64>), sqlx::Error> {
    sqlx::query_as(
        "SELECT ct.total_quantity - ct.issued_quantity,
                COALESCE((SELECT array_agg(user_id) FROM coupons WHERE coupon_type_id = ct.id), '{}')
         FROM coupon_types ct WHERE ct.id = $1",
    )
    .bind(type_id)
    .fetch_one(conn)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CouponRow {
    pub id: i64,
    pub coupon_type_id: i64,
    pub user_id: i64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: String,
}

/// Issues a coupon valid for the campaign's days. A second coupon of the
/// type for the user violates `coupons_user_type_key`.
pub async fn insert(
    conn: &mut PgConnection,
    coupon_type: &CouponType,
    user_id: i64,
    gate_grant: Option<i64>,
) -> Result<CouponRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO coupons (coupon_type_id, user_id, expires_at, gate_grant)
         VALUES ($1, $2, now() + make_interval(days => $3), $4)
         RETURNING id, coupon_type_id, user_id, issued_at, expires_at, status",
    )
    .bind(coupon_type.id)
    .bind(user_id)
    .bind(coupon_type.valid_days)
    .bind(gate_grant)
    .fetch_one(conn)
    .await
}

/// A coupon with its campaign, as a holder's list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HeldCoupon {
    #[sqlx(flatten)]
    pub coupon: CouponRow,
    pub code: String,
    pub kind: String,
    pub value: i64,
    pub min_order_amount: i64,
}

/// Every coupon the user holds, newest first.
pub async fn held_by(conn: &mut PgConnection, user_id: i64) -> Result<Vec<HeldCoupon>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.coupon_type_id, c.user_id, c.issued_at, c.expires_at, c.status,
                t.code, t.kind, t.value, t.min_order_amount
         FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id
         WHERE c.user_id = $1 ORDER BY c.id DESC",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await
}

/// A coupon with the terms an order needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CouponForOrder {
    pub id: i64,
    pub user_id: i64,
    pub status: String,
    pub expires_at: DateTime<Utc>,
    pub kind: String,
    pub value: i64,
    pub min_order_amount: i64,
}

pub async fn for_order(conn: &mut PgConnection, coupon_id: i64) -> Result<Option<CouponForOrder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.user_id, c.status, c.expires_at, t.kind, t.value, t.min_order_amount
         FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id WHERE c.id = $1",
    )
    .bind(coupon_id)
    .fetch_optional(conn)
    .await
}

/// The coupons of `ids` with their terms, locked in ascending id order
/// (after the products: the lock order of order placement).
pub async fn lock_for_orders(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<CouponForOrder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.user_id, c.status, c.expires_at, t.kind, t.value, t.min_order_amount
         FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id
         WHERE c.id = ANY($1) ORDER BY c.id FOR UPDATE OF c",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Reserves each coupon `ids[i]` for order `order_ids[i]` if still
/// available and unexpired; returns how many were reserved.
pub async fn reserve_many(conn: &mut PgConnection, ids: &[i64], order_ids: &[i64]) -> Result<u64, sqlx::Error> {
    let reserved = sqlx::query(
        "UPDATE coupons c SET status = 'RESERVED', order_id = t.order_id
         FROM unnest($1::bigint[], $2::bigint[]) AS t(id, order_id)
         WHERE c.id = t.id AND c.status = 'AVAILABLE' AND c.expires_at > now()",
    )
    .bind(ids)
    .bind(order_ids)
    .execute(conn)
    .await?;
    Ok(reserved.rows_affected())
}

/// Reserves the user's coupon for an order if it is still available and
/// unexpired; `false` if another order got it first.
pub async fn reserve(
    conn: &mut PgConnection,
    coupon_id: i64,
    user_id: i64,
    order_id: i64,
) -> Result<bool, sqlx::Error> {
    let reserved = sqlx::query(
        "UPDATE coupons SET status = 'RESERVED', order_id = $3
         WHERE id = $1 AND user_id = $2 AND status = 'AVAILABLE' AND expires_at > now()",
    )
    .bind(coupon_id)
    .bind(user_id)
    .bind(order_id)
    .execute(conn)
    .await?;
    Ok(reserved.rows_affected() == 1)
}

/// Makes the coupons held by these orders available again.
pub async fn release(conn: &mut PgConnection, order_ids: &[i64]) -> Result<(), sqlx::Error> {
    // Locked first in ascending id order, the order every transaction takes
    // coupons in (a multi-row UPDATE locks in whatever order it scans).
    sqlx::query(
        "WITH held AS MATERIALIZED (
             SELECT id FROM coupons WHERE order_id = ANY($1) AND status = 'RESERVED' ORDER BY id FOR UPDATE
         )
         UPDATE coupons SET status = 'AVAILABLE', order_id = NULL WHERE id IN (SELECT id FROM held)",
    )
    .bind(order_ids)
    .execute(conn)
    .await
    .map(drop)
}
