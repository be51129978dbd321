//! The campaigns this instance has seen sold out for good, with their
//! holders, so that the rest of a drop is answered without a Redis round
//! trip. The refusals of a sold-out campaign are most of a drop, and the
//! round trip was most of their cost (docs/performance.md).
//!
//! Why the gate's `SOLD_OUT` is final: the gate says it only when no unit is
//! left and no grant is pending. A unit comes back to the gate only when a
//! pending grant is settled by giving it back (a failed write, or the
//! reconciler returning a lost one); no grant is handed out while no unit
//! is left; and a campaign's total never changes nor does its issued count
//! fall. The gate is never pessimistic (see [`super::redis_gate`]), so
//! PostgreSQL has no unit left either, and its coupons are the holders for
//! good: read once, they answer `COUPON_ALREADY_ISSUED` to a holder and
//! `COUPON_SOLD_OUT` to anyone else, as the gate would.
//!
//! Bounded: at most [`MAX_HOLDERS`] holders are kept, over all campaigns;
//! the campaign sold out longest ago is forgotten first, and asks the gate
//! again until it is read anew.

use std::collections::{HashMap, VecDeque};
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
    /// Campaign ids, the one remembered first at the front.
    order: VecDeque<i64>,
    /// Holders kept, over all campaigns.
    kept: usize,
}

enum Holders {
    /// Being read from PostgreSQL; the gate answers meanwhile.
    Reading,
    /// Sorted.
    Known(Vec<i64>),
    /// Past the bound: the gate answers.
    TooMany,
}

impl SoldOut {
    /// The final refusal for the user, if the campaign is known sold out.
    pub fn refusal(&self, type_id: i64, user_id: i64) -> Option<AppError> {
        let campaigns = self.lock();
        match campaigns.by_id.get(&type_id)? {
            Holders::Reading | Holders::TooMany => None,
            Holders::Known(holders) if holders.binary_search(&user_id).is_ok() => Some(AppError::CouponAlreadyIssued),
            Holders::Known(_) => Some(AppError::CouponSoldOut),
        }
    }

    /// Marks the campaign as being read, if nobody reads or knows it yet:
    /// `true` tells the caller to read it and hand the holders to
    /// [`SoldOut::read`].
    pub fn start_reading(&self, type_id: i64) -> bool {
        let mut campaigns = self.lock();
        if campaigns.by_id.contains_key(&type_id) {
            return false;
        }
        campaigns.by_id.insert(type_id, Holders::Reading);
        campaigns.order.push_back(type_id);
        true
    }

    /// The campaign's holders as PostgreSQL has them, once sold out; `None`
    /// if the read failed or found units left, which leaves the campaign to
    /// the gate until the next read. More holders than the bound are never
    /// kept, nor read again.
    pub fn read(&self, type_id: i64, holders: Option<Vec<i64>>) {
        let holders = holders.map(|mut holders| {
            if holders.len() > MAX_HOLDERS {
                return Holders::TooMany;
            }
            holders.sort_unstable();
            Holders::Known(holders)
        });
        let mut campaigns = self.lock();
        campaigns.forget(type_id);
        let Some(holders) = holders else { return };
        if let Holders::Known(known) = &holders {
            while campaigns.kept + known.len() > MAX_HOLDERS {
                let Some(oldest) = campaigns.order.front().copied() else { break };
                campaigns.forget(oldest);
            }
            campaigns.kept += known.len();
        }
        campaigns.by_id.insert(type_id, holders);
        campaigns.order.push_back(type_id);
    }

    /// A poisoned lock still holds consistent data: every change under it
    /// is made after anything that could panic.
    fn lock(&self) -> std::sync::MutexGuard<'_, Campaigns> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Campaigns {
    fn forget(&mut self, type_id: i64) {
        if let Some(Holders::Known(holders)) = self.by_id.remove(&type_id) {
            self.kept -= holders.len();
        }
        self.order.retain(|&id| id != type_id);
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

    #[test]
    fn a_campaign_read_sold_out_refuses_holders_as_holders_and_others_as_sold_out() {
        let sold_out = SoldOut::default();
        assert!(sold_out.refusal(1, 7).is_none());
        assert!(sold_out.start_reading(1));
        assert!(!sold_out.start_reading(1), "one read at a time");
        assert!(sold_out.refusal(1, 7).is_none(), "the gate answers while it is read");
        sold_out.read(1, Some(vec![9, 7, 3]));
        assert!(is_held(sold_out.refusal(1, 7)));
        assert!(is_sold_out(sold_out.refusal(1, 8)));
        assert!(sold_out.refusal(2, 7).is_none());
        assert!(!sold_out.start_reading(1), "known");
    }

    #[test]
    fn a_failed_read_leaves_the_campaign_to_the_gate_and_to_a_later_read() {
        let sold_out = SoldOut::default();
        assert!(sold_out.start_reading(1));
        sold_out.read(1, None);
        assert!(sold_out.refusal(1, 7).is_none());
        assert!(sold_out.start_reading(1));
    }

    #[test]
    fn the_campaign_remembered_first_is_forgotten_first_to_keep_the_bound() {
        let sold_out = SoldOut::default();
        let half: Vec<i64> = (0..(MAX_HOLDERS / 2) as i64).collect();
        for type_id in 1..=3 {
            assert!(sold_out.start_reading(type_id));
            sold_out.read(type_id, Some(half.clone()));
        }
        assert!(sold_out.refusal(1, 0).is_none(), "forgotten");
        assert!(is_held(sold_out.refusal(2, 0)));
        assert!(is_held(sold_out.refusal(3, 0)));
        assert_eq!(sold_out.lock().kept, MAX_HOLDERS);
        // A campaign larger than the bound is never kept nor read again,
        // and costs no other.
        assert!(sold_out.start_reading(4));
        sold_out.read(4, Some((0..MAX_HOLDERS as i64 + 1).collect()));
        assert!(sold_out.refusal(4, 0).is_none());
        assert!(!sold_out.start_reading(4));
        assert!(is_held(sold_out.refusal(3, 0)));
    }
}
