//! Atomic: one conditional increment of the issued count
//! (`… WHERE issued_quantity < total_quantity`), then the insert, in one
//! transaction. The row lock lasts from the increment to the commit; a
//! second coupon for the user fails the unique insert and rolls the
//! increment back. Never answers `CONCURRENCY_CONFLICT`.

use sqlx::PgPool;

use super::write_coupon;
use crate::domain::coupon::{CouponType, CouponView};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::{Tx, coupons};

pub async fn issue(
    db: &PgPool,
    coupon_type: &CouponType,
    user_id: i64,
    claim: Option<&Claim>,
) -> Result<CouponView, AppError> {
    // No read to race: the conditional increment is the whole decision.
    fail::fail_point!("coupons::issue::read");
    let mut tx = Tx::begin(db).await?;
    if !coupons::count_issued_if_left(&mut tx, coupon_type.id).await? {
        return Err(AppError::CouponSoldOut);
    }
    let view = write_coupon(&mut tx, coupon_type, user_id, claim, None).await?;
    tx.commit().await?;
    Ok(view)
}
