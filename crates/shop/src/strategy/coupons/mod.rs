//! First-come coupon issuance: however many requests arrive at once, exactly
//! `min(distinct users, total)` coupons are issued, never two of a type to
//! one user. The database's `coupons_user_type_key` and
//! `coupon_types_issued_check` hold under every strategy; the strategies
//! decide how requests queue before they reach them, in the protocol of
//! [`crate::strategy`].

mod atomic;
#[cfg(feature = "naive")]
mod naive;
mod pessimistic;
mod redis_gate;
mod redis_lock;
mod sold_out;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use chrono::Utc;
use sqlx::PgConnection;

pub use redis_gate::GRANT_LUA;

use super::{Chore, Deps, release_all};
use crate::config::CouponStrategyKind;
use crate::domain::coupon::{CouponStatus, CouponType, CouponView, IssuedCoupon};
use crate::error::{AppError, ResultExt};
use crate::idempotency::Claim;
use crate::lock::Lease;
use crate::storage::Db;
use crate::storage::{Tx, coupons};

/// What an issue holds across its transaction.
#[derive(Default)]
pub struct CouponHold {
    leases: Vec<Lease>,
    /// The time (ms) a gate granted the unit, which names the grant.
    grant: Option<i64>,
}

impl CouponHold {
    /// What a request accepted through a gate holds: its grant.
    pub fn granted(grant: Option<i64>) -> Self {
        Self { leases: Vec::new(), grant }
    }
}

/// Where an accepted asynchronous request is queued: a Redis stream, and
/// the fields of its entry.
pub struct StreamEntry {
    pub stream: String,
    pub fields: Vec<(&'static str, String)>,
}

/// A coupon written in the caller's transaction.
pub struct Issued {
    pub coupon: IssuedCoupon,
    /// Whether it was the campaign's last unit.
    pub last_unit: bool,
}

#[async_trait]
pub trait CouponStrategy: Send + Sync {
    fn kind(&self) -> CouponStrategyKind;

    /// Before the transaction: what issuing must hold across it, or an
    /// answer already final. Sold out and held are final once true, so a
    /// lock-free read answers most of a rush; only requests that could win
    /// go on to queue.
    async fn hold(&self, db: &Db, coupon_type: &CouponType, user_id: i64) -> Result<CouponHold, AppError> {
        refuse_settled(db, coupon_type, user_id).await?;
        Ok(CouponHold::default())
    }

    /// For a request issued asynchronously, before it is written down:
    /// refuses at once what is final. A strategy that takes something at
    /// acceptance (a gate's unit) queues the request in the same step, so
    /// that nothing is taken and not queued, and returns what it holds
    /// (`Some(grant)`); `None`: the caller queues it once written down.
    async fn accept(
        &self,
        db: &Db,
        coupon_type: &CouponType,
        user_id: i64,
        _queue: &StreamEntry,
    ) -> Result<Option<i64>, AppError> {
        refuse_settled(db, coupon_type, user_id).await?;
        Ok(None)
    }

    /// In the caller's transaction: counts the unit against the campaign's
    /// total and writes the coupon.
    async fn issue(
        &self,
        conn: &mut PgConnection,
        coupon_type: &CouponType,
        user_id: i64,
        hold: &CouponHold,
    ) -> Result<Issued, AppError>;

    /// After the transaction, with its outcome.
    async fn settle(
        &self,
        _coupon_type: &CouponType,
        _user_id: i64,
        hold: CouponHold,
        _issued: Result<&Issued, &AppError>,
    ) {
        release_all(hold.leases).await;
    }

    /// What must be done in the background while the server runs.
    fn chore(&self, _db: &Db) -> Option<Chore> {
        None
    }

    /// How long grants a request held outside PostgreSQL may outlive it if it
    /// dies before writing them, until the chore settles them: none unless
    /// the strategy holds any.
    fn holds_settle_within(&self) -> Duration {
        Duration::ZERO
    }

    /// An issue asked for over HTTP: held, written (see
    /// [`CouponStrategy::write`]), settled.
    #[tracing::instrument(skip_all, fields(user_id, coupon_type = coupon_type.terms.code.as_str(), strategy = ?self.kind()))]
    async fn issue_alone(
        &self,
        db: &Db,
        coupon_type: &CouponType,
        user_id: i64,
        claim: Option<&Claim>,
    ) -> Result<CouponView, AppError> {
        coupon_type.check_window(Utc::now()).map_err(|_| AppError::CouponNotOpen)?;
        let hold = self.hold(db, coupon_type, user_id).await?;
        let issued = self.write(db, coupon_type, user_id, &hold, claim).await;
        self.settle(coupon_type, user_id, hold, issued.as_ref()).await;
        issued.map(|issued| view(coupon_type, &issued))
    }

    /// The write of an issue asked for over HTTP, once held: in a
    /// transaction of its own, with its answer stored under the request's
    /// Idempotency-Key.
    async fn write(
        &self,
        db: &Db,
        coupon_type: &CouponType,
        user_id: i64,
        hold: &CouponHold,
        claim: Option<&Claim>,
    ) -> Result<Issued, AppError> {
        write_alone(db, coupon_type, claim, async |conn| self.issue(conn, coupon_type, user_id, hold).await).await
    }
}

/// Issues (`issue`, in the transaction) in a transaction of its own, with
/// the answer stored under the request's Idempotency-Key.
async fn write_alone(
    db: &Db,
    coupon_type: &CouponType,
    claim: Option<&Claim>,
    issue: impl AsyncFnOnce(&mut PgConnection) -> Result<Issued, AppError>,
) -> Result<Issued, AppError> {
    let mut tx = Tx::begin(db).await?;
    let issued = issue(&mut tx).await?;
    save_response(&mut tx, coupon_type, &issued, claim).await?;
    tx.commit().await?;
    Ok(issued)
}

/// Stores the response under the request's Idempotency-Key, in the
/// transaction of the issue.
async fn save_response(
    conn: &mut PgConnection,
    coupon_type: &CouponType,
    issued: &Issued,
    claim: Option<&Claim>,
) -> Result<(), AppError> {
    match claim {
        Some(claim) => claim.save(conn, StatusCode::CREATED, &view(coupon_type, issued)).await,
        None => Ok(()),
    }
}

/// The strategy config names.
pub fn build(kind: CouponStrategyKind, deps: &Deps<'_>) -> Arc<dyn CouponStrategy> {
    match kind {
        CouponStrategyKind::Pessimistic => {
            Arc::new(pessimistic::Pessimistic { lock_timeout: deps.locks.db_lock_timeout() })
        }
        CouponStrategyKind::Atomic => Arc::new(atomic::Atomic),
        CouponStrategyKind::RedisLock => Arc::new(redis_lock::RedisLock { locks: deps.leases.clone() }),
        CouponStrategyKind::RedisGate => Arc::new(redis_gate::CouponGate::new(deps)),
        #[cfg(feature = "naive")]
        CouponStrategyKind::Naive => Arc::new(naive::Naive),
    }
}

fn view(coupon_type: &CouponType, issued: &Issued) -> CouponView {
    CouponView::new(coupon_type.into(), issued.coupon)
}

/// Refuses a coupon the user holds, or a campaign sold out, from a read
/// that takes no lock.
async fn refuse_settled(db: &Db, coupon_type: &CouponType, user_id: i64) -> Result<(), AppError> {
    let facts = coupons::issue_facts(&mut *db.read().await?, coupon_type.id, user_id).await?;
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

/// With the campaign's row held (locked, or fenced under its lease) and
/// its counts read as `(issued, total)`: refuses a second coupon or one
/// past the total, else counts and writes it.
async fn issue_under_lock(
    conn: &mut PgConnection,
    coupon_type: &CouponType,
    user_id: i64,
    (issued, total): (i64, i64),
) -> Result<Issued, AppError> {
    if coupons::holds(conn, coupon_type.id, user_id).await? {
        return Err(AppError::CouponAlreadyIssued);
    }
    if issued >= total {
        return Err(AppError::CouponSoldOut);
    }
    count_issued(conn, coupon_type.id).await?;
    let coupon = write_coupon(conn, coupon_type, user_id, None).await?;
    Ok(Issued { coupon, last_unit: issued + 1 == total })
}

/// Writes the coupon (under a gate, naming its grant).
async fn write_coupon(
    conn: &mut PgConnection,
    coupon_type: &CouponType,
    user_id: i64,
    gate_grant: Option<i64>,
) -> Result<IssuedCoupon, AppError> {
    let row = coupons::insert(conn, coupon_type, user_id, gate_grant)
        .await
        .on_constraint("coupons_user_type_key", || AppError::CouponAlreadyIssued)?;
    Ok(IssuedCoupon {
        coupon_id: row.id,
        user_id,
        issued_at: row.issued_at,
        expires_at: row.expires_at,
        status: CouponStatus::Available,
    })
}
