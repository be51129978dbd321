//! Which wallets or products are hot on this instance, for the `adaptive`
//! strategies: a write goes to the instance's batch (see
//! [`crate::batcher`]) when one of its rows is hot, when the batch is
//! already at work, or when the instance already writes a few on their
//! own; otherwise it is written on its request's own task with `atomic`'s
//! one statement, in parallel with the others, where the batch would have
//! written them one after another.
//!
//! A row turns hot when a second write of it is in flight here at once,
//! and stays hot until [`COOLING`] has passed without another overlap, so
//! a row that queues now and then does not flap between the two paths.
//! Both paths take the row's lock in PostgreSQL for their statement, so
//! a write alone and a batch that meet on one row (here, or from two
//! instances, which decide separately) queue on it as two `atomic` writes
//! would: the route decides speed, never correctness.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use metrics::Counter;

/// How long a row stays hot after its last overlap.
const COOLING: Duration = Duration::from_secs(1);

/// Writes on their own task at once, at most, before the others go to
/// the batch. Written alone, each is a transaction and a WAL flush; a
/// batch of many is one of each. Under 64 connections over 64 wallets a
/// batch made charges about three times as fast as `atomic`
/// (docs/benchmarks.md), and writes alone beside a working batch cost
/// PostgreSQL half as much CPU again per charge and the instance 12 %
/// of its charges (`shop-bench run charge-storm --wallets 64`, alternated),
/// so writes go alone only while the batch is idle, and a few at most.
const ALONE_AT_ONCE: usize = 4;

/// Rows remembered before a sweep forgets those cooled and idle.
const SWEEP_OVER: usize = 1024;

pub struct HotRows {
    state: Mutex<State>,
    routed_alone: Counter,
    routed_together: Counter,
}

#[derive(Default)]
struct State {
    rows: HashMap<i64, Row>,
    /// Writes in flight on their own task.
    alone: usize,
    /// Writes in flight through the batch.
    together: usize,
    /// Rows remembered after the last sweep: the next runs at twice as many.
    swept_at: usize,
}

#[derive(Default)]
struct Row {
    in_flight: u32,
    hot_until: Option<Instant>,
}

impl Row {
    fn hot(&self, now: Instant) -> bool {
        self.hot_until.is_some_and(|until| until > now)
    }
}

/// A write of some rows in flight; dropped once written.
pub struct Passage<'a> {
    hot: &'a HotRows,
    ids: Vec<i64>,
    together: bool,
}

impl Passage<'_> {
    /// Whether the write goes to the batch.
    pub fn together(&self) -> bool {
        self.together
    }
}

impl HotRows {
    /// `rows` (wallets, products) labels the count of writes by route.
    pub fn new(rows: &'static str) -> Self {
        let routed = |route| metrics::counter!("shop_adaptive_writes_total", "rows" => rows, "route" => route);
        Self { state: Mutex::default(), routed_alone: routed("alone"), routed_together: routed("together") }
    }

    /// A write of `ids` begins: its route, held until it is written.
    pub fn enter(&self, ids: impl IntoIterator<Item = i64>) -> Passage<'_> {
        let ids: Vec<i64> = ids.into_iter().collect();
        let now = Instant::now();
        let mut state = self.lock();
        let mut together = state.together > 0 || state.alone >= ALONE_AT_ONCE;
        for &id in &ids {
            let row = state.rows.entry(id).or_default();
            row.in_flight += 1;
            if row.in_flight >= 2 {
                row.hot_until = Some(now + COOLING);
            }
            together |= row.hot(now);
        }
        if together {
            state.together += 1;
        } else {
            state.alone += 1;
        }
        state.sweep(now);
        drop(state);
        if together { &self.routed_together } else { &self.routed_alone }.increment(1);
        Passage { hot: self, ids, together }
    }

    /// The counts stay whole whatever panics: each change is one step.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.lock().rows.len()
    }
}

impl State {
    /// Forgets the rows with nothing in flight that have cooled, once there
    /// are twice as many as the last sweep left (and at least
    /// [`SWEEP_OVER`]): the map stays the size of the rows recently hot.
    fn sweep(&mut self, now: Instant) {
        if self.rows.len() < SWEEP_OVER.max(2 * self.swept_at) {
            return;
        }
        self.rows.retain(|_, row| row.in_flight > 0 || row.hot(now));
        self.swept_at = self.rows.len();
    }
}

impl Drop for Passage<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut state = self.hot.lock();
        if self.together {
            state.together -= 1;
        } else {
            state.alone -= 1;
        }
        for id in &self.ids {
            if let Some(row) = state.rows.get_mut(id) {
                row.in_flight -= 1;
                if row.in_flight == 0 && !row.hot(now) {
                    state.rows.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_written_once_at_a_time_stays_alone() {
        let hot = HotRows::new("test");
        for _ in 0..10 {
            assert!(!hot.enter([7]).together());
        }
        assert_eq!(hot.remembered(), 0);
    }

    #[test]
    fn a_second_write_in_flight_turns_the_row_hot_until_it_cools() {
        let hot = HotRows::new("test");
        let first = hot.enter([7]);
        let second = hot.enter([7]);
        assert!(!first.together());
        assert!(second.together(), "the overlap sends the second write to the batch");
        drop((first, second));
        assert!(hot.enter([7]).together(), "a row stays hot while it cools");
        assert!(!hot.enter([8]).together(), "other rows are not");
        let now = Instant::now();
        hot.lock().rows.get_mut(&7).unwrap().hot_until = Some(now);
        assert!(!hot.enter([7]).together(), "cooled, it is written alone again");
    }

    #[test]
    fn an_order_over_one_hot_product_goes_to_the_batch() {
        let hot = HotRows::new("test");
        let _first = hot.enter([3]);
        let _second = hot.enter([3]);
        assert!(hot.enter([1, 3, 5]).together());
    }

    #[test]
    fn while_the_batch_works_every_write_joins_it() {
        let hot = HotRows::new("test");
        let (_first, second) = (hot.enter([1]), hot.enter([1]));
        assert!(second.together());
        assert!(hot.enter([2]).together(), "a quiet row joins the batch at work");
        drop(second);
        assert!(!hot.enter([2]).together(), "and is written alone once it is idle");
    }

    #[test]
    fn past_a_few_writes_alone_the_rest_go_to_the_batch() {
        let hot = HotRows::new("test");
        let alone: Vec<Passage> = (0..ALONE_AT_ONCE as i64).map(|id| hot.enter([id])).collect();
        assert!(alone.iter().all(|passage| !passage.together()));
        assert!(hot.enter([100]).together());
        drop(alone);
        assert!(!hot.enter([100]).together());
    }

    #[test]
    fn rows_cooled_and_idle_are_forgotten() {
        let hot = HotRows::new("test");
        for id in 1..SWEEP_OVER as i64 {
            let (first, second) = (hot.enter([id]), hot.enter([id]));
            drop((first, second));
        }
        assert_eq!(hot.remembered(), SWEEP_OVER - 1, "hot rows are remembered while they cool");
        let now = Instant::now();
        for row in hot.lock().rows.values_mut() {
            row.hot_until = Some(now);
        }
        let _ = hot.enter([-1]);
        assert!(hot.remembered() <= 1);
    }
}
