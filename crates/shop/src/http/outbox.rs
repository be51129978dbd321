//! The outbox, for admins: what is waiting, what failed, and putting a
//! failed event back in line.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::Problem;
use super::extract::{Json, PathText, Query};
use super::pagination::{Page, PageRequest};
use crate::auth::Caller;
use crate::error::AppError;
use crate::storage::outbox::{self, EventRow};

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEventView {
    event_id: Uuid,
    order_id: i64,
    /// `ORDER_PAID` or `ORDER_CANCELLED`.
    #[serde(rename = "type")]
    kind: String,
    sequence: i32,
    /// `PENDING`, `DELIVERED` or `FAILED`.
    status: String,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

impl From<EventRow> for OutboxEventView {
    fn from(row: EventRow) -> Self {
        Self {
            event_id: row.event_id,
            order_id: row.order_id,
            kind: row.event_type,
            sequence: row.sequence,
            status: row.status,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            created_at: row.created_at,
            delivered_at: row.delivered_at,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// `PENDING`, `FAILED` or `DELIVERED`; all when absent.
    status: Option<String>,
    /// 1 to 100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    cursor: Option<String>,
}

/// The outbox's events, newest first (admin).
#[utoipa::path(get, path = "/api/admin/outbox", operation_id = "listOutboxEvents", tag = "admin", security(("bearer" = [])),
    params(OutboxQuery),
    responses(
        (status = 200, body = Page<OutboxEventView>),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<OutboxQuery>,
) -> Result<Json<Page<OutboxEventView>>, AppError> {
    // Only admins learn what the parameters must be.
    caller.require_admin()?;
    let page = PageRequest::parse(query.limit.as_deref(), query.cursor.as_deref(), 20)?;
    let status = query.status.as_deref();
    if status.is_some_and(|status| !["PENDING", "FAILED", "DELIVERED"].contains(&status)) {
        return Err(AppError::Validation("status: must be PENDING, FAILED or DELIVERED".into()));
    }
    let rows = outbox::page(&mut *state.db.read().await?, status, page.after, page.fetch()).await?;
    Ok(Json(page.page(rows, |row| row.id, OutboxEventView::from)))
}

/// Puts a `FAILED` event back in line (admin): `PENDING`, due now, its
/// attempts counted afresh. 409 `CONFLICT` if it is not `FAILED`.
#[utoipa::path(post, path = "/api/admin/outbox/{eventId}/retry", operation_id = "retryOutboxEvent", tag = "admin", security(("bearer" = [])),
    params(("eventId" = String, Path, format = Uuid)),
    responses(
        (status = 204, description = "PENDING again"),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem),
        (status = 409, description = "CONFLICT: the event is not FAILED", body = Problem)))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    PathText(event_id): PathText,
) -> Result<StatusCode, AppError> {
    caller.require_admin()?;
    let event_id = Uuid::parse_str(&event_id).map_err(|_| AppError::Validation("eventId: must be a UUID".into()))?;
    let mut tx = crate::storage::Tx::begin(&state.db).await?;
    match outbox::retry(&mut tx, event_id).await? {
        None => Err(AppError::not_found("no event has this id")),
        Some(false) => Err(AppError::Conflict("only a FAILED event can be retried".into())),
        Some(true) => {
            tx.commit().await?;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
