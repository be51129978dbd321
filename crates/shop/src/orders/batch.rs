//! Orders placed together, in one transaction, under a stock strategy that
//! places them so (`strategy::stock::batch`, which says why).
//!
//! A batch decides each order in arrival order against the rows it read:
//! prices, the stock the orders before it left, the coupon (still
//! available, not taken by an earlier order of the batch). A refused order
//! gets its answer (`OUT_OF_STOCK`, `NOT_FOUND`, `COUPON_NOT_USABLE`, …)
//! and changes nothing; the accepted ones are written with one statement
//! each for orders with their lines, coupons, and stock.
//!
//! It first reads without locks and takes what it decided at the end, each
//! statement conditional (stock still there, coupons still available): the
//! stock in the statement that inserts the orders, just before its commit
//! ([`Locking::Late`]). A hot product's row is then held by one batch for
//! that statement and the `COMMIT`, not for the whole transaction, so the
//! batches of many instances pass it in turn quickly.
//! If a condition fails — another batch took the stock or the coupon since
//! the read — the batch is rolled back and decided again under locks
//! ([`Locking::First`]): its products (ascending id, a [`StockTally`]),
//! then its coupons (ascending id), the lock order of every order
//! placement. The constraints back the checks: a batch whose writes fail
//! anyway is rolled back whole, and its orders are placed one by one, each
//! with its own answer.
//! A batch whose COMMIT reply was lost is resolved (`storage::Tx`) and never
//! redone: if it cannot be resolved, each of its orders is answered
//! `SERVICE_UNAVAILABLE`, its Idempotency-Key kept.
//!
//! Batches form by themselves (see [`crate::batcher`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::anyhow;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};

use super::{OrderLineView, OrderView, Placement, coupon_terms, place_alone, price, total_of};
use crate::batcher::{self, Batcher};
use crate::domain::order::{Amounts, OrderLines};
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::Db;
use crate::storage::coupons::CouponForOrder;
use crate::storage::orders::{NewItem, NewOrder, StockTake};
use crate::storage::products::ProductRow;
use crate::storage::{Tx, coupons, orders};
use crate::strategy::stock::{StockStrategy, StockTally};

/// Orders waiting to be placed together.
pub struct OrderBatcher(Batcher<Job, Result<OrderView, AppError>>);

struct Job {
    user_id: i64,
    lines: OrderLines,
    coupon_id: Option<i64>,
    payment_timeout_secs: i64,
    claim: Option<Claim>,
}

impl OrderBatcher {
    /// `alone` places the orders of a failed batch one by one.
    pub fn start(db: Db, alone: Arc<dyn StockStrategy>) -> Self {
        Self(Batcher::start("orders", move |jobs| place_batch(db.clone(), alone.clone(), jobs)))
    }

    /// Queues the order for the next batch and waits for its answer.
    pub async fn place(&self, placement: Placement<'_>, claim: Option<&Claim>) -> Result<OrderView, AppError> {
        let job = Job {
            user_id: placement.user_id,
            lines: placement.lines.clone(),
            coupon_id: placement.coupon_id,
            payment_timeout_secs: placement.payment_timeout_secs,
            claim: claim.cloned(),
        };
        self.0.submit(job).await?
    }
}

async fn place_batch(db: Db, alone: Arc<dyn StockStrategy>, jobs: Vec<Job>) -> Vec<Result<OrderView, AppError>> {
    let written = match write(&db, &jobs, Locking::Late).await {
        Err(Unwritten::Raced) => {
            metrics::counter!("shop_order_batches_decided_again_total").increment(1);
            write(&db, &jobs, Locking::First).await
        }
        written => written,
    };
    match written {
        Ok(answers) => answers,
        Err(Unwritten::Failed(failure)) => {
            batcher::one_by_one("orders", &jobs, failure, |job| place_one(&db, &*alone, job)).await
        }
        Err(Unwritten::Raced) => {
            let failure = AppError::internal(anyhow!("a batch decided under locks raced"));
            batcher::one_by_one("orders", &jobs, failure, |job| place_one(&db, &*alone, job)).await
        }
    }
}

/// When a batch takes the rows it decided on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Locking {
    /// Reads them unlocked and takes them just before the commit, each
    /// conditionally; [`Unwritten::Raced`] if a condition failed.
    Late,
    /// Locks them before it reads them: what it decides holds.
    First,
}

/// Why a batch wrote nothing.
enum Unwritten {
    /// Another transaction took what a [`Locking::Late`] batch decided on,
    /// between its read and its take (or they deadlocked).
    Raced,
    Failed(AppError),
}

impl<E: Into<AppError>> From<E> for Unwritten {
    fn from(error: E) -> Self {
        Self::Failed(error.into())
    }
}

async fn place_one(db: &Db, alone: &dyn StockStrategy, job: &Job) -> Result<OrderView, AppError> {
    let placement = Placement {
        user_id: job.user_id,
        lines: &job.lines,
        coupon_id: job.coupon_id,
        payment_timeout_secs: job.payment_timeout_secs,
    };
    place_alone(db, alone, placement, job.claim.as_ref()).await
}

/// An order the batch will write.
struct Accepted {
    amounts: Amounts,
    items: Vec<NewItem>,
}

/// Decides and writes the batch in one transaction: each order's answer,
/// or why the batch as a whole wrote nothing.
async fn write(db: &Db, jobs: &[Job], locking: Locking) -> Result<Vec<Result<OrderView, AppError>>, Unwritten> {
    let late = locking == Locking::Late;
    let written = write_with(db, jobs, locking).await;
    match written {
        // Lost to another batch on a row it takes late: decided again.
        Err(Unwritten::Failed(AppError::ConcurrencyConflict(_))) if late => Err(Unwritten::Raced),
        written => written,
    }
}

async fn write_with(db: &Db, jobs: &[Job], locking: Locking) -> Result<Vec<Result<OrderView, AppError>>, Unwritten> {
    let mut tx = Tx::begin(db).await?;
    let product_ids: Vec<i64> =
        jobs.iter().flat_map(|job| job.lines.product_ids()).collect::<BTreeSet<_>>().into_iter().collect();
    let (found, mut stock) = match locking {
        Locking::Late => StockTally::read(&mut tx, &product_ids).await?,
        Locking::First => StockTally::lock(&mut tx, &product_ids).await?,
    };
    let coupon_ids: Vec<i64> =
        jobs.iter().filter_map(|job| job.coupon_id).collect::<BTreeSet<_>>().into_iter().collect();
    let mut coupons = match (coupon_ids.is_empty(), locking) {
        (true, _) => HashMap::new(),
        (false, Locking::Late) => by_id(coupons::for_orders(&mut tx, &coupon_ids).await?),
        (false, Locking::First) => by_id(coupons::lock_for_orders(&mut tx, &coupon_ids).await?),
    };
    fail::fail_point!("orders::coupon::read");

    let now = Utc::now();
    let decisions: Vec<Result<Accepted, AppError>> =
        jobs.iter().map(|job| decide(job, &found, &mut stock, &mut coupons, now)).collect();

    let accepted: Vec<(&Job, &Accepted)> =
        jobs.iter().zip(&decisions).filter_map(|(job, decision)| Some((job, decision.as_ref().ok()?))).collect();
    let mut views = Vec::with_capacity(accepted.len());
    if !accepted.is_empty() {
        let take = match locking {
            Locking::First => {
                stock.write(&mut tx).await?;
                StockTake::default()
            }
            Locking::Late => stock.into_take(),
        };
        fail::fail_point!(
            "orders::batch::taken",
            |_| Err(AppError::internal(anyhow!("failed at a fail point")).into())
        );
        let new: Vec<NewOrder> = accepted
            .iter()
            .map(|(job, order)| NewOrder {
                user_id: job.user_id,
                amounts: order.amounts,
                coupon_id: job.coupon_id,
                payment_timeout_secs: job.payment_timeout_secs,
                gate_reservation: None,
                items: &order.items,
            })
            .collect();
        // Under `Late` this statement takes the stock too: a hot product's
        // row is held from here to the commit.
        let (rows, taken) = orders::insert_many(&mut tx, &new, &take).await?;
        if taken != take.product_ids.len() as i64 {
            return Err(Unwritten::Raced);
        }
        let (coupon_ids, holders): (Vec<i64>, Vec<i64>) =
            rows.iter().filter_map(|row| Some((row.coupon_id?, row.id))).unzip();
        if !coupon_ids.is_empty()
            && coupons::reserve_many(&mut tx, &coupon_ids, &holders).await? != holders.len() as u64
        {
            return Err(match locking {
                Locking::Late => Unwritten::Raced,
                Locking::First => AppError::internal(anyhow!("a locked coupon could not be reserved")).into(),
            });
        }
        for ((job, order), row) in accepted.iter().zip(&rows) {
            let view = OrderView::new(row, order.items.iter().map(OrderLineView::from));
            if let Some(claim) = &job.claim {
                claim.save(&mut tx, StatusCode::CREATED, &view).await?;
            }
            views.push(view);
        }
    }
    tx.commit().await?;
    // The views follow the accepted orders, which follow the jobs.
    let mut views = views.into_iter();
    Ok(decisions
        .into_iter()
        .map(|decision| decision.map(|_| views.next().expect("one view per accepted order")))
        .collect())
}

fn by_id(coupons: Vec<CouponForOrder>) -> HashMap<i64, CouponForOrder> {
    coupons.into_iter().map(|coupon| (coupon.id, coupon)).collect()
}

/// Decides one order of the batch against the rows it read and
/// what the orders before it took, in the order [`super::place_alone`]
/// checks: products, minimum total, stock, coupon.
fn decide(
    job: &Job,
    found: &[ProductRow],
    stock: &mut StockTally,
    coupons: &mut HashMap<i64, CouponForOrder>,
    now: DateTime<Utc>,
) -> Result<Accepted, AppError> {
    let items = price(&job.lines, |id| found.binary_search_by_key(&id, |product| product.id).ok().map(|i| &found[i]))?;
    if !stock.covers(&job.lines) {
        return Err(AppError::OutOfStock);
    }
    let total = total_of(&items);
    let coupon = match job.coupon_id {
        Some(coupon_id) => Some(coupon_terms(coupons.get(&coupon_id), job.user_id, total, now)?),
        None => None,
    };
    stock.take(&job.lines);
    if let Some(coupon) = job.coupon_id.and_then(|id| coupons.get_mut(&id)) {
        // Later orders of the batch see it held.
        coupon.status = "RESERVED".into();
    }
    Ok(Accepted { amounts: Amounts::new(total, coupon), items })
}
