//! Redis lease lock per campaign, taken before the transaction and released
//! after it commits; inside, the same checks as `pessimistic`, with the
//! fencing token stamped on the campaign row first. Serializes a campaign
//! across instances without holding database connections while waiting.
//! Fails as `CONCURRENCY_CONFLICT` when the lock wait runs out.

use sqlx::PgPool;

use super::{count_issued, write_coupon};
use crate::domain::coupon::{CouponType, CouponView};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::lock::LeaseLocks;
use crate::storage::{Tx, coupons};
use crate::strategy::{GiveUp, stale_fence, under_lease};

pub async fn issue(
    db: &PgPool,
    locks: &LeaseLocks,
    coupon_type: &CouponType,
    user_id: i64,
    claim: Option<&Claim>,
) -> Result<CouponView, AppError> {
    let resource = format!("coupon-type:{}", coupon_type.id);
    let sold_out = format!("coupon-type:{}:sold-out", coupon_type.id);
    let give_up = GiveUp { flag: &sold_out, answer: || AppError::CouponSoldOut };
    under_lease(locks, &resource, Some(give_up), async |fence| {
        let mut tx = Tx::begin(db).await?;
        let Some((issued, total)) = coupons::claim_fence(&mut tx, coupon_type.id, fence).await? else {
            let newest = coupons::fence(&mut tx, coupon_type.id).await?;
            return Err(stale_fence(locks, &resource, newest).await);
        };
        fail::fail_point!("coupons::issue::read");
        if coupons::holds(&mut tx, coupon_type.id, user_id).await? {
            return Err(AppError::CouponAlreadyIssued);
        }
        if issued >= total {
            locks.raise_flag(&sold_out).await?;
            return Err(AppError::CouponSoldOut);
        }
        count_issued(&mut tx, coupon_type.id).await?;
        let view = write_coupon(&mut tx, coupon_type, user_id, claim, None).await?;
        tx.commit().await?;
        if issued + 1 == total {
            locks.raise_flag(&sold_out).await?;
        }
        Ok(view)
    })
    .await
}
