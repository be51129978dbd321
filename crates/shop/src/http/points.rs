//! A user's point balance: read, charge, history.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::Problem;
use super::extract::{IdempotencyHeader, Json, PathId, Query, decode};
use super::pagination::{Page, PageRequest};
use crate::auth::Caller;
use crate::domain::points::{ChargeAmount, LedgerKind, PointBalance};
use crate::error::AppError;
use crate::storage::{ledger, users, wallets};
use crate::strategy::points::Charge;

#[derive(Deserialize, ToSchema)]
pub struct ChargeRequest {
    /// Won: a multiple of 1,000 from 1,000 to 1,000,000.
    #[schema(example = 10000, minimum = 1000, maximum = 1000000, multiple_of = 1000)]
    amount: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    id: i64,
    #[serde(rename = "type")]
    kind: LedgerKind,
    /// Signed: negative for USE.
    amount: i64,
    balance_after: i64,
    order_id: Option<i64>,
    created_at: DateTime<Utc>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// 1 to 100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    cursor: Option<String>,
}

/// The user's balance.
#[utoipa::path(get, path = "/api/users/{userId}/points", operation_id = "getBalance", tag = "points", security(("bearer" = [])),
    params(("userId" = i64, Path, minimum = 1)),
    responses(
        (status = 200, body = PointBalance),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem)))]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    PathId(user_id): PathId,
) -> Result<Json<PointBalance>, AppError> {
    caller.may_act_for(user_id)?;
    let balance = wallets::balance(&mut *state.db.read().await?, user_id)
        .await?
        .ok_or_else(|| AppError::not_found("user not found"))?;
    Ok(Json(PointBalance { user_id, balance }))
}

/// Charges points. The daily and monthly charge-count limits hold under
/// concurrent charges too. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/api/users/{userId}/points", operation_id = "chargePoints", tag = "points", security(("bearer" = [])),
    params(("userId" = i64, Path, minimum = 1), ("Idempotency-Key" = Option<String>, Header, description = "1–255 printable ASCII characters")),
    request_body = ChargeRequest,
    responses(
        (status = 200, body = PointBalance),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem),
        (status = 409, description = "CHARGE_LIMIT_EXCEEDED, CONCURRENCY_CONFLICT (with Retry-After) or IDEMPOTENCY_KEY_IN_USE", body = Problem),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = Problem)))]
pub async fn charge(
    State(state): State<AppState>,
    caller: Caller,
    PathId(user_id): PathId,
    idempotency: IdempotencyHeader,
    Json(body): Json<Value>,
) -> Result<Response, AppError> {
    let request: ChargeRequest = decode(&body)?;
    let amount = ChargeAmount::parse(request.amount)?;
    caller.may_act_for(user_id)?;
    let charge = Charge { user_id, amount, on: state.today(), limits: state.charge_limits };
    idempotency
        .run(&state, caller, &body, async |claim| {
            let balance = state.points.charge_alone(&state.db, charge, claim).await?;
            Ok(Json(PointBalance { user_id, balance }))
        })
        .await
}

/// The user's ledger, newest first.
#[utoipa::path(get, path = "/api/users/{userId}/points/history", operation_id = "listPointHistory", tag = "points", security(("bearer" = [])),
    params(("userId" = i64, Path, minimum = 1), HistoryQuery),
    responses(
        (status = 200, body = Page<LedgerEntry>),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem)))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    PathId(user_id): PathId,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Page<LedgerEntry>>, AppError> {
    let page = PageRequest::parse(query.limit.as_deref(), query.cursor.as_deref(), 20)?;
    caller.may_act_for(user_id)?;
    let mut conn = state.db.read().await?;
    if !users::exists(&mut conn, user_id).await? {
        return Err(AppError::not_found("user not found"));
    }
    let rows = ledger::page(&mut conn, user_id, page.after, page.fetch()).await?;
    Ok(Json(page.page(
        rows,
        |row| row.id,
        |row| LedgerEntry {
            id: row.id,
            kind: LedgerKind::from_stored(&row.kind),
            amount: row.amount,
            balance_after: row.balance_after,
            order_id: row.order_id,
            created_at: row.created_at,
        },
    )))
}
