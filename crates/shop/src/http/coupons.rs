//! Coupon campaigns and first-come issuance.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::error::Problem;
use super::extract::{IdempotencyHeader, Json, PathId, PathText, decode};
use crate::auth::Caller;
use crate::domain::coupon::{
    CouponCode, CouponFace, CouponKind, CouponStatus, CouponTerms, CouponType, CouponView, IssuedCoupon,
};
use crate::error::{AppError, ResultExt};
use crate::issuance::{Accepted, RequestView};
use crate::storage::{Tx, coupons, users};

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponTypeView {
    code: String,
    kind: CouponKind,
    value: i64,
    min_order_amount: i64,
    total_quantity: i64,
    issued_quantity: i64,
    remaining_quantity: i64,
    valid_days: i32,
    issue_starts_at: Option<DateTime<Utc>>,
    issue_ends_at: Option<DateTime<Utc>>,
}

impl CouponTypeView {
    fn new(coupon_type: CouponType, issued: i64) -> Self {
        let terms = coupon_type.terms;
        Self {
            remaining_quantity: terms.total_quantity - issued,
            issued_quantity: issued,
            code: terms.code.as_str().to_owned(),
            kind: terms.kind,
            value: terms.value,
            min_order_amount: terms.min_order_amount,
            total_quantity: terms.total_quantity,
            valid_days: terms.valid_days,
            issue_starts_at: terms.issue_starts_at,
            issue_ends_at: terms.issue_ends_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponTypeStatus {
    coupon_type: String,
    total_quantity: i64,
    issued: i64,
    remaining: i64,
    sold_out: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewCouponType {
    /// `^[A-Z0-9_]{1,64}$`.
    #[schema(pattern = "^[A-Z0-9_]{1,64}$", example = "WELCOME_3000")]
    code: String,
    kind: CouponKind,
    /// 1–100 (percent) for PERCENT, 1–1,000,000 (won) for FIXED.
    #[schema(minimum = 1, maximum = 1000000)]
    value: i64,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100000000)]
    min_order_amount: i64,
    #[schema(minimum = 1, maximum = 10000000)]
    total_quantity: i64,
    /// Days a coupon stays usable after it is issued.
    #[schema(minimum = 1, maximum = 365)]
    valid_days: i32,
    /// `null`: open from now.
    issue_starts_at: Option<DateTime<Utc>>,
    /// `null`: never closes.
    issue_ends_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssueRequest {
    /// The campaign code.
    #[schema(pattern = "^[A-Z0-9_]{1,64}$", example = "FIXED_1000")]
    coupon_type: String,
    /// Kept for older clients: omit, or give your own id.
    user_id: Option<i64>,
}

/// Every campaign, with what is left of it.
#[utoipa::path(get, path = "/api/coupon-types", operation_id = "listCouponTypes", tag = "coupons",
    responses((status = 200, body = Vec<CouponTypeView>)))]
pub async fn list_types(State(state): State<AppState>) -> Result<Json<Vec<CouponTypeView>>, AppError> {
    let types = coupons::types_with_counts(&mut *state.db.read().await?).await?;
    Ok(Json(types.into_iter().map(|t| CouponTypeView::new(t.coupon_type, t.issued)).collect()))
}

/// How many of a campaign are issued and left.
#[utoipa::path(get, path = "/api/coupons/status/{couponType}", operation_id = "getCouponStatus", tag = "coupons",
    params(("couponType" = String, Path, pattern = "^[A-Z0-9_]{1,64}$")),
    responses(
        (status = 200, body = CouponTypeStatus),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem)))]
pub async fn status(
    State(state): State<AppState>,
    PathText(code): PathText,
) -> Result<Json<CouponTypeStatus>, AppError> {
    let code = CouponCode::parse(&code)?;
    let coupon_type = find_type(&state, &code).await?;
    let issued = coupons::issued_count(&mut *state.db.read().await?, coupon_type.id).await?;
    Ok(Json(CouponTypeStatus {
        coupon_type: coupon_type.terms.code.as_str().to_owned(),
        total_quantity: coupon_type.terms.total_quantity,
        issued,
        remaining: coupon_type.terms.total_quantity - issued,
        sold_out: issued >= coupon_type.terms.total_quantity,
    }))
}

/// Creates a campaign (admin).
#[utoipa::path(post, path = "/api/admin/coupon-types", operation_id = "createCouponType", tag = "admin", security(("bearer" = [])),
    request_body = NewCouponType,
    responses(
        (status = 201, body = CouponTypeView),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem),
        (status = 409, description = "CONFLICT: the code exists", body = Problem)))]
pub async fn create_type(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewCouponType>,
) -> Result<(StatusCode, Json<CouponTypeView>), AppError> {
    let terms = CouponTerms {
        code: CouponCode::parse(&new.code)
            .map_err(|_| AppError::Validation("code: must match ^[A-Z0-9_]{1,64}$".into()))?,
        kind: new.kind,
        value: new.value,
        min_order_amount: new.min_order_amount,
        total_quantity: new.total_quantity,
        valid_days: new.valid_days,
        issue_starts_at: new.issue_starts_at,
        issue_ends_at: new.issue_ends_at,
    }
    .validate()?;
    caller.require_admin()?;
    let mut tx = Tx::begin(&state.db).await?;
    let created = coupons::insert_type(&mut tx, &terms)
        .await
        .on_constraint("coupon_types_code_key", || AppError::Conflict("a coupon type with this code exists".into()))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(CouponTypeView::new(created, 0))))
}

/// Issues a coupon, first come first served. However many requests arrive at
/// once, exactly min(distinct users, totalQuantity) coupons are issued, never
/// two of a type to one user. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/api/coupons/issue", operation_id = "issueCoupon", tag = "coupons", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 printable ASCII characters")),
    request_body = IssueRequest,
    responses(
        (status = 201, body = CouponView),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN: userId is not yours", body = Problem),
        (status = 404, description = "NOT_FOUND: no such coupon type", body = Problem),
        (status = 409, description = "COUPON_NOT_OPEN, COUPON_SOLD_OUT, COUPON_ALREADY_ISSUED or IDEMPOTENCY_KEY_IN_USE", body = Problem),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = Problem)))]
pub async fn issue(
    State(state): State<AppState>,
    caller: Caller,
    idempotency: IdempotencyHeader,
    Json(body): Json<Value>,
) -> Result<Response, AppError> {
    let request: IssueRequest = decode(&body)?;
    let code = CouponCode::parse(&request.coupon_type)?;
    caller.check_body_user(request.user_id)?;
    idempotency
        .holding(state.coupons.holds_settle_within())
        .run(&state, caller, &body, async |claim| {
            let coupon_type = find_type(&state, &code).await?;
            let coupon = state.coupons.issue_alone(&state.db, &coupon_type, caller.user_id, claim).await?;
            Ok((StatusCode::CREATED, Json(coupon)))
        })
        .await
}

/// Asks for a coupon and returns at once: 202 with a request to follow
/// (`GET /api/coupons/issue-requests/{requestId}`), which ends `ISSUED` or
/// `REJECTED` within seconds. Answers already final come at once, as for
/// the synchronous issue; `COUPON_ALREADY_ISSUED` also while the user's
/// earlier request is pending. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/api/coupons/issue-async", operation_id = "issueCouponAsync", tag = "coupons", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 printable ASCII characters")),
    request_body = IssueRequest,
    responses(
        (status = 202, body = Accepted),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN: userId is not yours", body = Problem),
        (status = 404, description = "NOT_FOUND: no such coupon type", body = Problem),
        (status = 409, description = "COUPON_NOT_OPEN, COUPON_SOLD_OUT, COUPON_ALREADY_ISSUED or IDEMPOTENCY_KEY_IN_USE", body = Problem),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = Problem)))]
pub async fn issue_async(
    State(state): State<AppState>,
    caller: Caller,
    idempotency: IdempotencyHeader,
    Json(body): Json<Value>,
) -> Result<Response, AppError> {
    let request: IssueRequest = decode(&body)?;
    let code = CouponCode::parse(&request.coupon_type)?;
    caller.check_body_user(request.user_id)?;
    idempotency
        .holding(state.coupons.holds_settle_within())
        .run(&state, caller, &body, async |claim| {
            let coupon_type = find_type(&state, &code).await?;
            let accepted = state.issuance.accept(&coupon_type, caller.user_id, claim).await?;
            Ok((StatusCode::ACCEPTED, Json(accepted)))
        })
        .await
}

/// An asynchronous issue request: `PENDING`, then `ISSUED` (with its
/// coupon) or `REJECTED` (with a reason). Only its requester or an admin
/// may read it.
#[utoipa::path(get, path = "/api/coupons/issue-requests/{requestId}", operation_id = "getIssueRequest", tag = "coupons", security(("bearer" = [])),
    params(("requestId" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = RequestView),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 404, description = "NOT_FOUND, also for another user's request", body = Problem)))]
pub async fn issue_request(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
) -> Result<Json<RequestView>, AppError> {
    let id = Uuid::parse_str(&id).map_err(|_| AppError::Validation("requestId: must be a UUID".into()))?;
    Ok(Json(state.issuance.find(id, caller.user_id, caller.is_admin()).await?))
}

/// Every coupon the user holds, whatever its status, newest first. Also
/// served at `GET /api/coupons/user/{userId}`, its older path.
#[utoipa::path(get, path = "/api/users/{userId}/coupons", operation_id = "listUserCoupons", tag = "coupons", security(("bearer" = [])),
    params(("userId" = i64, Path, minimum = 1)),
    responses(
        (status = 200, body = Vec<CouponView>),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem)))]
pub async fn held(
    State(state): State<AppState>,
    caller: Caller,
    PathId(user_id): PathId,
) -> Result<Json<Vec<CouponView>>, AppError> {
    caller.may_act_for(user_id)?;
    let mut conn = state.db.read().await?;
    if !users::exists(&mut conn, user_id).await? {
        return Err(AppError::not_found("user not found"));
    }
    let now = Utc::now();
    let held = coupons::held_by(&mut conn, user_id).await?;
    Ok(Json(
        held.into_iter()
            .map(|held| {
                let face = CouponFace {
                    code: &held.code,
                    kind: CouponKind::from_stored(&held.kind),
                    value: held.value,
                    min_order_amount: held.min_order_amount,
                };
                let coupon = &held.coupon;
                CouponView::new(
                    face,
                    IssuedCoupon {
                        coupon_id: coupon.id,
                        user_id,
                        issued_at: coupon.issued_at,
                        expires_at: coupon.expires_at,
                        status: CouponStatus::of(&coupon.status, coupon.expires_at, now),
                    },
                )
            })
            .collect(),
    ))
}

async fn find_type(state: &AppState, code: &CouponCode) -> Result<std::sync::Arc<CouponType>, AppError> {
    state
        .coupon_types
        .find(&state.db, code.as_str())
        .await?
        .ok_or_else(|| AppError::not_found("no coupon type has this code"))
}
