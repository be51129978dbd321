//! Pessimistic: lock the campaign row (`FOR UPDATE`), count, insert. Every
//! issue of a campaign queues on one row, in PostgreSQL, each waiter holding
//! a pooled connection. Fails as `CONCURRENCY_CONFLICT` when the wait passes
//! `lock_timeout`.

use std::time::Duration;

use sqlx::PgPool;

use super::{count_issued, write_coupon};
use crate::domain::coupon::{CouponType, CouponView};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::{Tx, coupons};
use crate::strategy::{lost_race, set_lock_timeout};

pub async fn issue(
    db: &PgPool,
    coupon_type: &CouponType,
    user_id: i64,
    claim: Option<&Claim>,
    lock_timeout: Duration,
) -> Result<CouponView, AppError> {
    let mut tx = Tx::begin(db).await?;
    set_lock_timeout(&mut tx, lock_timeout).await?;
    let (issued, total) = coupons::lock_type(&mut tx, coupon_type.id).await.map_err(lost_race)?;
    fail::fail_point!("coupons::issue::read");
    if coupons::holds(&mut tx, coupon_type.id, user_id).await? {
        return Err(AppError::CouponAlreadyIssued);
    }
    if issued >= total {
        return Err(AppError::CouponSoldOut);
    }
    count_issued(&mut tx, coupon_type.id).await?;
    let view = write_coupon(&mut tx, coupon_type, user_id, claim, None).await?;
    tx.commit().await?;
    Ok(view)
}
