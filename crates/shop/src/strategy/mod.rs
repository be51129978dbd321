//! Concurrency strategies, one module per operation family, one file per
//! strategy. Config picks a strategy at start; handlers never know which runs.
//!
//! Whatever the strategy, the database constraints stay the last line of
//! defence, and a race lost past the strategy's limit (retries used up, lock
//! wait timed out) is `CONCURRENCY_CONFLICT` with nothing written.

pub mod coupons;
pub mod points;
pub mod stock;

use std::time::Duration;

use sqlx::PgConnection;

use crate::error::AppError;
use crate::lock::{LeaseLocks, LockError};

/// PostgreSQL's `lock_not_available` (a `lock_timeout` ran out) and
/// `deadlock_detected` are lost races, not failures.
fn lost_race(error: sqlx::Error) -> AppError {
    match &error {
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("55P03" | "40P01")) => {
            metrics::counter!("shop_lock_timeouts_total", "lock" => "postgres").increment(1);
            AppError::ConcurrencyConflict("timed out waiting for a row lock")
        }
        _ => AppError::from(error),
    }
}

/// Bounds this transaction's row-lock waits.
async fn set_lock_timeout(conn: &mut PgConnection, timeout: Duration) -> Result<(), AppError> {
    sqlx::query!("SELECT set_config('lock_timeout', $1, true)", format!("{}ms", timeout.as_millis()))
        .fetch_one(conn)
        .await?;
    Ok(())
}

/// Gives up waiting for a lease once `flag` is raised, answering `answer`.
struct GiveUp<'a> {
    flag: &'a str,
    answer: fn() -> AppError,
}

/// Runs `work` holding the Redis lease on `resource`: taken before the work's
/// transaction begins, released after it has committed or rolled back, so
/// the next holder reads what this one wrote. `work` gets the fencing token.
async fn under_lease<T>(
    locks: &LeaseLocks,
    resource: &str,
    give_up: Option<GiveUp<'_>>,
    work: impl AsyncFnOnce(i64) -> Result<T, AppError>,
) -> Result<T, AppError> {
    let flag = give_up.as_ref().map(|give_up| give_up.flag);
    let lease = locks.acquire(resource, flag).await.map_err(|error| lease_error(error, give_up.as_ref()))?;
    let outcome = work(lease.fence()).await;
    lease.release().await;
    outcome
}

/// The answer to a lease that could not be taken.
fn lease_error(error: LockError, give_up: Option<&GiveUp<'_>>) -> AppError {
    match error {
        LockError::Timeout => AppError::ConcurrencyConflict("timed out waiting for a lock"),
        LockError::GaveUp => give_up.map_or_else(
            || AppError::internal(anyhow::anyhow!("gave up waiting without a flag")),
            |give_up| (give_up.answer)(),
        ),
        LockError::Redis(error) => AppError::from(error),
    }
}

/// The answer to a holder whose fencing token the database refused: a newer
/// holder has written. If that was because Redis lost its counter, lift it
/// above the `newest` token the database has seen.
async fn stale_fence(locks: &LeaseLocks, resource: &str, newest: i64) -> AppError {
    metrics::counter!("shop_fence_rejections_total").increment(1);
    if let Err(error) = locks.advance_fence(resource, newest).await {
        return error.into();
    }
    AppError::ConcurrencyConflict("the lock was lost to a newer holder")
}
