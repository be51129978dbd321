//! The consumers: each instance reads the queue as one consumer of the
//! group and issues what it read in one transaction per batch.
//!
//! A batch locks its campaigns' rows (ascending id) — the row every
//! synchronous issue of the campaign also writes, so the two paths take
//! turns — then its requests' rows, and decides each request in queue
//! order against what it read under those locks: a request already
//! finished (a redelivered or requeued entry) is skipped; one not written
//! down yet (a gate queues before the row is written) waits for a later
//! round; a user who holds the campaign's coupon, or got one earlier in the
//! batch, is `ALREADY_ISSUED`; while units are left the request is issued;
//! then `SOLD_OUT`. The coupons are written with one
//! statement per campaign and the outcomes with one more; `coupons_user_type_key`
//! and `coupon_types_issued_check` back the decisions. Only after the
//! commit are the entries acknowledged and a gate's grants settled, so an
//! instance that dies mid-batch leaves its entries for another consumer
//! to claim, and their second processing changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Issuance;
use super::queue::{Entry, IDLE_POLL};
use crate::domain::coupon::CouponType;
use crate::error::AppError;
use crate::storage::issue_requests::{self, Outcome, QueuedRequest};
use crate::storage::{Tx, coupons};
use crate::strategy::coupons::{CouponHold, Issued};
use uuid::Uuid;

/// Entries read at a time from each stream: one transaction's worth.
const BATCH: usize = 256;
/// Requests requeued per sweep.
const SWEEP: i64 = 1_000;
/// How soon to look again for the rows of entries that came before them.
const ROW_POLL: Duration = Duration::from_millis(10);
/// How long an entry waits for its row: a gate's request is queued before
/// it is written down, milliseconds earlier, unless its instance died in
/// between (then the gate's reconciler takes its grant back).
const ROW_WAIT: Duration = Duration::from_secs(5);

/// Entries read before their request was written down: when first seen.
type Waiting = HashMap<(i64, String), Instant>;

/// A campaign's requests in a batch, and how each ended.
struct Decided {
    coupon_type: CouponType,
    outcomes: Vec<(QueuedRequest, Result<Issued, AppError>)>,
}

impl Issuance {
    /// Consumes the queue until `stop`.
    pub async fn consume(&self, stop: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        let mut waiting = Waiting::new();
        while !stop.is_cancelled() {
            match self.consume_once(&mut waiting).await {
                Ok(()) => pause = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(%error, "could not consume issue requests; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume_once(&self, waiting: &mut Waiting) -> Result<(), AppError> {
        // Entries still waiting for their rows are this consumer's, read
        // again from its own pending list.
        let mut entries = if waiting.is_empty() { Vec::new() } else { self.queue.read_own(BATCH).await? };
        // Those no longer this consumer's (another claimed them, or Redis
        // lost their stream) are not waited for.
        let own: HashSet<(i64, String)> = entries.iter().map(Entry::key).collect();
        waiting.retain(|key, _| own.contains(key));
        let own = entries.len();
        entries.extend(self.queue.read_new(BATCH).await?);
        entries.extend(self.queue.claim_idle(self.patience.claim_after, BATCH).await?);
        let idle = entries.len() == own;
        let mut seen = HashSet::new();
        entries.retain(|entry| seen.insert(entry.key()));
        if !entries.is_empty() {
            self.process(entries, waiting).await?;
        }
        if idle {
            self.queue.until_queued(if waiting.is_empty() { IDLE_POLL } else { ROW_POLL }).await;
        }
        Ok(())
    }

    /// Issues a batch, then acknowledges it (but for entries still waiting
    /// for their rows) and settles its grants.
    async fn process(&self, entries: Vec<Entry>, waiting: &mut Waiting) -> Result<(), AppError> {
        // Tests stop a consumer here, its entries read and not acknowledged.
        fail::fail_point!("issuance::batch::read");
        let requests: Vec<QueuedRequest> = entries.iter().filter_map(|entry| entry.request.clone()).collect();
        let (decided, unwritten) = self.write(&requests).await?;
        let now = Instant::now();
        let mut done = Vec::new();
        for entry in entries {
            let unwritten = entry.request.as_ref().is_some_and(|request| unwritten.contains(&request.id));
            let since = *waiting.entry(entry.key()).or_insert(now);
            if unwritten && now.duration_since(since) < ROW_WAIT {
                continue;
            }
            if unwritten {
                tracing::warn!(entry = entry.id, "dropping a queued issue request that was never written down");
            }
            done.push(entry.key());
            waiting.remove(&entry.key());
        }
        self.queue.done(&done).await?;
        // Side by side: one connection carries them, pipelined.
        let settles = decided.iter().flat_map(|campaign| {
            campaign.outcomes.iter().map(|(request, outcome)| {
                let hold = CouponHold::granted(request.gate_grant);
                self.coupons.settle(&campaign.coupon_type, request.user_id, hold, outcome.as_ref())
            })
        });
        futures_util::future::join_all(settles).await;
        let finished = decided.iter().map(|campaign| campaign.outcomes.len()).sum::<usize>();
        metrics::counter!("shop_async_issue_processed_total").increment(finished as u64);
        Ok(())
    }

    /// Decides and writes the requests in one transaction; also returns the
    /// requests not written down (yet).
    async fn write(&self, requests: &[QueuedRequest]) -> Result<(Vec<Decided>, HashSet<Uuid>), AppError> {
        let mut by_campaign: BTreeMap<i64, Vec<&QueuedRequest>> = BTreeMap::new();
        for request in requests {
            by_campaign.entry(request.type_id).or_default().push(request);
        }
        let mut tx = Tx::begin(&self.db).await?;
        let mut decided = Vec::new();
        let mut unwritten = HashSet::new();
        let mut finished = Vec::new();
        for (type_id, requests) in by_campaign {
            let Some((coupon_type, issued)) = coupons::lock_type_with_count(&mut tx, type_id).await? else {
                tracing::warn!(type_id, "dropping issue requests for a campaign that does not exist");
                continue;
            };
            let ids: Vec<_> = requests.iter().map(|request| request.id).collect();
            let rows: HashMap<Uuid, bool> = issue_requests::lock_among(&mut tx, &ids).await?.into_iter().collect();
            let users: Vec<i64> = requests.iter().map(|request| request.user_id).collect();
            let mut held: HashSet<i64> = coupons::holders_among(&mut tx, type_id, &users).await?.into_iter().collect();
            let mut seen = HashSet::new();
            let mut left = coupon_type.terms.total_quantity - issued;
            let (mut issuing, mut refused) = (Vec::new(), Vec::new());
            for request in requests {
                match rows.get(&request.id) {
                    None => {
                        unwritten.insert(request.id);
                        continue;
                    }
                    // Finished already: a redelivered or requeued entry.
                    Some(false) => continue,
                    Some(true) if !seen.insert(request.id) => continue,
                    Some(true) => {}
                }
                if !held.insert(request.user_id) {
                    refused.push((request.clone(), AppError::CouponAlreadyIssued));
                } else if left > 0 {
                    left -= 1;
                    issuing.push(request.clone());
                } else {
                    refused.push((request.clone(), AppError::CouponSoldOut));
                }
            }
            let users: Vec<i64> = issuing.iter().map(|request| request.user_id).collect();
            let grants: Vec<Option<i64>> = issuing.iter().map(|request| request.gate_grant).collect();
            let written = if issuing.is_empty() {
                Vec::new()
            } else {
                coupons::issue_many(&mut tx, type_id, coupon_type.terms.valid_days, &users, &grants).await?
            };
            let mut campaign = Decided { coupon_type, outcomes: Vec::new() };
            for (request, coupon) in issuing.into_iter().zip(written) {
                finished.push(Outcome { request: request.clone(), issued: Ok(coupon.coupon_id) });
                campaign.outcomes.push((request, Ok(Issued { coupon, last_unit: false })));
            }
            for (request, refusal) in refused {
                let reason = if matches!(refusal, AppError::CouponSoldOut) { "SOLD_OUT" } else { "ALREADY_ISSUED" };
                finished.push(Outcome { request: request.clone(), issued: Err(reason) });
                campaign.outcomes.push((request, Err(refusal)));
            }
            decided.push(campaign);
        }
        if !finished.is_empty() {
            issue_requests::finish_many(&mut tx, &finished).await?;
        }
        tx.commit().await?;
        Ok((decided, unwritten))
    }

    /// Queues again the requests pending longer than `requeue_after`: their
    /// entry was lost with Redis, or never written. A request whose entry
    /// is still queued is then queued twice, and its second entry changes
    /// nothing.
    pub async fn requeue_stale(&self) -> Result<(), AppError> {
        let before = Utc::now() - self.patience.requeue_after;
        let stale = issue_requests::pending_since(&mut *self.db.read().await?, before, SWEEP).await?;
        self.queue.ensure_group().await?;
        for request in &stale {
            self.queue.add(request).await?;
        }
        if !stale.is_empty() {
            metrics::counter!("shop_async_issue_requeued_total").increment(stale.len() as u64);
            tracing::info!(requests = stale.len(), "requeued pending issue requests");
        }
        Ok(())
    }
}
