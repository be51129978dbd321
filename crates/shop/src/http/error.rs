//! The one place where errors become responses: `application/problem+json`
//! (RFC 9457) with a machine-readable `code`, one of `crate::error::CODES`.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::AppError;

/// Seconds a client should wait before retrying a lost race.
const CONFLICT_RETRY_AFTER_SECS: u32 = 1;
/// Seconds a client should wait before retrying when a dependency failed.
const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 2;

/// The problem document of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URN naming the problem type.
    #[serde(rename = "type")]
    #[schema(example = "urn:shop:problem:email-taken")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The machine-readable part, one of the codes of the API contract.
    #[schema(example = "EMAIL_TAKEN")]
    pub code: &'static str,
}

/// The internal error behind a 500, carried to the logging middleware in a
/// response extension so it is logged once, in the request span, and never
/// shown to the client.
#[derive(Clone)]
pub struct InternalErrorReport(pub Arc<anyhow::Error>);

impl AppError {
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let code = self.code();
        Problem {
            kind: format!("urn:shop:problem:{}", code.to_ascii_lowercase().replace('_', "-")),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = problem_response(self.status(), &self.problem());
        match self {
            Self::ConcurrencyConflict(_) | Self::IdempotencyKeyInUse => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(CONFLICT_RETRY_AFTER_SECS));
            }
            Self::RateLimited { retry_after_secs, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::Unavailable(_) | Self::OutcomeUnknown => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS));
            }
            Self::Internal(error) => {
                response.extensions_mut().insert(InternalErrorReport(Arc::new(error)));
            }
            _ => {}
        }
        response
    }
}

/// A problem document as a response; also used to replay stored problems.
pub fn problem_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("a problem serializes");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"))], bytes).into_response()
}
