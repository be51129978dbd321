//! Paying an order from points: exactly one successful payment per order,
//! however many requests race for it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::order::{self, Event};
use crate::error::{AppError, ResultExt};
use crate::events::{self, EventItem, OrderEvent};
use crate::idempotency::Claim;
use crate::orders::visible;
use crate::storage::Db;
use crate::storage::orders::OrderRow;
use crate::storage::payments::PaymentRow;
use crate::storage::{Tx, orders, payments};
use crate::strategy::points::{PointsStrategy, Spend};
use crate::top_sellers::{SaleRecord, TopSellers};

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    pub payment_id: i64,
    pub order_id: i64,
    pub user_id: i64,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub final_amount: i64,
    pub coupon_used: bool,
    /// `SUCCESS`, or `REFUNDED` after a paid order's cancellation.
    pub status: String,
    pub paid_at: DateTime<Utc>,
}

impl PaymentView {
    pub fn new(payment: &PaymentRow, order: &OrderRow) -> Self {
        Self {
            payment_id: payment.id,
            order_id: order.id,
            user_id: payment.user_id,
            total_amount: order.total_amount,
            discount_amount: order.discount_amount,
            final_amount: order.final_amount,
            coupon_used: order.coupon_id.is_some(),
            status: payment.status.clone(),
            paid_at: payment.paid_at,
        }
    }
}

/// Why an order cannot be paid now, checked on the locked order.
fn check_payable(order: &OrderRow) -> Result<(), AppError> {
    let status = order.status();
    if order::next(status, Event::Pay).is_err() {
        return Err(AppError::OrderNotPayable(status.as_str()));
    }
    if order.expires_at <= Utc::now() {
        return Err(AppError::OrderExpired);
    }
    Ok(())
}

/// Pays the order's final amount from the caller's points. The debit (through
/// the points strategy), its `USE` ledger row, the payment, the order's PAID
/// state, its coupon's use and the outbox event commit together. The order
/// is read only under its lock: a payment's first statement is the one that
/// decides it.
#[tracing::instrument(skip_all, fields(order_id, user_id, strategy = ?points.kind()))]
pub async fn pay(
    db: &Db,
    points: &dyn PointsStrategy,
    top_sellers: &TopSellers,
    order_id: i64,
    user_id: i64,
    claim: Option<&Claim>,
) -> Result<PaymentView, AppError> {
    let hold = points.hold(user_id).await?;
    let paid = async {
        let mut tx = Tx::begin(db).await?;
        // Lock order: the order, then the wallet.
        let order = visible(points.lock_order(&mut tx, order_id).await?, user_id, false)?;
        check_payable(&order)?;
        fail::fail_point!("payments::pay::read");
        // The coupon (made USED here) before the wallet: the lock order of
        // every transaction (order, products, coupons, wallet).
        let recorded = payments::record(&mut tx, order.id, user_id, order.final_amount)
            .await
            .on_constraint("payments_order_key", || AppError::OrderNotPayable("PAID"))?;
        points.debit(&mut tx, Spend { user_id, amount: order.final_amount, order_id }, &hold).await?;
        let payment = &recorded.payment;
        let items = orders::items(&mut tx, &[order.id]).await?;
        let event = OrderEvent::Paid {
            user_id,
            payment_id: payment.id,
            items: items
                .into_iter()
                .map(|item| EventItem {
                    product_id: item.product_id,
                    name: item.product_name,
                    quantity: item.quantity,
                    unit_price: item.unit_price,
                })
                .collect(),
            total_amount: order.total_amount,
            discount_amount: order.discount_amount,
            final_amount: order.final_amount,
            coupon_id: order.coupon_id,
            paid_at: payment.paid_at,
        };
        events::record(&mut tx, order.id, event).await?;
        let view = PaymentView::new(payment, &order);
        if let Some(claim) = claim {
            claim.save(&mut tx, axum::http::StatusCode::CREATED, &view).await?;
        }
        let xid = tx.xid();
        tx.commit().await?;
        Ok::<_, AppError>((view, recorded.sales, xid))
    }
    .await;
    points.settle(hold).await;
    let (payment, sales, xid) = paid?;
    // Tests hold a committed payment here while the top sellers rebuild.
    fail::fail_point!("payments::pay::committed");
    top_sellers.paid(SaleRecord { order_id: payment.order_id, xid, paid_at: payment.paid_at, sales: &sales }).await;
    Ok(payment)
}

/// A payment, if the caller may see it.
pub async fn find(db: &Db, payment_id: i64, user_id: i64, admin: bool) -> Result<PaymentView, AppError> {
    let mut conn = db.read().await?;
    let payment = payments::find(&mut conn, payment_id)
        .await?
        .filter(|payment| admin || payment.user_id == user_id)
        .ok_or_else(|| AppError::not_found("payment not found"))?;
    let order = orders::find(&mut conn, payment.order_id)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("payment without its order")))?;
    Ok(PaymentView::new(&payment, &order))
}
