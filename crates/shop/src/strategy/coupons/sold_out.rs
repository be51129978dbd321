//! The campaigns this instance has seen sold out for good, with their
//! holders, so that the rest of a drop is answered without a Redis round
//! trip. The refusals of a sold-out campaign are most of a drop, and the
//! round trip was over a third of the shop's CPU for each (docs/performance.md).
//!
//! Why it is final: the gate answers `SOLD_OUT` only when no unit is left
//! and no grant is pending, and the holders are then read from PostgreSQL
//! and kept only if PostgreSQL, in the same statement, has no unit left
//! either. A campaign's total never changes and its issued count never
//! falls, so from then on nobody can be issued one: the holders are final,
//! and answer `COUPON_ALREADY_ISSUED` to a holder and `COUPON_SOLD_OUT` to
//! anyone else. (The gate agrees, but for a holder it never saw, such as
//! a coupon written while Redis was away: the gate calls that holder sold
//! out, the holders read here say already issued, which is the truth. An
//! instance that has not read them yet answers as the gate does.)
//!
//! Bounded: at most [`MAX_HOLDERS`] holders are kept, over all campaigns. A
//! campaign whose total is larger is never read. Room is made by forgetting
//! campaigns nobody asked for in [`IDLE`], the longest idle first; a
//! campaign still asked for is never forgotten for a newcomer, which is
//! left to the gate and read again after [`RETRY`], so that two large
//! drops at once do not take turns being read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::AppError;

/// Holders kept over all campaigns: 8 MB of user ids.
pub const MAX_HOLDERS: usize = 1_000_000;
/// A campaign not asked for this long may be forgotten to make room.
pub const IDLE: Duration = Duration::from_secs(60);
/// How long a campaign that could not be kept is left to the gate before
/// it is read again: a read that failed, found units left, or found no
/// room.
pub const RETRY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct SoldOut {
    inner: Mutex<Campaigns>,
}

#[derive(Default)]
struct Campaigns {
    by_id: HashMap<i64, Holders>,
    /// Holders kept, over all campaigns.
    kept: usize,
}

enum Holders {
    /// Being read from PostgreSQL; the gate answers meanwhile.
    Reading,
    Known {
        /// Sorted.
        holders: Vec<i64>,
        last_asked: Instant,
    },
    /// Left to the gate until then.
    NotKept { until: Instant },
}

impl SoldOut {
    /// The final refusal for the user, if the campaign is known sold out.
    pub fn refusal(&self, type_id: i64, user_id: i64) -> Option<AppError> {
        let mut campaigns = self.lock();
        let Some(Holders::Known { holders, last_asked }) = campaigns.by_id.get_mut(&type_id) else {
            return None;
        };
        *last_asked = Instant::now();
        Some(if holders.binary_search(&user_id).is_ok() {
            AppError::CouponAlreadyIssued
        } else {
            AppError::CouponSoldOut
        })
    }

    /// Marks the campaign as being read, if it fits the bound and nobody
    /// reads or knows it: `true` tells the caller to read it and hand the
    /// outcome to [`SoldOut::read`].
    pub fn start_reading(&self, type_id: i64, total: i64) -> bool {
        if !usize::try_from(total).is_ok_and(|total| total <= MAX_HOLDERS) {
            return false;
        }
        let mut campaigns = self.lock();
        match campaigns.by_id.get(&type_id) {
            None => {}
            Some(Holders::NotKept { until }) if *until <= Instant::now() => {}
            Some(_) => return false,
        }
        campaigns.by_id.insert(type_id, Holders::Reading);
        true
    }

    /// Ends the campaign's read: its holders as PostgreSQL has them once
    /// sold out, or `None` if the read failed or found units left. Either
    /// way a campaign not kept is left to the gate for [`RETRY`].
    pub fn read(&self, type_id: i64, holders: Option<Vec<i64>>) {
        let holders = holders.map(|mut holders| {
            holders.sort_unstable();
            holders
        });
        let mut campaigns = self.lock();
        if !matches!(campaigns.by_id.get(&type_id), Some(Holders::Reading)) {
            return;
        }
        let now = Instant::now();
        let entry = match holders {
            Some(holders) if campaigns.make_room(holders.len(), now) => {
                campaigns.kept += holders.len();
                Holders::Known { holders, last_asked: now }
            }
            _ => Holders::NotKept { until: now + RETRY },
        };
        campaigns.by_id.insert(type_id, entry);
    }

    /// A poisoned lock still holds consistent data: nothing done under it
    /// can panic between two changes.
    fn lock(&self) -> std::sync::MutexGuard<'_, Campaigns> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Campaigns {
    /// Forgets idle campaigns, the longest idle first, until `needed` more
    /// holders fit; `false` if they cannot, and then forgets none.
    fn make_room(&mut self, needed: usize, now: Instant) -> bool {
        if self.kept + needed <= MAX_HOLDERS {
            return true;
        }
        let mut idle: Vec<(Instant, i64, usize)> = self
            .by_id
            .iter()
            .filter_map(|(&type_id, holders)| match holders {
                Holders::Known { holders, last_asked } if now.duration_since(*last_asked) >= IDLE => {
                    Some((*last_asked, type_id, holders.len()))
                }
                _ => None,
            })
            .collect();
        let freeable: usize = idle.iter().map(|&(_, _, len)| len).sum();
        if self.kept - freeable + needed > MAX_HOLDERS {
            return false;
        }
        idle.sort_unstable();
        for (_, type_id, len) in idle {
            if self.kept + needed <= MAX_HOLDERS {
                break;
            }
            self.by_id.remove(&type_id);
            self.kept -= len;
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

    /// Makes the campaign look last asked for `ago` ago.
    fn asked_ago(sold_out: &SoldOut, type_id: i64, ago: Duration) {
        if let Some(Holders::Known { last_asked, .. }) = sold_out.lock().by_id.get_mut(&type_id) {
            *last_asked = Instant::now() - ago;
        }
    }

    /// Makes a campaign left to the gate due for another read.
    fn retry_due(sold_out: &SoldOut, type_id: i64) {
        if let Some(Holders::NotKept { until }) = sold_out.lock().by_id.get_mut(&type_id) {
            *until = Instant::now();
        }
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
    fn a_failed_read_leaves_the_campaign_to_the_gate_until_it_is_read_again() {
        let sold_out = SoldOut::default();
        assert!(sold_out.start_reading(1, 3));
        sold_out.read(1, None);
        assert!(sold_out.refusal(1, 7).is_none());
        assert!(!sold_out.start_reading(1, 3), "not at once");
        retry_due(&sold_out, 1);
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

    /// Campaigns 1 and 2, half the bound each: no room left.
    fn two_halves() -> SoldOut {
        let sold_out = SoldOut::default();
        remember(&sold_out, 1, (0..HALF).collect());
        remember(&sold_out, 2, (0..HALF).collect());
        sold_out
    }

    #[test]
    fn room_is_made_from_idle_campaigns_the_longest_idle_first() {
        let sold_out = two_halves();
        asked_ago(&sold_out, 1, IDLE * 3);
        asked_ago(&sold_out, 2, IDLE * 2);
        remember(&sold_out, 3, (0..HALF).collect());
        assert!(sold_out.refusal(1, 0).is_none(), "the longest idle is forgotten");
        assert!(is_held(sold_out.refusal(2, 0)), "one was enough");
        assert!(is_held(sold_out.refusal(3, 0)));
        assert_eq!(sold_out.lock().kept, MAX_HOLDERS);
    }

    #[test]
    fn a_campaign_still_asked_for_is_not_forgotten_for_a_newcomer() {
        let sold_out = two_halves();
        asked_ago(&sold_out, 1, IDLE * 2);
        // A newcomer needing both halves: only one is idle, so none goes.
        assert!(sold_out.start_reading(3, MAX_HOLDERS as i64));
        sold_out.read(3, Some((0..MAX_HOLDERS as i64).collect()));
        assert!(sold_out.refusal(3, 0).is_none(), "left to the gate");
        assert!(is_held(sold_out.refusal(1, 0)), "nothing forgotten for nothing");
        assert!(is_held(sold_out.refusal(2, 0)));
        assert!(!sold_out.start_reading(3, MAX_HOLDERS as i64), "not read again at once");
    }
}
