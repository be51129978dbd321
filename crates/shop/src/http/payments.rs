//! Paying orders from points.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::error::Problem;
use super::extract::{IdempotencyHeader, Json, PathId, decode};
use crate::auth::Caller;
use crate::error::AppError;
use crate::payments::{self, PaymentView};

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequest {
    #[schema(minimum = 1)]
    order_id: i64,
    /// Kept for older clients: omit, or give your own id.
    user_id: Option<i64>,
}

/// Pays an order's final amount from points. An order is paid at most once,
/// however many payment requests race for it. Honours `Idempotency-Key`.
/// Also served at `POST /api/payments/process`, its older path.
#[utoipa::path(post, path = "/api/payments", operation_id = "payOrder", tag = "payments", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 printable ASCII characters")),
    request_body = PaymentRequest,
    responses(
        (status = 201, body = PaymentView),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN: userId is not yours", body = Problem),
        (status = 404, description = "NOT_FOUND, also for another user's order", body = Problem),
        (status = 409, description = "ORDER_NOT_PAYABLE, ORDER_EXPIRED, INSUFFICIENT_POINTS, CONCURRENCY_CONFLICT or IDEMPOTENCY_KEY_IN_USE", body = Problem),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = Problem)))]
pub async fn pay(
    State(state): State<AppState>,
    caller: Caller,
    idempotency: IdempotencyHeader,
    Json(body): Json<Value>,
) -> Result<Response, AppError> {
    let request: PaymentRequest = decode(&body)?;
    if request.order_id <= 0 {
        return Err(AppError::Validation("orderId: must be a positive integer".into()));
    }
    caller.check_body_user(request.user_id)?;
    idempotency
        .run(&state, caller, &body, async |claim| {
            let payment =
                payments::pay(&state.db, &*state.points, &state.top_sellers, request.order_id, caller.user_id, claim)
                    .await?;
            Ok((StatusCode::CREATED, Json(payment)))
        })
        .await
}

/// One payment, the caller's own (or any, for an admin).
#[utoipa::path(get, path = "/api/payments/{paymentId}", operation_id = "getPayment", tag = "payments", security(("bearer" = [])),
    params(("paymentId" = i64, Path, minimum = 1)),
    responses(
        (status = 200, body = PaymentView),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 404, description = "NOT_FOUND, also for another user's payment", body = Problem)))]
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    PathId(payment_id): PathId,
) -> Result<Json<PaymentView>, AppError> {
    Ok(Json(payments::find(&state.db, payment_id, caller.user_id, caller.is_admin()).await?))
}
