//! Placing orders and moving them through their life cycle: cancellation
//! (with a refund when paid), expiry, and the admin's fulfilment steps.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;

use crate::domain::coupon::{CouponKind, CouponStatus};
use crate::domain::order::{self, Amounts, Event, MIN_TOTAL, OrderLines, OrderStatus};
use crate::domain::points::LedgerKind;
use crate::error::{AppError, ResultExt};
use crate::events::{self, EventItem, OrderEvent};
use crate::idempotency::Claim;
use crate::storage::Db;
use crate::storage::coupons::CouponForOrder;
use crate::storage::orders::{ItemRow, NewItem, NewOrder, OrderRow};
use crate::storage::payments::Sale;
use crate::storage::products::ProductRow;
use crate::storage::{Tx, coupons, ledger, orders, payments, products, wallets};
use crate::strategy::stock::{StockStrategy, Together};
use crate::top_sellers::{SaleRecord, TopSellers};

mod batch;

use batch::OrderBatcher;

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderLineView {
    pub product_id: i64,
    pub name: String,
    pub quantity: i32,
    /// Unit price when ordered.
    pub price: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: i64,
    pub user_id: i64,
    pub items: Vec<OrderLineView>,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub final_amount: i64,
    pub coupon_id: Option<i64>,
    pub coupon_used: bool,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
}

impl OrderView {
    pub fn new(order: &OrderRow, items: impl IntoIterator<Item = OrderLineView>) -> Self {
        Self {
            order_id: order.id,
            user_id: order.user_id,
            items: items.into_iter().collect(),
            total_amount: order.total_amount,
            discount_amount: order.discount_amount,
            final_amount: order.final_amount,
            coupon_id: order.coupon_id,
            coupon_used: order.coupon_id.is_some(),
            status: order.status(),
            created_at: order.created_at,
            expires_at: order.expires_at,
            paid_at: order.paid_at,
        }
    }

    /// The order's lines as sales: (product, quantity, revenue).
    pub fn sales(&self) -> Vec<Sale> {
        self.items
            .iter()
            .map(|line| (line.product_id, line.quantity as i64, line.quantity as i64 * line.price))
            .collect()
    }
}

impl From<&OrderLineView> for EventItem {
    fn from(line: &OrderLineView) -> Self {
        Self { product_id: line.product_id, name: line.name.clone(), quantity: line.quantity, unit_price: line.price }
    }
}

impl From<ItemRow> for OrderLineView {
    fn from(item: ItemRow) -> Self {
        Self { product_id: item.product_id, name: item.product_name, quantity: item.quantity, price: item.unit_price }
    }
}

/// Loads the views of orders, with their lines.
pub async fn views(conn: &mut PgConnection, rows: Vec<OrderRow>) -> Result<Vec<OrderView>, AppError> {
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let mut lines: HashMap<i64, Vec<OrderLineView>> = HashMap::new();
    for item in orders::items(conn, &ids).await? {
        lines.entry(item.order_id).or_default().push(item.into());
    }
    Ok(rows.iter().map(|row| OrderView::new(row, lines.remove(&row.id).unwrap_or_default())).collect())
}

/// The order if the caller may see it (its owner or an admin); otherwise
/// 404, so ids reveal nothing.
pub fn visible(order: Option<OrderRow>, user_id: i64, admin: bool) -> Result<OrderRow, AppError> {
    order.filter(|order| admin || order.user_id == user_id).ok_or_else(|| AppError::not_found("order not found"))
}

/// What an order needs to be placed, validated.
pub struct Placement<'a> {
    pub user_id: i64,
    pub lines: &'a OrderLines,
    pub coupon_id: Option<i64>,
    pub payment_timeout_secs: i64,
}

/// Places orders through the stock strategy: each in a transaction of its
/// own, or in batches when the strategy places them together (`adaptive`:
/// those over a hot product).
pub struct Placing {
    db: Db,
    stock: Arc<dyn StockStrategy>,
    together: Option<OrderBatcher>,
}

impl Placing {
    pub fn new(db: Db, stock: Arc<dyn StockStrategy>) -> Self {
        let together = match stock.places_together() {
            Together::Never => None,
            Together::Always | Together::WhenHot(_) => Some(OrderBatcher::start(db.clone(), stock.clone())),
        };
        Self { db, stock, together }
    }

    /// Places an order: prices its lines, checks its coupon, then reserves
    /// its stock (through the stock strategy) and its coupon in the
    /// transaction that writes it. Lock order: products (ascending id), then
    /// the coupon.
    #[tracing::instrument(skip_all, fields(user_id = placement.user_id))]
    pub async fn place(&self, placement: Placement<'_>, claim: Option<&Claim>) -> Result<OrderView, AppError> {
        let Some(batcher) = &self.together else {
            return place_alone(&self.db, &*self.stock, placement, claim).await;
        };
        let passage = match self.stock.places_together() {
            Together::WhenHot(hot) => Some(hot.enter(placement.lines.iter().map(|(id, _)| id))),
            Together::Never | Together::Always => None,
        };
        if passage.as_ref().is_none_or(|passage| passage.together()) {
            batcher.place(placement, claim).await
        } else {
            place_alone(&self.db, &*self.stock, placement, claim).await
        }
    }
}

/// Places one order in its own transaction.
#[tracing::instrument(skip_all, fields(user_id = placement.user_id, strategy = ?stock.kind()))]
async fn place_alone(
    db: &Db,
    stock: &dyn StockStrategy,
    placement: Placement<'_>,
    claim: Option<&Claim>,
) -> Result<OrderView, AppError> {
    let mut conn = db.read().await?;
    let found = products::by_ids(&mut conn, &placement.lines.product_ids()).await?;
    let product = |id| found.binary_search_by_key(&id, |product| product.id).ok().map(|i| &found[i]);
    let items = price(placement.lines, product)?;
    // A read of the stock now; the strategy decides only when it might suffice.
    if placement.lines.iter().any(|(id, quantity)| product(id).is_some_and(|p| p.stock < quantity as i64)) {
        return Err(AppError::OutOfStock);
    }
    let total = total_of(&items);
    let coupon = match placement.coupon_id {
        Some(coupon_id) => {
            let coupon = coupons::for_order(&mut conn, coupon_id).await?;
            Some(coupon_terms(coupon.as_ref(), placement.user_id, total, Utc::now())?)
        }
        None => None,
    };
    drop(conn);
    let amounts = Amounts::new(total, coupon);
    fail::fail_point!("orders::coupon::read");
    let hold = stock.hold(db, placement.lines).await?;
    let placed = async {
        let mut tx = Tx::begin(db).await?;
        stock.take(&mut tx, placement.lines, &hold).await?;
        let new = NewOrder {
            user_id: placement.user_id,
            amounts,
            coupon_id: placement.coupon_id,
            payment_timeout_secs: placement.payment_timeout_secs,
            gate_reservation: hold.gate_reservation(),
            items: &items,
        };
        let order = orders::insert(&mut tx, &new).await.on_constraint("orders_coupon_live_key", || {
            AppError::CouponNotUsable("the coupon is held by another order")
        })?;
        if let Some(coupon_id) = placement.coupon_id
            && !stock.reserve_coupon(&mut tx, coupon_id, placement.user_id, order.id).await?
        {
            return Err(AppError::CouponNotUsable("the coupon was taken by another order"));
        }
        let view = OrderView::new(&order, items.iter().map(OrderLineView::from));
        if let Some(claim) = claim {
            claim.save(&mut tx, axum::http::StatusCode::CREATED, &view).await?;
        }
        tx.commit().await?;
        Ok(view)
    }
    .await;
    stock.settle(hold, placed.as_ref().map(drop)).await;
    placed
}

/// Prices the lines at the products' current prices (`product` finds one by
/// id): `NOT_FOUND` for a product that does not exist, `VALIDATION_FAILED`
/// for a total under the minimum.
fn price<'a>(lines: &OrderLines, product: impl Fn(i64) -> Option<&'a ProductRow>) -> Result<Vec<NewItem>, AppError> {
    let items = lines
        .iter()
        .map(|(product_id, quantity)| {
            let product =
                product(product_id).ok_or_else(|| AppError::not_found(format!("product {product_id} not found")))?;
            Ok(NewItem { product_id, name: product.name.clone(), quantity, unit_price: product.price })
        })
        .collect::<Result<Vec<_>, AppError>>()?;
    if total_of(&items) < MIN_TOTAL {
        return Err(AppError::Validation("totalAmount: must be at least 1,000 won".into()));
    }
    Ok(items)
}

fn total_of(items: &[NewItem]) -> i64 {
    items.iter().map(|item| item.unit_price * item.quantity as i64).sum()
}

impl From<&NewItem> for OrderLineView {
    fn from(item: &NewItem) -> Self {
        Self { product_id: item.product_id, name: item.name.clone(), quantity: item.quantity, price: item.unit_price }
    }
}

/// The coupon's discount terms if the user may use it on an order of `total`.
fn coupon_terms(
    coupon: Option<&CouponForOrder>,
    user_id: i64,
    total: i64,
    now: DateTime<Utc>,
) -> Result<(CouponKind, i64), AppError> {
    let coupon = coupon
        .filter(|coupon| coupon.user_id == user_id)
        .ok_or(AppError::CouponNotUsable("the coupon is not yours"))?;
    match CouponStatus::of(&coupon.status, coupon.expires_at, now) {
        CouponStatus::Available => {}
        CouponStatus::Reserved => {
            return Err(AppError::CouponNotUsable("the coupon is held by another order"));
        }
        CouponStatus::Used => return Err(AppError::CouponNotUsable("the coupon is used")),
        CouponStatus::Expired => return Err(AppError::CouponNotUsable("the coupon has expired")),
    }
    if total < coupon.min_order_amount {
        return Err(AppError::CouponNotUsable("the order is below the coupon's minimum amount"));
    }
    Ok((CouponKind::from_stored(&coupon.kind), coupon.value))
}

/// Cancels an order. PENDING: its stock and coupon are released. PAID,
/// within an hour and without a coupon: the points are refunded to the
/// ledger and the stock restored. Anything else: `ORDER_NOT_CANCELLABLE`.
#[tracing::instrument(skip_all, fields(order_id))]
pub async fn cancel(
    db: &Db,
    stock: &dyn StockStrategy,
    top_sellers: &TopSellers,
    order_id: i64,
    caller: (i64, bool),
    claim: Option<&Claim>,
) -> Result<OrderView, AppError> {
    let mut tx = Tx::begin(db).await?;
    let order = visible(orders::lock(&mut tx, order_id).await?, caller.0, caller.1)?;
    let status = order.status();
    if order::next(status, Event::Cancel).is_err() {
        return Err(AppError::OrderNotCancellable("only PENDING and recently PAID orders can be cancelled"));
    }
    let was_paid = status == OrderStatus::Paid;
    if was_paid {
        let paid_at = order.paid_at.ok_or_else(|| AppError::internal(anyhow::anyhow!("PAID without paid_at")))?;
        if !order::refund_allowed(paid_at, order.coupon_id.is_some(), Utc::now()) {
            return Err(AppError::OrderNotCancellable(
                "a paid order can be cancelled only within an hour of payment and without a coupon",
            ));
        }
    }
    products::lock_for_return(&mut tx, &[order.id]).await?;
    let returned = products::return_stock(&mut tx, &[order.id]).await?;
    let returned = stock.record_changes(&mut tx, returned).await?;
    coupons::release(&mut tx, &[order.id]).await?;
    if was_paid {
        let balance = wallets::credit(&mut tx, order.user_id, order.final_amount).await?;
        ledger::append(&mut tx, order.user_id, LedgerKind::Refund, order.final_amount, balance, Some(order.id)).await?;
        payments::mark_refunded(&mut tx, order.id).await?;
    }
    let cancelled = orders::set_status(&mut tx, order.id, OrderStatus::Cancelled).await?;
    let view = views(&mut tx, vec![cancelled]).await?.remove(0);
    if was_paid {
        let event = OrderEvent::Cancelled {
            user_id: order.user_id,
            refund_amount: order.final_amount,
            items: view.items.iter().map(EventItem::from).collect(),
            cancelled_at: Utc::now(),
        };
        events::record(&mut tx, order.id, event).await?;
    }
    if let Some(claim) = claim {
        claim.save(&mut tx, axum::http::StatusCode::OK, &view).await?;
    }
    let xid = tx.xid();
    if let Err(error) = tx.commit().await {
        if let (true, Some(paid_at), AppError::OutcomeUnknown) = (was_paid, order.paid_at, &error) {
            // It may have been cancelled: the day it was paid is read again.
            top_sellers.rebuild_later(paid_at).await;
        }
        return Err(error);
    }
    stock.changed(db, returned).await;
    if let (true, Some(paid_at)) = (was_paid, order.paid_at) {
        top_sellers.cancelled(SaleRecord { order_id: order.id, xid, paid_at, sales: &view.sales() }).await;
    }
    Ok(view)
}

/// Moves a paid order along fulfilment (admin): PAID → SHIPPED → DELIVERED →
/// COMPLETED; any other move is `INVALID_STATE_TRANSITION`.
pub async fn advance(db: &Db, order_id: i64, target: OrderStatus) -> Result<OrderView, AppError> {
    let mut tx = Tx::begin(db).await?;
    let order = orders::lock(&mut tx, order_id).await?.ok_or_else(|| AppError::not_found("order not found"))?;
    let moved = order::admin_event_to(target)
        .and_then(|event| order::next(order.status(), event).ok())
        .filter(|next| *next == target)
        .ok_or_else(|| {
            AppError::InvalidStateTransition(format!("an order that is {:?} cannot become {target:?}", order.status()))
        })?;
    let row = orders::set_status(&mut tx, order.id, moved).await?;
    let view = views(&mut tx, vec![row]).await?.remove(0);
    tx.commit().await?;
    Ok(view)
}

/// Expires up to `batch` overdue PENDING orders, releasing their stock and
/// coupons; orders another instance is expiring are skipped. Locks in the
/// order every transaction takes: the orders, then all their products
/// (ascending id), then their coupons (ascending id). Returns how many were
/// expired.
pub async fn expire_overdue(db: &Db, stock: &dyn StockStrategy, batch: i64) -> Result<usize, AppError> {
    let mut tx = Tx::begin(db).await?;
    let overdue = orders::lock_overdue(&mut tx, batch).await?;
    if overdue.is_empty() {
        return Ok(0);
    }
    products::lock_for_return(&mut tx, &overdue).await?;
    fail::fail_point!("orders::expire::locked");
    let returned = products::return_stock(&mut tx, &overdue).await?;
    let returned = stock.record_changes(&mut tx, returned).await?;
    coupons::release(&mut tx, &overdue).await?;
    // Only PENDING orders were locked.
    let expired = order::next(OrderStatus::Pending, Event::Expire).map_err(AppError::internal)?;
    orders::set_statuses(&mut tx, &overdue, expired).await?;
    tx.commit().await?;
    stock.changed(db, returned).await;
    Ok(overdue.len())
}
