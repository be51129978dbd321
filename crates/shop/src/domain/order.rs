//! Orders: what may be ordered, what it costs, and the life cycle.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ValidationError;
use super::coupon::{CouponKind, discount};

pub const MAX_ITEMS: usize = 20;
pub const MAX_QUANTITY: i32 = 10;
pub const MIN_TOTAL: i64 = 1_000;
/// A paid order may be cancelled (and refunded) this long after payment.
pub const REFUND_WINDOW: Duration = Duration::hours(1);

/// 1–20 lines of distinct products, 1–10 units each, ordered by product id:
/// the order in which every strategy locks them, so that two orders over
/// the same products never wait for each other in a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLines(BTreeMap<i64, i32>);

impl OrderLines {
    pub fn parse(lines: &[(i64, i64)]) -> Result<Self, ValidationError> {
        if lines.is_empty() || lines.len() > MAX_ITEMS {
            return Err(ValidationError::new("items", "must hold 1 to 20 lines"));
        }
        let mut by_product = BTreeMap::new();
        for (i, &(product_id, quantity)) in lines.iter().enumerate() {
            if product_id <= 0 {
                return Err(ValidationError::new("items", format!("[{i}].productId must be a positive integer")));
            }
            if !(1..=MAX_QUANTITY as i64).contains(&quantity) {
                return Err(ValidationError::new("items", format!("[{i}].quantity must be 1 to 10")));
            }
            if by_product.insert(product_id, quantity as i32).is_some() {
                return Err(ValidationError::new("items", format!("[{i}].productId {product_id} appears twice")));
            }
        }
        Ok(Self(by_product))
    }

    /// (product id, quantity), by ascending product id.
    pub fn iter(&self) -> impl Iterator<Item = (i64, i32)> + '_ {
        self.0.iter().map(|(&id, &quantity)| (id, quantity))
    }

    pub fn product_ids(&self) -> Vec<i64> {
        self.0.keys().copied().collect()
    }
}

/// The money of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amounts {
    pub total: i64,
    pub discount: i64,
    pub final_amount: i64,
}

impl Amounts {
    pub fn new(total: i64, coupon: Option<(CouponKind, i64)>) -> Self {
        let discount = coupon.map_or(0, |(kind, value)| discount(kind, value, total));
        Self { total, discount, final_amount: total - discount }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum OrderStatus {
    Pending,
    Paid,
    Cancelled,
    Expired,
    Shipped,
    Delivered,
    Completed,
}

impl OrderStatus {
    pub const ALL: [Self; 7] =
        [Self::Pending, Self::Paid, Self::Cancelled, Self::Expired, Self::Shipped, Self::Delivered, Self::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Paid => "PAID",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
            Self::Completed => "COMPLETED",
        }
    }

    /// Statuses as stored by the `orders_status_check` constraint.
    pub fn from_stored(value: &str) -> Self {
        Self::ALL.into_iter().find(|status| status.as_str() == value).unwrap_or(Self::Pending)
    }

    /// Whether the order holds stock (and its coupon): every status but the
    /// two that released them.
    pub fn holds_stock(self) -> bool {
        !matches!(self, Self::Cancelled | Self::Expired)
    }
}

/// What happens to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Pay,
    Cancel,
    Expire,
    Ship,
    Deliver,
    Complete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order that is {from:?} cannot {event:?}")]
pub struct InvalidTransition {
    pub from: OrderStatus,
    pub event: Event,
}

/// The life cycle: PENDING → PAID / CANCELLED / EXPIRED; PAID → CANCELLED
/// (see [`refund_allowed`]) / SHIPPED → DELIVERED → COMPLETED.
pub fn next(from: OrderStatus, event: Event) -> Result<OrderStatus, InvalidTransition> {
    use OrderStatus::*;
    match (from, event) {
        (Pending, Event::Pay) => Ok(Paid),
        (Pending | Paid, Event::Cancel) => Ok(Cancelled),
        (Pending, Event::Expire) => Ok(Expired),
        (Paid, Event::Ship) => Ok(Shipped),
        (Shipped, Event::Deliver) => Ok(Delivered),
        (Delivered, Event::Complete) => Ok(Completed),
        _ => Err(InvalidTransition { from, event }),
    }
}

/// The admin move that reaches `target`, if any.
pub fn admin_event_to(target: OrderStatus) -> Option<Event> {
    match target {
        OrderStatus::Shipped => Some(Event::Ship),
        OrderStatus::Delivered => Some(Event::Deliver),
        OrderStatus::Completed => Some(Event::Complete),
        _ => None,
    }
}

/// A paid order can be cancelled with a refund only within an hour of its
/// payment and only if it used no coupon.
pub fn refund_allowed(paid_at: DateTime<Utc>, used_coupon: bool, now: DateTime<Utc>) -> bool {
    !used_coupon && now - paid_at <= REFUND_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_rules() {
        assert!(OrderLines::parse(&[]).is_err());
        assert!(OrderLines::parse(&[(1, 0)]).is_err());
        assert!(OrderLines::parse(&[(1, 11)]).is_err());
        assert!(OrderLines::parse(&[(0, 1)]).is_err());
        assert!(OrderLines::parse(&[(1, 1), (1, 2)]).is_err());
        let many: Vec<_> = (1..=21).map(|id| (id, 1)).collect();
        assert!(OrderLines::parse(&many).is_err());
        assert!(OrderLines::parse(&many[..20]).is_ok());
        let lines = OrderLines::parse(&[(9, 2), (3, 10), (5, 1)]).unwrap();
        assert_eq!(lines.iter().collect::<Vec<_>>(), vec![(3, 10), (5, 1), (9, 2)], "ascending ids");
    }

    #[test]
    fn amounts_apply_the_capped_discount() {
        assert_eq!(Amounts::new(12_000, None), Amounts { total: 12_000, discount: 0, final_amount: 12_000 });
        assert_eq!(Amounts::new(12_345, Some((CouponKind::Percent, 10))).discount, 1_234);
        assert_eq!(Amounts::new(3_000, Some((CouponKind::Fixed, 2_000))).final_amount, 1_500);
    }

    #[test]
    fn every_pair_of_status_and_event() {
        use Event::*;
        use OrderStatus::*;
        let allowed = [
            (Pending, Pay, Paid),
            (Pending, Cancel, Cancelled),
            (Pending, Expire, Expired),
            (Paid, Cancel, Cancelled),
            (Paid, Ship, Shipped),
            (Shipped, Deliver, Delivered),
            (Delivered, Complete, Completed),
        ];
        for from in OrderStatus::ALL {
            for event in [Pay, Cancel, Expire, Ship, Deliver, Complete] {
                let expected = allowed.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to);
                assert_eq!(next(from, event).ok(), expected, "{from:?} + {event:?}");
            }
        }
    }

    #[test]
    fn admin_moves_are_only_the_fulfilment_steps() {
        for target in OrderStatus::ALL {
            let expected = matches!(target, OrderStatus::Shipped | OrderStatus::Delivered | OrderStatus::Completed);
            assert_eq!(admin_event_to(target).is_some(), expected, "{target:?}");
        }
    }

    #[test]
    fn refunds_only_within_the_hour_and_without_a_coupon() {
        let paid = Utc::now();
        assert!(refund_allowed(paid, false, paid + Duration::minutes(59)));
        assert!(refund_allowed(paid, false, paid + REFUND_WINDOW));
        assert!(!refund_allowed(paid, false, paid + REFUND_WINDOW + Duration::seconds(1)));
        assert!(!refund_allowed(paid, true, paid));
    }

    #[test]
    fn only_cancelled_and_expired_orders_release_their_stock() {
        for status in OrderStatus::ALL {
            assert_eq!(status.holds_stock(), !matches!(status, OrderStatus::Cancelled | OrderStatus::Expired));
        }
    }
}
