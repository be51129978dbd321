//! Point charges: the amount rule and the daily/monthly charge-count limits.

use chrono::{Datelike, NaiveDate};

use super::ValidationError;

/// 1,000 to 1,000,000 won, in steps of 1,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeAmount(i64);

impl ChargeAmount {
    pub fn parse(won: i64) -> Result<Self, ValidationError> {
        if !(1_000..=1_000_000).contains(&won) || won % 1_000 != 0 {
            return Err(ValidationError::new("amount", "must be a multiple of 1,000 between 1,000 and 1,000,000"));
        }
        Ok(Self(won))
    }

    pub fn won(self) -> i64 {
        self.0
    }
}

/// Successful charges allowed per user; `0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeLimits {
    pub daily: u32,
    pub monthly: u32,
}

/// The calendar day of a charge in the shop's time zone, and its month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeDay {
    pub day: NaiveDate,
    pub month: NaiveDate,
}

impl ChargeDay {
    pub fn new(day: NaiveDate) -> Self {
        let month = day.with_day(1).expect("every month has a first day");
        Self { day, month }
    }
}

/// How many charges a wallet has had on its last charge day and month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChargeCounters {
    pub day: Option<NaiveDate>,
    pub on_day: i32,
    pub month: Option<NaiveDate>,
    pub in_month: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChargeLimitExceeded {
    #[error("the daily limit of {0} charges is used up")]
    Daily(u32),
    #[error("the monthly limit of {0} charges is used up")]
    Monthly(u32),
}

impl ChargeCounters {
    /// The counters after one more charge on `when`, or which limit forbids it.
    ///
    /// Counters never go back: a charge stamped with a day before the last
    /// one counted (servers whose clocks disagree, a request that waited
    /// across midnight) counts on that later day, so an old stamp cannot
    /// reset a newer day's count.
    pub fn after_charge(self, when: ChargeDay, limits: ChargeLimits) -> Result<Self, ChargeLimitExceeded> {
        let when = match self.day {
            Some(day) if day > when.day => ChargeDay::new(day),
            _ => when,
        };
        let on_day = if self.day == Some(when.day) { self.on_day } else { 0 };
        let in_month = if self.month == Some(when.month) { self.in_month } else { 0 };
        if limits.daily != 0 && on_day >= limits.daily as i32 {
            return Err(ChargeLimitExceeded::Daily(limits.daily));
        }
        if limits.monthly != 0 && in_month >= limits.monthly as i32 {
            return Err(ChargeLimitExceeded::Monthly(limits.monthly));
        }
        Ok(Self { day: Some(when.day), on_day: on_day + 1, month: Some(when.month), in_month: in_month + 1 })
    }
}

/// A user's balance, as every points endpoint answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointBalance {
    pub user_id: i64,
    pub balance: i64,
}

/// What a ledger row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum LedgerKind {
    Charge,
    Use,
    Refund,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "CHARGE",
            Self::Use => "USE",
            Self::Refund => "REFUND",
        }
    }

    /// Kinds as stored by the `point_ledger_kind_check` constraint.
    pub fn from_stored(value: &str) -> Self {
        match value {
            "USE" => Self::Use,
            "REFUND" => Self::Refund,
            _ => Self::Charge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> ChargeDay {
        ChargeDay::new(NaiveDate::from_ymd_opt(y, m, d).unwrap())
    }

    const LIMITS: ChargeLimits = ChargeLimits { daily: 3, monthly: 10 };

    #[test]
    fn amount_rule() {
        for ok in [1_000, 2_000, 999_000, 1_000_000] {
            assert_eq!(ChargeAmount::parse(ok).unwrap().won(), ok);
        }
        for bad in [0, -1_000, 999, 1_500, 1_001_000, i64::MAX] {
            assert!(ChargeAmount::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn daily_limit_counts_within_one_day() {
        let mut counters = ChargeCounters::default();
        for _ in 0..3 {
            counters = counters.after_charge(day(2026, 11, 25), LIMITS).unwrap();
        }
        assert_eq!(counters.after_charge(day(2026, 11, 25), LIMITS), Err(ChargeLimitExceeded::Daily(3)));
        let next_day = counters.after_charge(day(2026, 11, 26), LIMITS).unwrap();
        assert_eq!((next_day.on_day, next_day.in_month), (1, 4));
    }

    #[test]
    fn monthly_limit_spans_days_and_resets_with_the_month() {
        let mut counters = ChargeCounters::default();
        for d in 1..=10 {
            counters = counters.after_charge(day(2026, 11, d), LIMITS).unwrap();
        }
        assert_eq!(counters.after_charge(day(2026, 11, 30), LIMITS), Err(ChargeLimitExceeded::Monthly(10)));
        let december = counters.after_charge(day(2026, 12, 1), LIMITS).unwrap();
        assert_eq!((december.on_day, december.in_month), (1, 1));
    }

    #[test]
    fn an_earlier_stamp_counts_on_the_later_day_and_never_resets_it() {
        let mut counters = ChargeCounters::default();
        for _ in 0..3 {
            counters = counters.after_charge(day(2026, 12, 1), LIMITS).unwrap();
        }
        assert_eq!(counters.after_charge(day(2026, 11, 30), LIMITS), Err(ChargeLimitExceeded::Daily(3)));
        let fresh = ChargeCounters::default().after_charge(day(2026, 12, 1), LIMITS).unwrap();
        let late = fresh.after_charge(day(2026, 11, 30), LIMITS).unwrap();
        assert_eq!((late.day, late.on_day, late.month, late.in_month), (fresh.day, 2, fresh.month, 2));
    }

    #[test]
    fn zero_means_unlimited() {
        let unlimited = ChargeLimits { daily: 0, monthly: 0 };
        let mut counters = ChargeCounters::default();
        for _ in 0..100 {
            counters = counters.after_charge(day(2026, 1, 31), unlimited).unwrap();
        }
        assert_eq!(counters.on_day, 100);
    }
}
