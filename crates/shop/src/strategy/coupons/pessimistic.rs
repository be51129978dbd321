//! Pessimistic: lock the campaign row (`FOR UPDATE`), count, insert. Every
//! issue of a campaign queues on one row, in PostgreSQL, each waiter holding
//! a pooled connection. Fails as `CONCURRENCY_CONFLICT` when the wait passes
//! `lock_timeout`.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{CouponHold, CouponStrategy, Issued, issue_under_lock};
use crate::config::CouponStrategyKind;
use crate::domain::coupon::CouponType;
use crate::error::AppError;
use crate::storage::coupons;
use crate::strategy::{lost_race, set_lock_timeout};

pub struct Pessimistic {
    pub lock_timeout: Duration,
}

#[async_trait]
impl CouponStrategy for Pessimistic {
    fn kind(&self) -> CouponStrategyKind {
        CouponStrategyKind::Pessimistic
    }

    async fn issue(
        &self,
        conn: &mut PgConnection,
        coupon_type: &CouponType,
        user_id: i64,
        _: &CouponHold,
    ) -> Result<Issued, AppError> {
        set_lock_timeout(conn, self.lock_timeout).await?;
        let (issued, total) = coupons::lock_type(conn, coupon_type.id).await.map_err(lost_race)?;
        fail::fail_point!("coupons::issue::read");
        issue_under_lock(conn, coupon_type, user_id, (issued, total)).await
    }
}
