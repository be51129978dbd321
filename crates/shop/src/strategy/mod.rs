//! Concurrency strategies, one module per operation family, one file per
//! strategy. Config picks a strategy at start (each family's `build`);
//! handlers never know which runs.
//!
//! Every family speaks one protocol around the caller's transaction, so a
//! new strategy is one file and a new caller needs no strategy's help:
//!
//! 1. **hold**, before a connection is taken: what must be held across the
//!    transaction (a Redis lease, units from a gate), or an answer that is
//!    already final;
//! 2. **apply**, inside the caller's transaction: the reads and writes of
//!    the row the family guards;
//! 3. **settle**, after the transaction committed or rolled back, with its
//!    outcome: leases released, gate units completed or given back.
//!
//! The `batch` strategies also gather the requests that arrive together
//! into one transaction (see [`crate::batcher`]); alone, they apply as
//! `atomic` does.
//!
//! Whatever the strategy, the database constraints stay the last line of
//! defence, and a race lost past the strategy's limit (retries used up, lock
//! wait timed out) is `CONCURRENCY_CONFLICT` with nothing written.

mod active;
pub mod coupons;
pub mod hot_rows;
pub mod points;
pub mod stock;

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use crate::config::LockConfig;
use crate::error::AppError;
use crate::lock::{Lease, LeaseLocks, LockError};
use crate::redis_conn::{Keyspace, RedisConn};
use crate::storage::Db;

/// What the families build their strategies from.
pub struct Deps<'a> {
    pub db: &'a Db,
    pub redis: &'a RedisConn,
    pub keys: &'a Keyspace,
    pub locks: &'a LockConfig,
    pub leases: &'a LeaseLocks,
}

/// Work a strategy needs done every so often while the server runs (a
/// gate's reconciler).
pub struct Chore {
    pub every: Duration,
    pub what: &'static str,
    pub run: Box<dyn Fn() -> BoxFuture<'static, Result<(), AppError>> + Send + Sync>,
}

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

/// Gives up waiting for a lease once the resource's `flag` is raised,
/// answering `answer`.
struct GiveUp<'a> {
    flag: &'a str,
    answer: fn() -> AppError,
}

/// Takes the Redis lease on `resource`, before the transaction begins.
async fn lease(locks: &LeaseLocks, resource: &str, give_up: Option<GiveUp<'_>>) -> Result<Lease, AppError> {
    let flag = give_up.as_ref().map(|give_up| give_up.flag);
    locks.acquire(resource, flag).await.map_err(|error| match error {
        LockError::Timeout => AppError::ConcurrencyConflict("timed out waiting for a lock"),
        LockError::GaveUp => give_up.map_or_else(
            || AppError::internal(anyhow::anyhow!("gave up waiting without a flag")),
            |give_up| (give_up.answer)(),
        ),
        LockError::Redis(error) => AppError::from(error),
    })
}

/// Releases leases in the reverse of the order they were taken.
async fn release_all(leases: Vec<Lease>) {
    for lease in leases.into_iter().rev() {
        lease.release().await;
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
