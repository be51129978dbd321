//! Waiting between attempts after a lost race.

use std::time::Duration;

const BASE: Duration = Duration::from_millis(1);

/// "Full jitter" exponential backoff: a uniform wait in `[0, min(cap, BASE·2^attempt)]`.
/// Randomness spreads the losers of one race apart so they do not collide
/// again in lockstep; the cap bounds the wait of a request that lost often.
pub fn full_jitter(attempt: u32, cap: Duration) -> Duration {
    let ceiling = BASE.saturating_mul(1 << attempt.min(16)).min(cap);
    Duration::from_micros(rand::random_range(0..=ceiling.as_micros() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let cap = Duration::from_millis(50);
        for _ in 0..100 {
            assert!(full_jitter(0, cap) <= BASE);
            assert!(full_jitter(3, cap) <= BASE * 8);
            assert!(full_jitter(40, cap) <= cap);
        }
    }
}
