//! Liveness, readiness and Prometheus metrics.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::Problem;
use super::extract::Json;
use crate::error::AppError;
use crate::storage::outbox;

/// How long readiness waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready`, `unavailable`, or `draining` (shutting down).
    status: &'static str,
    /// Each dependency that was checked: `up` or `down`.
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<&'static str>,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", operation_id = "live", tag = "health", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "ok", postgres: None, redis: None })
}

/// PostgreSQL and Redis both answer, and the server is not shutting down.
#[utoipa::path(get, path = "/health/ready", operation_id = "ready", tag = "health",
    responses((status = 200, body = Health), (status = 503, description = "names the dependency that is down, or says the server is draining", body = Health)))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let postgres = async {
        let ping = async { sqlx::query!("SELECT 1 AS ping").fetch_one(&mut *state.db.read().await?).await };
        matches!(tokio::time::timeout(PROBE_TIMEOUT, ping).await, Ok(Ok(_)))
    };
    let redis = async {
        let mut redis = state.redis.clone();
        let ping = redis::cmd("PING");
        matches!(tokio::time::timeout(PROBE_TIMEOUT, ping.query_async::<String>(&mut redis)).await, Ok(Ok(_)))
    };
    let (postgres, redis) = tokio::join!(postgres, redis);
    let word = |up: bool| if up { "up" } else { "down" };
    let (status, code) = if state.draining.load(Ordering::Relaxed) {
        ("draining", StatusCode::SERVICE_UNAVAILABLE)
    } else if postgres && redis {
        ("ready", StatusCode::OK)
    } else {
        ("unavailable", StatusCode::SERVICE_UNAVAILABLE)
    };
    (code, Json(Health { status, postgres: Some(word(postgres)), redis: Some(word(redis)) }))
}

/// Prometheus text format: requests per route and status, lock waits,
/// optimistic retries, gate outcomes, outbox backlog, issue requests
/// pending. With METRICS_ADDR set, served only there (404 here).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health",
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 404, description = "NOT_FOUND: served on the metrics address instead, when one is set", body = Problem)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    if state.metrics_elsewhere {
        return AppError::not_found("metrics are served on METRICS_ADDR").into_response();
    }
    scrape(State(state)).await.into_response()
}

/// The scrape itself, wherever it is served.
pub async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    // Read when scraped: a count over a partial index of undelivered events.
    let backlog = async { outbox::backlog(&mut *state.db.read().await?).await };
    match backlog.await {
        Ok((backlog, oldest)) => {
            metrics::gauge!("shop_outbox_backlog").set(backlog as f64);
            metrics::gauge!("shop_outbox_oldest_undelivered_seconds").set(oldest);
        }
        Err(error) => tracing::warn!(%error, "could not count the outbox backlog"),
    }
    let pending = async {
        sqlx::query_scalar!(r#"SELECT count(*) AS "pending!" FROM coupon_issue_requests WHERE status = 'PENDING'"#)
            .fetch_one(&mut *state.db.read().await?)
            .await
    };
    match pending.await {
        Ok(pending) => metrics::gauge!("shop_async_issue_pending").set(pending as f64),
        Err(error) => tracing::warn!(%error, "could not count the pending issue requests"),
    }
    crate::telemetry::collect(&state.db);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
