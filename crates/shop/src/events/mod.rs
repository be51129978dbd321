//! Paid and cancelled orders, told to the data platform: each event is
//! recorded in the transaction of the change it describes (a transactional
//! outbox), as the envelope its receivers get — numbered per order, its
//! bytes fixed once written — and delivered by a relay in every instance
//! to every configured sink, at least once and in order per order (see
//! `docs/events.md`).

mod listen;
mod registry;
mod relay;
mod sinks;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub use listen::listen;
pub use registry::manage_sinks;
pub use relay::{Relay, RelayConfig};
pub use sinks::Sinks;

use crate::error::AppError;
use crate::storage::outbox::{self, NewEvent};

/// One line of an order, as events describe it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventItem {
    pub product_id: i64,
    pub name: String,
    pub quantity: i32,
    pub unit_price: i64,
}

/// What happened to an order.
pub enum OrderEvent {
    Paid {
        user_id: i64,
        payment_id: i64,
        items: Vec<EventItem>,
        total_amount: i64,
        discount_amount: i64,
        final_amount: i64,
        coupon_id: Option<i64>,
        paid_at: DateTime<Utc>,
    },
    Cancelled {
        user_id: i64,
        refund_amount: i64,
        items: Vec<EventItem>,
        cancelled_at: DateTime<Utc>,
    },
}

impl OrderEvent {
    fn kind(&self) -> &'static str {
        match self {
            Self::Paid { .. } => "ORDER_PAID",
            Self::Cancelled { .. } => "ORDER_CANCELLED",
        }
    }

    fn data(&self) -> Value {
        match self {
            Self::Paid {
                user_id,
                payment_id,
                items,
                total_amount,
                discount_amount,
                final_amount,
                coupon_id,
                paid_at,
            } => serde_json::json!({
                "userId": user_id, "paymentId": payment_id, "items": items, "totalAmount": total_amount,
                "discountAmount": discount_amount, "finalAmount": final_amount, "couponId": coupon_id,
                "paidAt": paid_at,
            }),
            Self::Cancelled { user_id, refund_amount, items, cancelled_at } => serde_json::json!({
                "userId": user_id, "refundAmount": refund_amount, "items": items, "cancelledAt": cancelled_at,
            }),
        }
    }
}

/// The envelope every sink receives, byte for byte the same on every
/// attempt.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    event_id: Uuid,
    #[serde(rename = "type")]
    kind: &'a str,
    order_id: i64,
    sequence: i32,
    occurred_at: DateTime<Utc>,
    data: &'a Value,
}

/// Records the event in the caller's transaction, which holds the order's
/// row lock (so its number is the order's next).
pub async fn record(conn: &mut PgConnection, order_id: i64, event: OrderEvent) -> Result<(), AppError> {
    let sequence = outbox::next_sequence(conn, order_id).await?;
    let data = event.data();
    let envelope = Envelope {
        event_id: Uuid::new_v4(),
        kind: event.kind(),
        order_id,
        sequence,
        occurred_at: Utc::now(),
        data: &data,
    };
    let body = serde_json::to_string(&envelope).map_err(AppError::internal)?;
    let new = NewEvent {
        event_id: envelope.event_id,
        order_id,
        event_type: envelope.kind,
        sequence,
        data: &data,
        body: &body,
    };
    Ok(outbox::record(conn, &new).await?)
}
