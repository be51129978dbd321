//! Concurrency strategies, one module per operation family, one file per
//! strategy. Config picks a strategy at start; handlers never know which runs.
//!
//! Whatever the strategy, the database constraints stay the last line of
//! defence, and a race lost past the strategy's limit (retries used up, lock
//! wait timed out) is `CONCURRENCY_CONFLICT` with nothing written.

pub(crate) mod backoff;
pub mod points;

use crate::http::error::AppError;

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
