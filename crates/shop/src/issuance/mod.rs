//! Asynchronous coupon issuance: a request is accepted at once (202) and
//! queued on a Redis stream; consumers in every instance issue the queued
//! requests in batches and record each one's outcome.
//!
//! Accepting refuses at once what is already final (unknown campaign, not
//! open, sold out, already held or already pending for the user) and then
//! writes nothing. Under a gate the unit is granted and the request queued
//! by one script, then written down `PENDING`: its consumer waits a few
//! seconds for that row, and if the instance died in between, drops the
//! entry and the gate's reconciler takes the grant back. Under the
//! database strategies the request is written down first and queued
//! after. A sweep requeues requests pending too long, so one whose entry
//! Redis lost, or whose instance died before queueing it, still ends
//! `ISSUED` or `REJECTED`.

mod consumer;
mod queue;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub use queue::Queue;

use crate::domain::coupon::CouponType;
use crate::error::{AppError, ResultExt};
use crate::idempotency::Claim;
use crate::storage::Db;
use crate::storage::Tx;
use crate::storage::issue_requests::{self, QueuedRequest, RequestRow};
use crate::strategy::coupons::{CouponHold, CouponStrategy};

/// An accepted request.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub request_id: Uuid,
    pub coupon_type: String,
    /// `PENDING`.
    pub status: &'static str,
}

/// A request as its requester sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    pub request_id: Uuid,
    pub user_id: i64,
    pub coupon_type: String,
    /// `PENDING`, `ISSUED` or `REJECTED`.
    pub status: String,
    pub coupon_id: Option<i64>,
    /// Why it was rejected: `SOLD_OUT`, `ALREADY_ISSUED`, `NOT_OPEN` or `USER_NOT_FOUND`.
    pub reason: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

impl From<RequestRow> for RequestView {
    fn from(row: RequestRow) -> Self {
        Self {
            request_id: row.id,
            user_id: row.user_id,
            coupon_type: row.code,
            status: row.status,
            coupon_id: row.coupon_id,
            reason: row.reason,
            requested_at: row.requested_at,
            processed_at: row.processed_at,
        }
    }
}

/// How long queued requests may wait before they are taken from a
/// consumer that stopped, or requeued from PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// An entry read but not acknowledged this long is claimed by another
    /// consumer.
    pub claim_after: Duration,
    /// A request still pending this long is queued again.
    pub requeue_after: Duration,
}

/// Asynchronous issuance: accepting, and the consumers.
pub struct Issuance {
    db: Db,
    queue: Queue,
    coupons: Arc<dyn CouponStrategy>,
    patience: Patience,
}

impl Issuance {
    pub fn new(db: Db, queue: Queue, coupons: Arc<dyn CouponStrategy>, patience: Patience) -> Self {
        Self { db, queue, coupons, patience }
    }

    /// Accepts a request for a coupon of `coupon_type`, or refuses it at
    /// once with an answer that is final.
    #[tracing::instrument(skip_all, fields(user_id, coupon_type = coupon_type.terms.code.as_str()))]
    pub async fn accept(
        &self,
        coupon_type: &CouponType,
        user_id: i64,
        claim: Option<&Claim>,
    ) -> Result<Accepted, AppError> {
        coupon_type.check_window(Utc::now()).map_err(|_| AppError::CouponNotOpen)?;
        let mut request = QueuedRequest { id: Uuid::new_v4(), user_id, type_id: coupon_type.id, gate_grant: None };
        // A gate queues the request itself, in the script that grants it;
        // its consumer waits for the row written next.
        request.gate_grant = self.coupons.accept(&self.db, coupon_type, user_id, &self.queue.entry(&request)).await?;
        let accepted = Accepted {
            request_id: request.id,
            coupon_type: coupon_type.terms.code.as_str().to_owned(),
            status: "PENDING",
        };
        // The request and the answer stored under its Idempotency-Key
        // commit together.
        let written = async {
            let mut tx = Tx::begin(&self.db).await?;
            issue_requests::insert_pending(&mut tx, request.id, user_id, coupon_type.id)
                .await
                .on_constraint("coupon_issue_requests_pending_key", || AppError::CouponAlreadyIssued)?;
            if let Some(claim) = claim {
                claim.save(&mut tx, StatusCode::ACCEPTED, &accepted).await?;
            }
            tx.commit().await
        };
        if let Err(error) = written.await {
            if request.gate_grant.is_some() && !matches!(error, AppError::OutcomeUnknown) {
                // Not written down, so not accepted: the unit goes back now
                // (its entry, finding no row, is dropped), or the user would
                // be told they hold one until the reconciler came.
                let hold = CouponHold::granted(request.gate_grant);
                self.coupons.settle(coupon_type, user_id, hold, Err(&error)).await;
            }
            return Err(error);
        }
        if request.gate_grant.is_none() {
            if let Err(error) = self.queue.add(&request).await {
                // Written down, so not lost: the sweep queues it.
                tracing::warn!(%error, request_id = %request.id, "could not queue an issue request; the sweep will");
            }
        } else {
            // Its entry, queued by the gate, now has its row.
            self.queue.wake();
        }
        metrics::counter!("shop_async_issue_accepted_total").increment(1);
        Ok(accepted)
    }

    /// How often to look for requests to requeue.
    pub fn requeue_every(&self) -> Duration {
        self.patience.requeue_after / 3
    }

    /// The request, if the caller may see it (its requester or an admin).
    pub async fn find(&self, id: Uuid, user_id: i64, admin: bool) -> Result<RequestView, AppError> {
        issue_requests::find(&mut *self.db.read().await?, id)
            .await?
            .filter(|row| admin || row.user_id == user_id)
            .map(RequestView::from)
            .ok_or_else(|| AppError::not_found("issue request not found"))
    }
}
