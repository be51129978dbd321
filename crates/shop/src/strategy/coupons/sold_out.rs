//! The campaigns this instance has seen sold out for good, with their
//! holders, so that the rest of a drop is answered without a Redis round
//! trip. The refusals of a sold-out campaign are most of a drop, and the
//! round trip was most of their cost (docs/performance.md).
//!
//! Why it is final: the gate answers `SOLD_OUT` only when no unit is left
//! and no grant is pending, and the holders are then read from PostgreSQL
//! and kept only if PostgreSQL, in the same statement, has no unit left
//! either. A campaign's total never changes and its issued count never
//! falls, so from then on nobody can be issued one: the holders are final,
//! and answer `COUPON_ALREADY_ISSUED` to a holder and `COUPON_SOLD_OUT` to
//! anyone else. (The gate agrees, but for a holder it never saw, such as
//! a coupon written while Redis was away: the gate calls that holder sold
//! out, the holders read here say already issued, which is the truth.)
//!
//! Bounded: at most [`MAX_HOLDERS`] holders are kept, over all campaigns; a
//! campaign whose total is larger is never read, and to make room the
//! campaign answered from longest ago is forgotten, to be read again if it
//! is asked for again.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::AppError;

/// Holders kept over all campaigns: 8 MB of user ids.
pub const MAX_HOLDERS: usize = 1_000_000;

#[derive(Default)]
pub struct SoldOut {
    inner: Mutex<Campaigns>,
}

#[derive(Default)]
struct Campaigns {
    by_id: HashMap<i64, Holders>,
    /// Holders kept, over all campaigns.
    kept: usize,
    /// Answers given so far: the clock of `last_answered`.
    answers: u64,
}

enum Holders {
    /// Being read from PostgreSQL; the gate answers meanwhile.
    Reading,
    Known {
        /// Sorted.
        holders: Vec<i64>,
        last_answered: u64,
    },
}

impl SoldOut {
    /// The final refusal for the user, if the campaign is known sold out.
    pub fn refusal(&self, type_id: i64, user_id: i64) -> Option<AppError> {
        let mut campaigns = self.lock();
        campaigns.answers += 1;
        let now = campaigns.answers;
        let Some(Holders::Known { holders, last_answered }) = campaigns.by_id.get_mut(&type_id) else {
            return None;
        };
        *last_answered = now;
        Some(if holders.binary_search(&user_id).is_ok() {
            AppError::CouponAlreadyIssued
        } else {
            AppError::CouponSoldOut
        })
    }

    /// Marks the campaign as being read, if it fits the bound and nobody
    /// reads or knows it yet: `true` tells the caller to read it and hand
    /// the holders to [`SoldOut::read`].
    pub fn start_reading(&self, type_id: i64, total: i64) -> bool {
        if !usize::try_from(total).is_ok_and(|total| total <= MAX_HOLDERS) {
            return false;
        }
        let mut campaigns = self.lock();
        if campaigns.by_id.contains_key(&type_id) {
            return false;
        }
        campaigns.by_id.insert(type_id, Holders::Reading);
        true
    }

    /// Ends the campaign's read: its holders as PostgreSQL has them once
    /// sold out, or `None` if the read failed or found units left, which
    /// leaves the campaign to the gate until the next read.
    pub fn read(&self, type_id: i64, holders: Option<Vec<i64>>) {
        let holders = holders.filter(|holders| holders.len() <= MAX_HOLDERS).map(|mut holders| {
            holders.sort_unstable();
            holders
        });
        let mut campaigns = self.lock();
        if !matches!(campaigns.by_id.get(&type_id), Some(Holders::Reading)) {
            return;
        }
        campaigns.by_id.remove(&type_id);
        let Some(holders) = holders else { return };
        while campaigns.kept + holders.len() > MAX_HOLDERS && campaigns.forget_least_recently_answered() {}
        campaigns.kept += holders.len();
        let last_answered = campaigns.answers;
        campaigns.by_id.insert(type_id, Holders::Known { holders, last_answered });
    }

    /// A poisoned lock still holds consistent data: nothing done under it
    /// can panic between two changes.
    fn lock(&self) -> std::sync::MutexGuard<'_, Campaigns> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Campaigns {
    /// Forgets the known campaign answered from longest ago; `false` if
    /// none is known. Campaigns being read are left to their reads.
    fn forget_least_recently_answered(&mut self) -> bool {
        let oldest = self
            .by_id
            .iter()
            .filter_map(|(&type_id, holders)| match holders {
                Holders::Known { last_answered, .. } => Some((*last_answered, type_id)),
                Holders::Reading => None,
            })
            .min();
        let Some((_, type_id)) = oldest else { return false };
        if let Some(Holders::Known { holders, .. }) = self.by_id.remove(&type_id) {
            self.kept -= holders.len();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_sold_out(refusal: Option<AppError>) -> bool {
        matches!(refusal, Some(AppError::CouponSoldOut))
    }

    fn is_held(refusal: Option<AppError>) -> bool {
        matches!(refusal, Some(AppError::CouponAlreadyIssued))
    }

    const HALF: i64 = MAX_HOLDERS as i64 / 2;

    fn remember(sold_out: &SoldOut, type_id: i64, holders: Vec<i64>) {
        assert!(sold_out.start_reading(type_id, holders.len() as i64));
        sold_out.read(type_id, Some(holders));
    }

    #[test]
    fn a_campaign_read_sold_out_refuses_holders_as_holders_and_others_as_sold_out() {
        let sold_out = SoldOut::default();
        assert!(sold_out.refusal(1, 7).is_none());
        assert!(sold_out.start_reading(1, 3));
        assert!(!sold_out.start_reading(1, 3), "one read at a time");
        assert!(sold_out.refusal(1, 7).is_none(), "the gate answers while it is read");
        sold_out.read(1, Some(vec![9, 7, 3]));
        assert!(is_held(sold_out.refusal(1, 7)));
        assert!(is_sold_out(sold_out.refusal(1, 8)));
        assert!(sold_out.refusal(2, 7).is_none(), "another campaign is the gate's");
        assert!(!sold_out.start_reading(1, 3), "known");
    }

    #[test]
    fn a_failed_read_leaves_the_campaign_to_the_gate_and_to_a_later_read() {
        let sold_out = SoldOut::default();
        assert!(sold_out.start_reading(1, 3));
        sold_out.read(1, None);
        assert!(sold_out.refusal(1, 7).is_none());
        assert!(sold_out.start_reading(1, 3));
    }

    #[test]
    fn a_read_that_is_not_the_campaigns_own_changes_nothing() {
        let sold_out = SoldOut::default();
        remember(&sold_out, 1, vec![7]);
        sold_out.read(1, None);
        assert!(is_held(sold_out.refusal(1, 7)), "a stray failed read forgets nothing");
        sold_out.read(2, Some(vec![7]));
        assert!(sold_out.refusal(2, 7).is_none(), "nor does a read nobody started remember");
    }

    #[test]
    fn a_campaign_larger_than_the_bound_is_never_read() {
        let sold_out = SoldOut::default();
        assert!(!sold_out.start_reading(1, MAX_HOLDERS as i64 + 1));
        assert!(sold_out.start_reading(2, MAX_HOLDERS as i64));
    }

    #[test]
    fn the_campaign_answered_from_longest_ago_is_forgotten_to_keep_the_bound() {
        let sold_out = SoldOut::default();
        remember(&sold_out, 1, (0..HALF).collect());
        remember(&sold_out, 2, (0..HALF).collect());
        // Campaign 1 is still asked for; 2 is not.
        assert!(is_held(sold_out.refusal(1, 0)));
        assert!(sold_out.start_reading(4, HALF));
        assert!(sold_out.start_reading(3, HALF));
        sold_out.read(3, Some((0..HALF).collect()));
        assert!(sold_out.refusal(2, 0).is_none(), "forgotten");
        assert!(is_held(sold_out.refusal(1, 0)));
        assert!(is_held(sold_out.refusal(3, 0)));
        assert_eq!(sold_out.lock().kept, MAX_HOLDERS);
        assert!(!sold_out.start_reading(4, HALF), "a read under way is not forgotten");
    }
}
