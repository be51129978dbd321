//! Coupon campaigns: their codes and terms, the issue window, what a coupon
//! is worth on an order, and the status a holder sees.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ValidationError;

/// `^[A-Z0-9_]{1,64}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CouponCode(String);

impl CouponCode {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let valid = (1..=64).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(ValidationError::new("couponType", "must match ^[A-Z0-9_]{1,64}$"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A code as stored: it passed [`CouponCode::parse`] when its campaign
    /// was created.
    pub fn from_stored(code: String) -> Self {
        Self(code)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum CouponKind {
    /// `value` percent off.
    Percent,
    /// `value` won off.
    Fixed,
}

impl CouponKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Percent => "PERCENT",
            Self::Fixed => "FIXED",
        }
    }

    /// Kinds as stored by the `coupon_types_value_check` constraint.
    pub fn from_stored(value: &str) -> Self {
        match value {
            "PERCENT" => Self::Percent,
            _ => Self::Fixed,
        }
    }
}

/// The terms of a campaign, validated together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponTerms {
    pub code: CouponCode,
    pub kind: CouponKind,
    pub value: i64,
    pub min_order_amount: i64,
    pub total_quantity: i64,
    pub valid_days: i32,
    pub issue_starts_at: Option<DateTime<Utc>>,
    pub issue_ends_at: Option<DateTime<Utc>>,
}

impl CouponTerms {
    pub fn validate(self) -> Result<Self, ValidationError> {
        let value_ok = match self.kind {
            CouponKind::Percent => (1..=100).contains(&self.value),
            CouponKind::Fixed => (1..=1_000_000).contains(&self.value),
        };
        if !value_ok {
            return Err(ValidationError::new("value", "must be 1–100 for PERCENT and 1–1,000,000 for FIXED"));
        }
        if !(0..=100_000_000).contains(&self.min_order_amount) {
            return Err(ValidationError::new("minOrderAmount", "must be between 0 and 100,000,000"));
        }
        if !(1..=10_000_000).contains(&self.total_quantity) {
            return Err(ValidationError::new("totalQuantity", "must be between 1 and 10,000,000"));
        }
        if !(1..=365).contains(&self.valid_days) {
            return Err(ValidationError::new("validDays", "must be between 1 and 365"));
        }
        if let (Some(starts), Some(ends)) = (self.issue_starts_at, self.issue_ends_at)
            && starts >= ends
        {
            return Err(ValidationError::new("issueEndsAt", "must be after issueStartsAt"));
        }
        Ok(self)
    }
}

/// Why the issue window refuses a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotOpen;

/// A campaign as issuance and orders need it; immutable once created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponType {
    pub id: i64,
    pub terms: CouponTerms,
}

impl CouponType {
    /// Open from `issue_starts_at` (inclusive) to `issue_ends_at` (exclusive).
    pub fn check_window(&self, now: DateTime<Utc>) -> Result<(), NotOpen> {
        let started = self.terms.issue_starts_at.is_none_or(|starts| now >= starts);
        let not_ended = self.terms.issue_ends_at.is_none_or(|ends| now < ends);
        if started && not_ended { Ok(()) } else { Err(NotOpen) }
    }
}

/// The discount on an order of `total` won: a percentage rounded down, or a
/// fixed amount, never more than half the total (rounded down).
pub fn discount(kind: CouponKind, value: i64, total: i64) -> i64 {
    let raw = match kind {
        CouponKind::Percent => total * value / 100,
        CouponKind::Fixed => value,
    };
    raw.min(total / 2)
}

/// What a holder sees. `Expired` is derived: an available coupon past its
/// expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum CouponStatus {
    Available,
    /// Held by a pending order.
    Reserved,
    Used,
    Expired,
}

impl CouponStatus {
    pub fn of(stored: &str, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        match stored {
            "RESERVED" => Self::Reserved,
            "USED" => Self::Used,
            _ if expires_at <= now => Self::Expired,
            _ => Self::Available,
        }
    }
}

/// A coupon as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponView {
    pub coupon_id: i64,
    pub user_id: i64,
    /// The campaign code.
    pub coupon_type: String,
    pub kind: CouponKind,
    /// Percent off (0 for FIXED).
    pub discount_rate: i64,
    /// Won off (0 for PERCENT).
    pub discount_amount: i64,
    pub min_order_amount: i64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub is_used: bool,
    pub status: CouponStatus,
}

/// What a coupon is worth and where it comes from: the campaign terms a
/// holder sees on each coupon.
#[derive(Debug, Clone, Copy)]
pub struct CouponFace<'a> {
    pub code: &'a str,
    pub kind: CouponKind,
    pub value: i64,
    pub min_order_amount: i64,
}

impl<'a> From<&'a CouponType> for CouponFace<'a> {
    fn from(coupon_type: &'a CouponType) -> Self {
        let terms = &coupon_type.terms;
        Self {
            code: terms.code.as_str(),
            kind: terms.kind,
            value: terms.value,
            min_order_amount: terms.min_order_amount,
        }
    }
}

/// One issued coupon's own facts.
#[derive(Debug, Clone, Copy)]
pub struct IssuedCoupon {
    pub coupon_id: i64,
    pub user_id: i64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: CouponStatus,
}

impl CouponView {
    pub fn new(face: CouponFace<'_>, coupon: IssuedCoupon) -> Self {
        let (discount_rate, discount_amount) = match face.kind {
            CouponKind::Percent => (face.value, 0),
            CouponKind::Fixed => (0, face.value),
        };
        Self {
            coupon_id: coupon.coupon_id,
            user_id: coupon.user_id,
            coupon_type: face.code.to_owned(),
            kind: face.kind,
            discount_rate,
            discount_amount,
            min_order_amount: face.min_order_amount,
            issued_at: coupon.issued_at,
            expires_at: coupon.expires_at,
            is_used: coupon.status == CouponStatus::Used,
            status: coupon.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn campaign(starts: Option<i64>, ends: Option<i64>) -> CouponType {
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let terms = CouponTerms {
            code: CouponCode::parse("C").unwrap(),
            kind: CouponKind::Fixed,
            value: 1000,
            min_order_amount: 0,
            total_quantity: 1,
            valid_days: 30,
            issue_starts_at: starts.map(at),
            issue_ends_at: ends.map(at),
        };
        CouponType { id: 1, terms }
    }

    #[test]
    fn codes() {
        assert!(CouponCode::parse("FIXED_1000").is_ok());
        for bad in ["", "fixed", "FIXED-1000", &"A".repeat(65)] {
            assert!(CouponCode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn window_includes_its_start_and_excludes_its_end() {
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let window = campaign(Some(100), Some(200));
        assert_eq!(window.check_window(at(99)), Err(NotOpen));
        assert_eq!(window.check_window(at(100)), Ok(()));
        assert_eq!(window.check_window(at(199)), Ok(()));
        assert_eq!(window.check_window(at(200)), Err(NotOpen));
        assert_eq!(campaign(None, None).check_window(at(0)), Ok(()));
        assert_eq!(campaign(None, Some(10)).check_window(at(10)), Err(NotOpen));
    }

    #[test]
    fn discounts_round_down_and_stop_at_half() {
        assert_eq!(discount(CouponKind::Percent, 10, 15_999), 1_599);
        assert_eq!(discount(CouponKind::Percent, 100, 10_000), 5_000);
        assert_eq!(discount(CouponKind::Fixed, 2_000, 10_000), 2_000);
        assert_eq!(discount(CouponKind::Fixed, 2_000, 3_001), 1_500);
        assert_eq!(discount(CouponKind::Fixed, 1_000_000, 1_000), 500);
    }

    #[test]
    fn terms_bounds() {
        let terms = |kind, value| CouponTerms {
            code: CouponCode::parse("X").unwrap(),
            kind,
            value,
            min_order_amount: 0,
            total_quantity: 10,
            valid_days: 30,
            issue_starts_at: None,
            issue_ends_at: None,
        };
        assert!(terms(CouponKind::Percent, 100).validate().is_ok());
        assert!(terms(CouponKind::Percent, 101).validate().is_err());
        assert!(terms(CouponKind::Fixed, 1_000_000).validate().is_ok());
        assert!(terms(CouponKind::Fixed, 0).validate().is_err());
        let mut reversed = terms(CouponKind::Fixed, 1);
        reversed.issue_starts_at = Some(Utc::now());
        reversed.issue_ends_at = Some(Utc::now() - Duration::seconds(1));
        assert!(reversed.validate().is_err());
    }

    #[test]
    fn expired_is_an_available_coupon_past_its_expiry() {
        let now = Utc::now();
        let past = now - Duration::seconds(1);
        assert_eq!(CouponStatus::of("AVAILABLE", past, now), CouponStatus::Expired);
        assert_eq!(CouponStatus::of("AVAILABLE", now + Duration::days(1), now), CouponStatus::Available);
        assert_eq!(CouponStatus::of("USED", past, now), CouponStatus::Used);
        assert_eq!(CouponStatus::of("RESERVED", past, now), CouponStatus::Reserved);
    }
}
