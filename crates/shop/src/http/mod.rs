//! HTTP: the shared state, the router (one module per resource) and the
//! middleware every request passes through.

mod auth;
pub mod catalogue;
mod coupons;
pub mod error;
pub mod extract;
mod health;
mod idempotent;
mod openapi;
mod orders;
mod outbox;
mod pagination;
mod payments;
mod points;
mod products;
mod serve;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::redis_conn::RedisConn;
use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use metrics::Label;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::{Instrument, Span};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{LoginThrottle, PasswordHasher, Tokens};
use crate::coupon_types::CouponTypes;
use crate::domain::points::{ChargeDay, ChargeLimits};
use crate::strategy::coupons::CouponStrategy;
use crate::strategy::points::PointsStrategy;
use crate::strategy::stock::StockStrategy;
use crate::top_sellers::TopSellers;
use error::InternalErrorReport;
pub use serve::serve;

use crate::error::AppError;
use crate::storage::Db;

const MAX_BODY_BYTES: usize = 64 * 1024;
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub db: Db,
    /// This process, as the other instances know it.
    pub instance: crate::instances::Instance,
    pub catalogue: catalogue::Catalogue,
    pub redis: RedisConn,
    pub tokens: Tokens,
    pub passwords: PasswordHasher,
    pub logins: LoginThrottle,
    pub points: Arc<dyn PointsStrategy>,
    pub coupons: Arc<dyn CouponStrategy>,
    pub coupon_types: CouponTypes,
    pub issuance: crate::issuance::Issuance,
    pub relay: crate::events::Relay,
    pub stock: Arc<dyn StockStrategy>,
    pub placing: crate::orders::Placing,
    pub top_sellers: TopSellers,
    pub order_payment_timeout_secs: i64,
    pub charge_limits: ChargeLimits,
    pub timezone: chrono_tz::Tz,
    pub metrics: PrometheusHandle,
    /// Requests that change state, each on a task of its own (see
    /// [`run_to_completion`]); shutdown waits for them.
    pub tasks: TaskTracker,
    /// The longest a request may run before it is answered 503.
    pub request_timeout: Duration,
    /// Whether `/metrics` has a listener of its own (METRICS_ADDR).
    pub metrics_elsewhere: bool,
    /// Set when shutdown begins: readiness answers 503 from then on.
    pub draining: AtomicBool,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    /// Today in the shop's time zone.
    pub fn today(&self) -> ChargeDay {
        let today = Utc::now().with_timezone(&self.timezone).date_naive();
        // Tests make this server's clock a number of days behind, as a server
        // whose clock disagrees with the others' would be.
        fail::fail_point!("clock::days_behind", |days: Option<String>| {
            let behind = days.and_then(|days| days.parse().ok()).unwrap_or(1);
            ChargeDay::new(today - chrono::Days::new(behind))
        });
        ChargeDay::new(today)
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The API. `cors_origins`: the browser origins allowed to call it.
pub fn router(state: AppState, cors_origins: &[String]) -> anyhow::Result<Router> {
    let (api, mut openapi) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::logout_all))
        .routes(routes!(auth::me))
        .routes(routes!(points::balance, points::charge))
        .routes(routes!(points::history))
        .routes(routes!(products::list))
        .routes(routes!(products::top_sellers))
        .routes(routes!(products::detail))
        .routes(routes!(products::create))
        .routes(routes!(products::update))
        .routes(routes!(coupons::list_types))
        .routes(routes!(coupons::status))
        .routes(routes!(coupons::create_type))
        .routes(routes!(coupons::issue))
        .routes(routes!(coupons::issue_async))
        .routes(routes!(coupons::issue_request))
        .routes(routes!(coupons::held))
        .routes(routes!(orders::place))
        .routes(routes!(orders::detail))
        .routes(routes!(orders::list))
        .routes(routes!(orders::cancel))
        .routes(routes!(orders::advance))
        .routes(routes!(outbox::list))
        .routes(routes!(outbox::retry))
        .routes(routes!(payments::pay))
        .routes(routes!(payments::detail))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .split_for_parts();
    openapi::document_problem_responses(&mut openapi);

    // Outermost: what every answer carries, preflights included.
    let outer = ServiceBuilder::new()
        .layer(middleware::from_fn(protect_responses))
        .layer(middleware::from_fn(screen_request_id))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID));
    // Between the two, a preflight is answered before routing.
    let cors = tower::util::option_layer(cors(cors_origins)?);
    let layers = ServiceBuilder::new()
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response)
                .on_failure(()),
        )
        .layer(middleware::from_fn(record_metrics))
        .layer(middleware::from_fn_with_state(state.request_timeout, request_deadline))
        .layer(middleware::from_fn_with_state(state.tasks.clone(), run_to_completion))
        .layer(CatchPanicLayer::custom(|_| AppError::internal(anyhow::anyhow!("a handler panicked")).into_response()))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));

    // Older paths kept for existing clients, documented on their operations.
    let api =
        api.route("/api/payments/process", post(payments::pay)).route("/api/coupons/user/{userId}", get(coupons::held));
    Ok(api
        .merge(SwaggerUi::new("/swagger-ui").url("/api/openapi.json", openapi))
        .fallback(async || AppError::not_found("no such route"))
        .method_not_allowed_fallback(async || AppError::MethodNotAllowed)
        .layer(layers)
        .layer(cors)
        .layer(outer)
        .with_state(state))
}

/// `/metrics` alone, for its own listener (METRICS_ADDR).
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(health::scrape)).with_state(state)
}

/// CORS for the configured origins (`*`: any), or none at all: a browser
/// on another origin may call the API with a token, see the headers
/// clients need, and cache its preflight for ten minutes. An origin is
/// `scheme://host[:port]`, exactly as a browser sends it.
fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allowed = if origins.iter().any(|origin| origin.trim() == "*") {
        AllowOrigin::any()
    } else {
        let origins = origins.iter().map(|origin| checked_origin(origin.trim())).collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(origins)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST, Method::PATCH])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, IDEMPOTENCY_KEY, REQUEST_ID, TRACEPARENT])
            .expose_headers([header::RETRY_AFTER, REQUEST_ID, IDEMPOTENT_REPLAYED])
            .max_age(Duration::from_secs(600)),
    ))
}

fn checked_origin(origin: &str) -> anyhow::Result<HeaderValue> {
    let url =
        reqwest::Url::parse(origin).with_context(|| format!("CORS_ALLOWED_ORIGINS: {origin:?} is not an origin"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.origin().ascii_serialization() == origin,
        "CORS_ALLOWED_ORIGINS: {origin:?} is not an origin (scheme://host[:port], nothing after)"
    );
    HeaderValue::from_str(origin).context("CORS_ALLOWED_ORIGINS")
}

fn route_of(request: &Request<Body>) -> &str {
    request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str)
}

fn request_span(request: &Request<Body>) -> Span {
    let request_id = request.headers().get(&REQUEST_ID).and_then(|id| id.to_str().ok()).unwrap_or("-");
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route = route_of(request),
        request_id,
        trace_id = tracing::field::Empty,
        parent_id = tracing::field::Empty,
    );
    if let Some((trace_id, parent_id)) = request.headers().get("traceparent").and_then(trace_parent) {
        span.record("trace_id", trace_id).record("parent_id", parent_id);
    }
    span
}

/// The trace and parent ids of a W3C Trace Context `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`), so that a log line can be found from
/// the caller's trace; anything else is ignored, as the spec asks.
fn trace_parent(header: &HeaderValue) -> Option<(&str, &str)> {
    let mut parts = header.to_str().ok()?.split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && trace_id.bytes().any(|byte| byte != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|byte| byte != b'0')
        && hex(flags, 2);
    valid.then_some((trace_id, parent_id))
}

/// The one log line per request; a 500's cause is logged here, once, in the
/// request span, and never sent to the client.
fn log_response(response: &Response<Body>, latency: Duration, _: &Span) {
    let status = response.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    if let Some(InternalErrorReport(error)) = response.extensions().get::<InternalErrorReport>() {
        tracing::error!(status, latency_ms, error = format!("{error:#}"), "request failed");
    } else {
        tracing::info!(status, latency_ms, "request");
    }
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = route_of(&request).to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = vec![Label::new("method", method), Label::new("route", route), Label::new("status", status)];
    metrics::counter!("http_requests_total", labels.clone()).increment(1);
    metrics::histogram!("http_request_duration_seconds", labels).record(started.elapsed());
    response
}

/// Every response: `nosniff`, so a browser never reads a JSON answer as
/// something it could run; and `no-store` on whatever answers a request
/// that carried a token or asked for one, so no cache keeps tokens or
/// personal data.
async fn protect_responses(request: Request, next: Next) -> Response {
    let private =
        request.headers().contains_key(header::AUTHORIZATION) || request.uri().path().starts_with("/api/auth/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if private {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A client's `X-Request-Id` is echoed and logged: it is kept only if it
/// is 1–64 printable ASCII characters, else replaced by a new one.
async fn screen_request_id(mut request: Request, next: Next) -> Response {
    if let Some(id) = request.headers().get(&REQUEST_ID) {
        let printable = id.as_bytes().iter().all(|byte| (0x20..0x7f).contains(byte));
        if id.is_empty() || id.len() > 64 || !printable {
            request.headers_mut().remove(&REQUEST_ID);
        }
    }
    next.run(request).await
}

/// Labels come from a closed set, so that no client can grow the metrics:
/// a method the API does not use shares one label, as unmatched routes do.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A request still running after `REQUEST_TIMEOUT_MS` is answered 503.
///
/// Its body is read here first, within that time and at most 64 KiB (a
/// larger `Content-Length` is refused before a byte is read): a client that
/// sends its body slowly gets 503 and loses its connection, and nothing
/// has started. Then a read is dropped at the deadline; a change runs on
/// (see [`run_to_completion`]) and may still take effect, so its answer is
/// the one of a COMMIT whose outcome is unknown: retry with the same
/// Idempotency-Key, which replays the outcome.
async fn request_deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let deadline = tokio::time::Instant::now() + timeout;
    let reads = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|length| length.to_str().ok()?.parse().ok());
    if declared.is_some_and(|length: usize| length > MAX_BODY_BYTES) {
        return AppError::PayloadTooLarge.into_response();
    }
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout_at(deadline, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return AppError::PayloadTooLarge.into_response(),
        Err(_) => return AppError::Unavailable("the request's body did not arrive in time").into_response(),
    };
    let request = Request::from_parts(parts, Body::from(body));
    match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) if reads => AppError::Unavailable("the request took too long").into_response(),
        Err(_) => AppError::OutcomeUnknown.into_response(),
    }
}

/// axum drops a handler's future when its client disconnects. A request that
/// changes state must not stop half-way — between a Redis gate and its
/// write, holding a lease or a batch's answer, with an Idempotency-Key
/// claimed — so it runs on a task of its own that the connection only
/// awaits: the task finishes, and settles what it took, whether or not
/// anyone is left to read the answer. Reads are dropped freely.
async fn run_to_completion(State(tasks): State<TaskTracker>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let running = tasks.spawn(next.run(request).in_current_span());
    running
        .await
        .unwrap_or_else(|error| AppError::internal(anyhow::anyhow!("a request task failed: {error}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_parents_are_taken_only_when_well_formed() {
        let parse = |text: &'static str| {
            trace_parent(&HeaderValue::from_static(text)).map(|(trace, parent)| (trace.to_owned(), parent.to_owned()))
        };
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736".to_owned(), "00f067aa0ba902b7".to_owned()))
        );
        for refused in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "not a trace",
        ] {
            assert_eq!(parse(refused), None, "{refused}");
        }
    }
}
