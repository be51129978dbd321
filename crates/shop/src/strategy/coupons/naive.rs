//! Naive (tests only): read the issued count without a lock, then write
//! `issued = read + 1` unconditionally and insert the coupon. Two users who
//! read the last unit as free both get it, and the count says one was issued.

use sqlx::PgPool;

use super::write_coupon;
use crate::domain::coupon::{CouponType, CouponView};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::coupons;

pub async fn issue(
    db: &PgPool,
    coupon_type: &CouponType,
    user_id: i64,
    claim: Option<&Claim>,
) -> Result<CouponView, AppError> {
    let mut tx = db.begin().await?;
    let issued = coupons::issued_count(&mut tx, coupon_type.id).await?;
    let held = coupons::holds(&mut tx, coupon_type.id, user_id).await?;
    fail::fail_point!("coupons::issue::read");
    if held {
        return Err(AppError::CouponAlreadyIssued);
    }
    if issued >= coupon_type.total_quantity {
        return Err(AppError::CouponSoldOut);
    }
    coupons::set_issued(&mut tx, coupon_type.id, issued + 1).await?;
    let view = write_coupon(&mut tx, coupon_type, user_id, claim, None).await?;
    tx.commit().await?;
    Ok(view)
}
