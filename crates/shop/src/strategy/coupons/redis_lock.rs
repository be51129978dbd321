//! Redis lease lock per campaign, taken before the transaction and released
//! after it commits; inside, the same checks as `pessimistic`, with the
//! fencing token stamped on the campaign row first. Serializes a campaign
//! across instances without holding database connections while waiting.
//! Once the campaign is sold out a flag says so, and waiters stop waiting.
//! Fails as `CONCURRENCY_CONFLICT` when the lock wait runs out.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{CouponHold, CouponStrategy, Issued, issue_under_lock, refuse_settled};
use crate::config::CouponStrategyKind;
use crate::domain::coupon::CouponType;
use crate::error::AppError;
use crate::lock::LeaseLocks;
use crate::storage::Db;
use crate::storage::coupons;
use crate::strategy::{GiveUp, lease, release_all, stale_fence};

pub struct RedisLock {
    pub locks: LeaseLocks,
}

fn resource(type_id: i64) -> String {
    format!("coupon-type:{type_id}")
}

/// The campaign's flag raised once it is sold out.
const SOLD_OUT: &str = "sold-out";

#[async_trait]
impl CouponStrategy for RedisLock {
    fn kind(&self) -> CouponStrategyKind {
        CouponStrategyKind::RedisLock
    }

    async fn hold(&self, db: &Db, coupon_type: &CouponType, user_id: i64) -> Result<CouponHold, AppError> {
        refuse_settled(db, coupon_type, user_id).await?;
        let give_up = GiveUp { flag: SOLD_OUT, answer: || AppError::CouponSoldOut };
        let lease = lease(&self.locks, &resource(coupon_type.id), Some(give_up)).await?;
        Ok(CouponHold { leases: vec![lease], grant: None })
    }

    async fn issue(
        &self,
        conn: &mut PgConnection,
        coupon_type: &CouponType,
        user_id: i64,
        hold: &CouponHold,
    ) -> Result<Issued, AppError> {
        let lease = hold.leases.first().ok_or_else(|| AppError::internal(anyhow::anyhow!("no campaign lease")))?;
        let Some((issued, total)) = coupons::claim_fence(conn, coupon_type.id, lease.fence()).await? else {
            let newest = coupons::fence(conn, coupon_type.id).await?;
            return Err(stale_fence(&self.locks, &resource(coupon_type.id), newest).await);
        };
        fail::fail_point!("coupons::issue::read");
        issue_under_lock(conn, coupon_type, user_id, (issued, total)).await
    }

    /// Raises the sold-out flag (before the lease goes, so its waiters stop
    /// at once) when the campaign is known to be sold out.
    async fn settle(&self, coupon_type: &CouponType, _: i64, hold: CouponHold, issued: Result<&Issued, &AppError>) {
        if let Ok(Issued { last_unit: true, .. }) | Err(AppError::CouponSoldOut) = issued
            && let Err(error) = self.locks.raise_flag(&resource(coupon_type.id), SOLD_OUT).await
        {
            tracing::warn!(%error, "could not raise a campaign's sold-out flag; its waiters wait for the lease");
        }
        release_all(hold.leases).await;
    }
}
