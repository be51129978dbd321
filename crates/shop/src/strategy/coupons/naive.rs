//! Naive (tests only): read the issued count without a lock, then write
//! `issued = read + 1` unconditionally and insert the coupon. Two users who
//! read the last unit as free both get it, and the count says one was issued.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{CouponHold, CouponStrategy, Issued, write_coupon};
use crate::config::CouponStrategyKind;
use crate::domain::coupon::CouponType;
use crate::error::AppError;
use crate::storage::Db;
use crate::storage::coupons;

pub struct Naive;

#[async_trait]
impl CouponStrategy for Naive {
    fn kind(&self) -> CouponStrategyKind {
        CouponStrategyKind::Naive
    }

    /// Not even the lock-free read of what is settled.
    async fn hold(&self, _: &Db, _: &CouponType, _: i64) -> Result<CouponHold, AppError> {
        Ok(CouponHold::default())
    }

    async fn issue(
        &self,
        conn: &mut PgConnection,
        coupon_type: &CouponType,
        user_id: i64,
        _: &CouponHold,
    ) -> Result<Issued, AppError> {
        let issued = coupons::issued_count(conn, coupon_type.id).await?;
        let held = coupons::holds(conn, coupon_type.id, user_id).await?;
        fail::fail_point!("coupons::issue::read");
        if held {
            return Err(AppError::CouponAlreadyIssued);
        }
        if issued >= coupon_type.terms.total_quantity {
            return Err(AppError::CouponSoldOut);
        }
        set_issued(conn, coupon_type.id, issued + 1).await?;
        let coupon = write_coupon(conn, coupon_type, user_id, None).await?;
        Ok(Issued { coupon, last_unit: false })
    }
}

/// Overwrites the issued count with what was read plus one: the lost update.
async fn set_issued(conn: &mut PgConnection, type_id: i64, issued: i64) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE coupon_types SET issued_quantity = $2 WHERE id = $1", type_id, issued)
        .execute(conn)
        .await
        .map(drop)
}
