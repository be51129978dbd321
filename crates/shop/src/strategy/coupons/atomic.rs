//! Atomic: one conditional increment of the issued count
//! (`… WHERE issued_quantity < total_quantity`), then the insert, in one
//! transaction. The row lock lasts from the increment to the commit; a
//! second coupon for the user fails the unique insert and rolls the
//! increment back. Never answers `CONCURRENCY_CONFLICT`.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{CouponHold, CouponStrategy, Issued, write_coupon};
use crate::config::CouponStrategyKind;
use crate::domain::coupon::CouponType;
use crate::error::AppError;
use crate::storage::coupons;

pub struct Atomic;

#[async_trait]
impl CouponStrategy for Atomic {
    fn kind(&self) -> CouponStrategyKind {
        CouponStrategyKind::Atomic
    }

    async fn issue(
        &self,
        conn: &mut PgConnection,
        coupon_type: &CouponType,
        user_id: i64,
        _: &CouponHold,
    ) -> Result<Issued, AppError> {
        // No read to race: the conditional increment is the whole decision.
        fail::fail_point!("coupons::issue::read");
        if !coupons::count_issued_if_left(conn, coupon_type.id).await? {
            return Err(AppError::CouponSoldOut);
        }
        let coupon = write_coupon(conn, coupon_type, user_id, None).await?;
        Ok(Issued { coupon, last_unit: false })
    }
}
