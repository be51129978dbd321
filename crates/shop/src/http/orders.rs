//! Orders: place, read, list, cancel, and the admin's fulfilment moves.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::Problem;
use super::extract::{IdempotencyHeader, Json, PathId, Query, decode};
use super::pagination::{Page, PageRequest};
use crate::auth::Caller;
use crate::domain::order::{OrderLines, OrderStatus};
use crate::error::AppError;
use crate::orders::{self, OrderView, Placement};
use crate::storage::{orders as order_rows, users};

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderLineRequest {
    #[schema(minimum = 1)]
    product_id: i64,
    #[schema(minimum = 1, maximum = 10)]
    quantity: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderRequest {
    /// 1–20 lines of distinct products.
    #[schema(min_items = 1, max_items = 20)]
    items: Vec<OrderLineRequest>,
    /// One of your available coupons.
    #[schema(minimum = 1)]
    coupon_id: Option<i64>,
    /// Kept for older clients: omit, or give your own id.
    user_id: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
pub struct StatusRequest {
    /// SHIPPED, DELIVERED or COMPLETED.
    status: OrderStatus,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderListQuery {
    /// 1 to 100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    cursor: Option<String>,
}

/// Places an order, reserving the stock of every line (all or nothing) and
/// its coupon until it is paid, cancelled or expires. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/api/orders", operation_id = "placeOrder", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 printable ASCII characters")),
    request_body = OrderRequest,
    responses(
        (status = 201, body = OrderView),
        (status = 400, description = "VALIDATION_FAILED, also for a total under 1,000 won", body = Problem),
        (status = 403, description = "FORBIDDEN: userId is not yours", body = Problem),
        (status = 404, description = "NOT_FOUND: a product does not exist", body = Problem),
        (status = 409, description = "OUT_OF_STOCK, COUPON_NOT_USABLE, CONCURRENCY_CONFLICT or IDEMPOTENCY_KEY_IN_USE", body = Problem),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = Problem)))]
pub async fn place(
    State(state): State<AppState>,
    caller: Caller,
    idempotency: IdempotencyHeader,
    Json(body): Json<Value>,
) -> Result<Response, AppError> {
    let request: OrderRequest = decode(&body)?;
    let lines: Vec<(i64, i64)> = request.items.iter().map(|line| (line.product_id, line.quantity)).collect();
    let lines = OrderLines::parse(&lines)?;
    if request.coupon_id.is_some_and(|id| id <= 0) {
        return Err(AppError::Validation("couponId: must be a positive integer".into()));
    }
    caller.check_body_user(request.user_id)?;
    idempotency
        .holding(state.stock.holds_settle_within())
        .run(&state, caller, &body, async |claim| {
            let placement = Placement {
                user_id: caller.user_id,
                lines: &lines,
                coupon_id: request.coupon_id,
                payment_timeout_secs: state.order_payment_timeout_secs,
            };
            let order = state.placing.place(placement, claim).await?;
            Ok((StatusCode::CREATED, Json(order)))
        })
        .await
}

/// One order, the caller's own (or any, for an admin).
#[utoipa::path(get, path = "/api/orders/{orderId}", operation_id = "getOrder", tag = "orders", security(("bearer" = [])),
    params(("orderId" = i64, Path, minimum = 1)),
    responses(
        (status = 200, body = OrderView),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 404, description = "NOT_FOUND, also for another user's order", body = Problem)))]
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    PathId(order_id): PathId,
) -> Result<Json<OrderView>, AppError> {
    let mut conn = state.db.read().await?;
    let order = orders::visible(order_rows::find(&mut conn, order_id).await?, caller.user_id, caller.is_admin())?;
    Ok(Json(orders::views(&mut conn, vec![order]).await?.remove(0)))
}

/// The user's orders, newest first.
#[utoipa::path(get, path = "/api/users/{userId}/orders", operation_id = "listUserOrders", tag = "orders", security(("bearer" = [])),
    params(("userId" = i64, Path, minimum = 1), OrderListQuery),
    responses(
        (status = 200, body = Page<OrderView>),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    PathId(user_id): PathId,
    Query(query): Query<OrderListQuery>,
) -> Result<Json<Page<OrderView>>, AppError> {
    let page = PageRequest::parse(query.limit.as_deref(), query.cursor.as_deref(), 20)?;
    caller.may_act_for(user_id)?;
    let mut conn = state.db.read().await?;
    if !users::exists(&mut conn, user_id).await? {
        return Err(AppError::not_found("user not found"));
    }
    let rows = order_rows::page(&mut conn, user_id, page.after, page.fetch()).await?;
    let views = orders::views(&mut conn, rows).await?;
    Ok(Json(page.page(views, |order| order.order_id, |order| order)))
}

/// Cancels an order: a PENDING one releases its stock and coupon; a PAID one,
/// within an hour of payment and without a coupon, is refunded and restocked.
/// Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/api/orders/{orderId}/cancel", operation_id = "cancelOrder", tag = "orders", security(("bearer" = [])),
    params(("orderId" = i64, Path, minimum = 1), ("Idempotency-Key" = Option<String>, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 200, body = OrderView),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 404, description = "NOT_FOUND, also for another user's order", body = Problem),
        (status = 409, description = "ORDER_NOT_CANCELLABLE or IDEMPOTENCY_KEY_IN_USE", body = Problem),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = Problem)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    PathId(order_id): PathId,
    idempotency: IdempotencyHeader,
) -> Result<Response, AppError> {
    idempotency
        .run(&state, caller, &Value::Null, async |claim| {
            let who = (caller.user_id, caller.is_admin());
            let order = orders::cancel(&state.db, &*state.stock, &state.top_sellers, order_id, who, claim).await?;
            Ok(Json(order))
        })
        .await
}

/// Moves a paid order along fulfilment (admin): PAID → SHIPPED → DELIVERED → COMPLETED.
#[utoipa::path(post, path = "/api/admin/orders/{orderId}/status", operation_id = "advanceOrder", tag = "admin", security(("bearer" = [])),
    params(("orderId" = i64, Path, minimum = 1)), request_body = StatusRequest,
    responses(
        (status = 200, body = OrderView),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem),
        (status = 409, description = "INVALID_STATE_TRANSITION", body = Problem)))]
pub async fn advance(
    State(state): State<AppState>,
    caller: Caller,
    PathId(order_id): PathId,
    Json(request): Json<StatusRequest>,
) -> Result<Json<OrderView>, AppError> {
    caller.require_admin()?;
    Ok(Json(orders::advance(&state.db, order_id, request.status).await?))
}
