//! Coupon campaigns and the coupons issued from them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::coupon::{CouponCode, CouponKind, CouponStatus, CouponTerms, CouponType, IssuedCoupon};

/// A campaign row; `issued_quantity` rides along for [`types_with_counts`].
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
    issued_quantity: i64,
}

impl From<CouponTypeRow> for CouponType {
    fn from(row: CouponTypeRow) -> Self {
        let terms = CouponTerms {
            code: CouponCode::from_stored(row.code),
            kind: CouponKind::from_stored(&row.kind),
            value: row.value,
            min_order_amount: row.min_order_amount,
            total_quantity: row.total_quantity,
            valid_days: row.valid_days,
            issue_starts_at: row.issue_starts_at,
            issue_ends_at: row.issue_ends_at,
        };
        Self { id: row.id, terms }
    }
}

pub async fn insert_type(conn: &mut PgConnection, terms: &CouponTerms) -> Result<CouponType, sqlx::Error> {
    let row = sqlx::query_as!(
        CouponTypeRow,
        "INSERT INTO coupon_types (code, kind, value, min_order_amount, total_quantity, valid_days,
                                   issue_starts_at, issue_ends_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, code, kind, value, min_order_amount, total_quantity, valid_days, issue_starts_at,
                   issue_ends_at, issued_quantity",
        terms.code.as_str(),
        terms.kind.as_str(),
        terms.value,
        terms.min_order_amount,
        terms.total_quantity,
        terms.valid_days,
        terms.issue_starts_at,
        terms.issue_ends_at,
    )
    .fetch_one(conn)
    .await?;
    Ok(row.into())
}

pub async fn find_type_by_code(conn: &mut PgConnection, code: &str) -> Result<Option<CouponType>, sqlx::Error> {
    let row = sqlx::query_as!(
        CouponTypeRow,
        "SELECT id, code, kind, value, min_order_amount, total_quantity, valid_days, issue_starts_at, issue_ends_at,
                issued_quantity
         FROM coupon_types WHERE code = $1",
        code,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Into::into))
}

/// Locks the campaign's row and reads it with how many coupons it has
/// issued so far.
pub async fn lock_type_with_count(conn: &mut PgConnection, id: i64) -> Result<Option<(CouponType, i64)>, sqlx::Error> {
    let row = sqlx::query_as!(
        CouponTypeRow,
        "SELECT id, code, kind, value, min_order_amount, total_quantity, valid_days, issue_starts_at, issue_ends_at,
                issued_quantity
         FROM coupon_types WHERE id = $1 FOR UPDATE",
        id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| {
        let issued = row.issued_quantity;
        (row.into(), issued)
    }))
}

/// A campaign with how many coupons it has issued so far.
pub struct TypeWithCount {
    pub coupon_type: CouponType,
    pub issued: i64,
}

pub async fn types_with_counts(conn: &mut PgConnection) -> Result<Vec<TypeWithCount>, sqlx::Error> {
    let rows = sqlx::query_as!(
        CouponTypeRow,
        "SELECT id, code, kind, value, min_order_amount, total_quantity, valid_days, issue_starts_at, issue_ends_at,
                issued_quantity
         FROM coupon_types ORDER BY id",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|row| TypeWithCount { issued: row.issued_quantity, coupon_type: row.into() }).collect())
}

pub async fn issued_count(conn: &mut PgConnection, type_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!("SELECT issued_quantity FROM coupon_types WHERE id = $1", type_id).fetch_one(conn).await
}

/// The monotonic facts about one user and one campaign: once sold out or
/// held, always so. A lock-free read of them gives a final answer.
pub struct IssueFacts {
    pub sold_out: bool,
    pub held: bool,
}

pub async fn issue_facts(conn: &mut PgConnection, type_id: i64, user_id: i64) -> Result<IssueFacts, sqlx::Error> {
    sqlx::query_as!(
        IssueFacts,
        r#"SELECT issued_quantity >= total_quantity AS "sold_out!",
                  EXISTS (SELECT 1 FROM coupons WHERE coupon_type_id = $1 AND user_id = $2) AS "held!"
           FROM coupon_types WHERE id = $1"#,
        type_id,
        user_id,
    )
    .fetch_one(conn)
    .await
}

/// Counts one more issued coupon. Over the total it violates
/// `coupon_types_issued_check`: the database's own refusal to over-issue.
pub async fn count_issued(conn: &mut PgConnection, type_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE coupon_types SET issued_quantity = issued_quantity + 1 WHERE id = $1", type_id)
        .execute(conn)
        .await
        .map(drop)
}

/// Counts one more issued coupon if any is left; `false` when sold out.
pub async fn count_issued_if_left(conn: &mut PgConnection, type_id: i64) -> Result<bool, sqlx::Error> {
    let counted = sqlx::query!(
        "UPDATE coupon_types SET issued_quantity = issued_quantity + 1
         WHERE id = $1 AND issued_quantity < total_quantity",
        type_id,
    )
    .execute(conn)
    .await?;
    Ok(counted.rows_affected() == 1)
}

/// Reads the issued count and total, locking the campaign row.
pub async fn lock_type(conn: &mut PgConnection, type_id: i64) -> Result<(i64, i64), sqlx::Error> {
    let row =
        sqlx::query!("SELECT issued_quantity, total_quantity FROM coupon_types WHERE id = $1 FOR UPDATE", type_id)
            .fetch_one(conn)
            .await?;
    Ok((row.issued_quantity, row.total_quantity))
}

/// Stamps the campaign row with a lease holder's fencing token if it is
/// newer than the last one (see `wallets::claim_fence`); returns the issued
/// count and total, or `None` for a stale token.
pub async fn claim_fence(conn: &mut PgConnection, type_id: i64, fence: i64) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let row = sqlx::query!(
        "UPDATE coupon_types SET fence = $2 WHERE id = $1 AND fence < $2
         RETURNING issued_quantity, total_quantity",
        type_id,
        fence,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| (row.issued_quantity, row.total_quantity)))
}

pub async fn fence(conn: &mut PgConnection, type_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!("SELECT fence FROM coupon_types WHERE id = $1", type_id).fetch_one(conn).await
}

pub async fn holds(conn: &mut PgConnection, type_id: i64, user_id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM coupons WHERE coupon_type_id = $1 AND user_id = $2) AS "held!""#,
        type_id,
        user_id,
    )
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
    sqlx::query_scalar!("SELECT gate_grant FROM coupons WHERE coupon_type_id = $1 AND user_id = $2", type_id, user_id)
        .fetch_optional(conn)
        .await
}

/// The holders of a campaign and how many are left, read in one snapshot.
pub async fn holders(conn: &mut PgConnection, type_id: i64) -> Result<(i64, Vec<i64>), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT ct.total_quantity - ct.issued_quantity AS "left!",
                  COALESCE((SELECT array_agg(user_id) FROM coupons WHERE coupon_type_id = ct.id), '{}') AS "holders!"
           FROM coupon_types ct WHERE ct.id = $1"#,
        type_id,
    )
    .fetch_one(conn)
    .await?;
    Ok((row.left, row.holders))
}

#[derive(Debug, Clone)]
pub struct CouponRow {
    pub id: i64,
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
    sqlx::query_as!(
        CouponRow,
        "INSERT INTO coupons (coupon_type_id, user_id, expires_at, gate_grant)
         VALUES ($1, $2, now() + make_interval(days => $3), $4)
         RETURNING id, issued_at, expires_at, status",
        coupon_type.id,
        user_id,
        coupon_type.terms.valid_days,
        gate_grant,
    )
    .fetch_one(conn)
    .await
}

/// Of these users, the ones that hold a coupon of the campaign.
pub async fn holders_among(conn: &mut PgConnection, type_id: i64, user_ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT user_id FROM coupons WHERE coupon_type_id = $1 AND user_id = ANY($2)",
        type_id,
        user_ids,
    )
    .fetch_all(conn)
    .await
}

/// Writes one coupon per user (valid for the campaign's days, each under
/// its gate grant) and counts them as issued, in two statements; returns
/// the coupons in the order of `users`. Past the total,
/// `coupon_types_issued_check` refuses the lot; a user holding one already,
/// `coupons_user_type_key`.
pub async fn issue_many(
    conn: &mut PgConnection,
    type_id: i64,
    valid_days: i32,
    users: &[i64],
    grants: &[Option<i64>],
) -> Result<Vec<IssuedCoupon>, sqlx::Error> {
    sqlx::query!(
        "UPDATE coupon_types SET issued_quantity = issued_quantity + $2 WHERE id = $1",
        type_id,
        users.len() as i64,
    )
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query!(
        "INSERT INTO coupons (coupon_type_id, user_id, expires_at, gate_grant)
         SELECT $1, issued.user_id, now() + make_interval(days => $2), issued.gate_grant
         FROM unnest($3::bigint[], $4::bigint[]) AS issued(user_id, gate_grant)
         RETURNING user_id, id, issued_at, expires_at",
        type_id,
        valid_days,
        users,
        grants as _,
    )
    .fetch_all(conn)
    .await?;
    let mut issued: HashMap<i64, IssuedCoupon> = rows
        .into_iter()
        .map(|row| {
            let coupon = IssuedCoupon {
                coupon_id: row.id,
                user_id: row.user_id,
                issued_at: row.issued_at,
                expires_at: row.expires_at,
                status: CouponStatus::Available,
            };
            (row.user_id, coupon)
        })
        .collect();
    Ok(users.iter().filter_map(|user| issued.remove(user)).collect())
}

/// A coupon with its campaign, as a holder's list shows it.
#[derive(Debug, Clone)]
pub struct HeldCoupon {
    pub coupon: CouponRow,
    pub code: String,
    pub kind: String,
    pub value: i64,
    pub min_order_amount: i64,
}

/// Every coupon the user holds, newest first.
pub async fn held_by(conn: &mut PgConnection, user_id: i64) -> Result<Vec<HeldCoupon>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT c.id, c.issued_at, c.expires_at, c.status,
                t.code, t.kind, t.value, t.min_order_amount
         FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id
         WHERE c.user_id = $1 ORDER BY c.id DESC",
        user_id,
    )
    .fetch_all(conn)
    .await?;
    let held = rows.into_iter().map(|row| HeldCoupon {
        coupon: CouponRow { id: row.id, issued_at: row.issued_at, expires_at: row.expires_at, status: row.status },
        code: row.code,
        kind: row.kind,
        value: row.value,
        min_order_amount: row.min_order_amount,
    });
    Ok(held.collect())
}

/// A coupon with the terms an order needs.
#[derive(Debug, Clone)]
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
    sqlx::query_as!(
        CouponForOrder,
        "SELECT c.id, c.user_id, c.status, c.expires_at, t.kind, t.value, t.min_order_amount
         FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id WHERE c.id = $1",
        coupon_id,
    )
    .fetch_optional(conn)
    .await
}

/// The coupons of `ids` with their terms, unlocked.
pub async fn for_orders(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<CouponForOrder>, sqlx::Error> {
    sqlx::query_as!(
        CouponForOrder,
        "SELECT c.id, c.user_id, c.status, c.expires_at, t.kind, t.value, t.min_order_amount
         FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id WHERE c.id = ANY($1)",
        ids,
    )
    .fetch_all(conn)
    .await
}

/// The coupons of `ids` with their terms, locked in ascending id order
/// (after the products: the lock order of order placement).
pub async fn lock_for_orders(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<CouponForOrder>, sqlx::Error> {
    sqlx::query_as!(
        CouponForOrder,
        "SELECT c.id, c.user_id, c.status, c.expires_at, t.kind, t.value, t.min_order_amount
         FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id
         WHERE c.id = ANY($1) ORDER BY c.id FOR UPDATE OF c",
        ids,
    )
    .fetch_all(conn)
    .await
}

/// Reserves each coupon `ids[i]` for order `order_ids[i]` if still
/// available and unexpired; returns how many were reserved.
pub async fn reserve_many(conn: &mut PgConnection, ids: &[i64], order_ids: &[i64]) -> Result<u64, sqlx::Error> {
    let reserved = sqlx::query!(
        "UPDATE coupons c SET status = 'RESERVED', order_id = t.order_id
         FROM unnest($1::bigint[], $2::bigint[]) AS t(id, order_id)
         WHERE c.id = t.id AND c.status = 'AVAILABLE' AND c.expires_at > now()",
        ids,
        order_ids,
    )
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
    let reserved = sqlx::query!(
        "UPDATE coupons SET status = 'RESERVED', order_id = $3
         WHERE id = $1 AND user_id = $2 AND status = 'AVAILABLE' AND expires_at > now()",
        coupon_id,
        user_id,
        order_id,
    )
    .execute(conn)
    .await?;
    Ok(reserved.rows_affected() == 1)
}

/// Makes the coupons held by these orders available again.
pub async fn release(conn: &mut PgConnection, order_ids: &[i64]) -> Result<(), sqlx::Error> {
    // Locked first in ascending id order, the order every transaction takes
    // coupons in (a multi-row UPDATE locks in whatever order it scans).
    sqlx::query!(
        "WITH held AS MATERIALIZED (
             SELECT id FROM coupons WHERE order_id = ANY($1) AND status = 'RESERVED' ORDER BY id FOR UPDATE
         )
         UPDATE coupons SET status = 'AVAILABLE', order_id = NULL WHERE id IN (SELECT id FROM held)",
        order_ids,
    )
    .execute(conn)
    .await
    .map(drop)
}
