//! First-come coupon issuance: however many requests arrive at once, exactly
//! `min(distinct users, total)` coupons are issued, never two of a type to
//! one user. The database's `coupons_user_type_key` and
//! `coupon_types_issued_check` hold under every strategy; the strategies
//! decide how requests queue before they reach them.

mod atomic;
#[cfg(feature = "naive")]
mod naive;
mod pessimistic;
mod redis_gate;
mod redis_lock;

use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use sqlx::{PgConnection, PgPool};

pub use redis_gate::{CouponGate, GRANT_LUA};

use crate::config::CouponStrategyKind;
use crate::domain::coupon::{CouponStatus, CouponType, CouponView, IssuedCoupon};
use crate::error::{AppError, ResultExt};
use crate::idempotency::Claim;
use crate::lock::LeaseLocks;
use crate::storage::coupons;

pub enum CouponStrategy {
    Pessimistic {
        lock_timeout: Duration,
    },
    Atomic,
    RedisLock(LeaseLocks),
    RedisGate(CouponGate),
    #[cfg(feature = "naive")]
    Naive,
}

impl CouponStrategy {
    pub fn kind(&self) -> CouponStrategyKind {
        match self {
            Self::Pessimistic { .. } => CouponStrategyKind::Pessimistic,
            Self::Atomic => CouponStrategyKind::Atomic,
            Self::RedisLock(_) => CouponStrategyKind::RedisLock,
            Self::RedisGate(_) => CouponStrategyKind::RedisGate,
            #[cfg(feature = "naive")]
            Self::Naive => CouponStrategyKind::Naive,
        }
    }

    /// Issues one coupon of `coupon_type` to the user; with a claim, the
    /// answer is stored in the issuing transaction.
    #[tracing::instrument(skip_all, fields(user_id, coupon_type = coupon_type.code, strategy = ?self.kind()))]
    pub async fn issue(
        &self,
        db: &PgPool,
        coupon_type: &CouponType,
        user_id: i64,
        claim: Option<&Claim>,
    ) -> Result<CouponView, AppError> {
        coupon_type.check_window(Utc::now()).map_err(|_| AppError::CouponNotOpen)?;
        match self {
            Self::Pessimistic { lock_timeout } => {
                refuse_settled(db, coupon_type, user_id).await?;
                pessimistic::issue(db, coupon_type, user_id, claim, *lock_timeout).await
            }
            Self::Atomic => {
                refuse_settled(db, coupon_type, user_id).await?;
                atomic::issue(db, coupon_type, user_id, claim).await
            }
            Self::RedisLock(locks) => {
                refuse_settled(db, coupon_type, user_id).await?;
                redis_lock::issue(db, locks, coupon_type, user_id, claim).await
            }
            Self::RedisGate(gate) => gate.issue(db, coupon_type, user_id, claim).await,
            #[cfg(feature = "naive")]
            Self::Naive => naive::issue(db, coupon_type, user_id, claim).await,
        }
    }
}

/// Sold out and held are final once true, so a lock-free read answers most
/// of a rush; only requests that could win go on to queue.
async fn refuse_settled(db: &PgPool, coupon_type: &CouponType, user_id: i64) -> Result<(), AppError> {
    let facts = coupons::issue_facts(&mut *db.acquire().await?, coupon_type.id, user_id).await?;
    if facts.held {
        return Err(AppError::CouponAlreadyIssued);
    }
    if facts.sold_out {
        return Err(AppError::CouponSoldOut);
    }
    Ok(())
}

/// Counts one more coupon against the total. Over it, the database refuses.
async fn count_issued(conn: &mut PgConnection, type_id: i64) -> Result<(), AppError> {
    coupons::count_issued(conn, type_id).await.on_constraint("coupon_types_issued_check", || AppError::CouponSoldOut)
}

/// Writes the coupon and, under an Idempotency-Key, its answer.
async fn write_coupon(
    conn: &mut PgConnection,
    coupon_type: &CouponType,
    user_id: i64,
    claim: Option<&Claim>,
    gate_grant: Option<i64>,
) -> Result<CouponView, AppError> {
    let row = coupons::insert(conn, coupon_type, user_id, gate_grant)
        .await
        .on_constraint("coupons_user_type_key", || AppError::CouponAlreadyIssued)?;
    let view = CouponView::new(
        coupon_type.into(),
        IssuedCoupon {
            coupon_id: row.id,
            user_id,
            issued_at: row.issued_at,
            expires_at: row.expires_at,
            status: CouponStatus::Available,
        },
    );
    if let Some(claim) = claim {
        claim.save(conn, StatusCode::CREATED, &view).await?;
    }
    Ok(view)
}
