//! Point charges: read the balance and the charge counters, check the limits,
//! write the new balance and a ledger row — a read-modify-write that loses
//! updates unless concurrent charges of one user are serialized. Each
//! strategy serializes them differently; all write the balance and its ledger
//! row in one transaction.

mod atomic;
mod optimistic;
mod pessimistic;
mod redis_lock;

use std::time::Duration;

use axum::http::StatusCode;
use sqlx::{PgConnection, PgPool};

use crate::config::PointsStrategyKind;
use crate::domain::points::{
    ChargeAmount, ChargeDay, ChargeLimitExceeded, ChargeLimits, PointBalance,
};
use crate::http::error::AppError;
use crate::idempotency::Claim;
use crate::lock::LeaseLocks;

pub enum PointsStrategy {
    Optimistic { max_retries: u32 },
    Pessimistic { lock_timeout: Duration },
    Atomic,
    RedisLock(LeaseLocks),
}

/// One charge, validated.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    pub user_id: i64,
    pub amount: ChargeAmount,
    pub on: ChargeDay,
    pub limits: ChargeLimits,
}

impl PointsStrategy {
    pub fn kind(&self) -> PointsStrategyKind {
        match self {
            Self::Optimistic { .. } => PointsStrategyKind::Optimistic,
            Self::Pessimistic { .. } => PointsStrategyKind::Pessimistic,
            Self::Atomic => PointsStrategyKind::Atomic,
            Self::RedisLock(_) => PointsStrategyKind::RedisLock,
        }
    }

    /// Charges the wallet; with a claim, the response is stored in the same
    /// transaction. Returns the new balance.
    #[tracing::instrument(skip_all, fields(user_id = charge.user_id, strategy = ?self.kind()))]
    pub async fn charge(
        &self,
        db: &PgPool,
        charge: Charge,
        claim: Option<&Claim>,
    ) -> Result<i64, AppError> {
        match self {
            Self::Optimistic { max_retries } => {
                optimistic::charge(db, charge, claim, *max_retries).await
            }
            Self::Pessimistic { lock_timeout } => {
                pessimistic::charge(db, charge, claim, *lock_timeout).await
            }
            Self::Atomic => atomic::charge(db, charge, claim).await,
            Self::RedisLock(locks) => redis_lock::charge(db, locks, charge, claim).await,
        }
    }
}

/// Stores the response under the request's Idempotency-Key, in the
/// transaction of the charge.
async fn save_response(
    conn: &mut PgConnection,
    charge: Charge,
    balance: i64,
    claim: Option<&Claim>,
) -> Result<(), AppError> {
    match claim {
        Some(claim) => {
            let body = PointBalance {
                user_id: charge.user_id,
                balance,
            };
            claim.save(conn, StatusCode::OK, &body).await
        }
        None => Ok(()),
    }
}

fn wallet_missing() -> AppError {
    AppError::not_found("user not found")
}

impl From<ChargeLimitExceeded> for AppError {
    fn from(exceeded: ChargeLimitExceeded) -> Self {
        AppError::ChargeLimitExceeded(exceeded.to_string())
    }
}
