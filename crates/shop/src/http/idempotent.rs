//! Runs a state-changing operation under its request's `Idempotency-Key`.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::AppState;
use super::error::problem_response;
use super::extract::IdempotencyHeader;
use crate::auth::Caller;
use crate::error::AppError;
use crate::idempotency::{self, Begun, Claim, Fingerprint, Settled, StoredResponse};

impl IdempotencyHeader {
    /// For an operation whose holds outside PostgreSQL a dead request
    /// leaves for up to `within` (see the strategies' `holds_settle_within`).
    pub fn holding(self, within: std::time::Duration) -> Self {
        Self { holds_settle_within: within, ..self }
    }

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
        let claim = match idempotency::begin(
            &state.db,
            state.instance,
            self.holds_settle_within,
            caller.user_id,
            &key,
            &fingerprint,
        )
        .await?
        {
            Begun::Replay(stored) => return Ok(replay(stored)),
            Begun::Fresh(claim) => claim,
        };
        let error = match operation(Some(&claim)).await {
            Ok(answer) => return Ok(answer.into_response()),
            Err(error) => error,
        };
        match claim.settle(&state.db, &error).await {
            Ok(Settled::Ours) => Err(error),
            // The key is the retry's now: its answer, or IN_USE while it runs.
            Ok(Settled::TakenOver) => match idempotency::stored_answer(&state.db, caller.user_id, &key).await? {
                Some(stored) => Ok(replay(stored)),
                None => Err(AppError::IdempotencyKeyInUse),
            },
            Err(settle_error) => {
                // The claim stays until it is stale; retries get IN_USE until then.
                tracing::error!(error = %settle_error, "could not settle an idempotency claim");
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
