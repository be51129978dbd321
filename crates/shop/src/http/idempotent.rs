//! Runs a state-changing operation under its request's `Idempotency-Key`.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::AppState;
use super::error::problem_response;
use super::extract::IdempotencyHeader;
use crate::auth::Caller;
use crate::error::AppError;
use crate::idempotency::{self, Begun, Claim, Fingerprint, StoredResponse};

impl IdempotencyHeader {
    /// Without a key, just runs `operation`. With one: replays the stored
    /// answer of an earlier identical request, or runs `operation` with the
    /// claim it must save its answer under, inside its transaction.
    pub async fn run<R: IntoResponse>(
        self,
        state: &AppState,
        caller: Caller,
        body: &Value,
        operation: impl AsyncFnOnce(Option<&Claim>) -> Result<R, AppError>,
    ) -> Result<Response, AppError> {
        let Some(key) = self.key else {
            return operation(None).await.map(IntoResponse::into_response);
        };
        let fingerprint = Fingerprint::new(&self.method, &self.path, body);
        let claim = match idempotency::begin(&state.db, state.instance, caller.user_id, &key, &fingerprint).await? {
            Begun::Replay(stored) => return Ok(replay(stored)),
            Begun::Fresh(claim) => claim,
        };
        match operation(Some(&claim)).await {
            Ok(answer) => Ok(answer.into_response()),
            Err(error) => {
                if let Err(settle_error) = claim.settle(&state.db, &error).await {
                    // The claim stays until it is stale; retries get IN_USE until then.
                    tracing::error!(error = %settle_error, "could not settle an idempotency claim");
                }
                Err(error)
            }
        }
    }
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = if stored.status.is_client_error() || stored.status.is_server_error() {
        problem_response(stored.status, &stored.body)
    } else {
        (stored.status, axum::Json(stored.body)).into_response()
    };
    response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
