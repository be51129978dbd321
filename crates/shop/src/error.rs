//! The crate's one error type: every layer returns it, and `?` converts
//! into it from the database, Redis and the domain's own errors, here. Each
//! variant knows its HTTP status and the machine-readable `code` clients
//! see; `http::error` turns it into `application/problem+json`.

use axum::http::StatusCode;

use crate::domain::ValidationError;
use crate::domain::points::ChargeLimitExceeded;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("this route does not accept that method")]
    MethodNotAllowed,
    #[error("the body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    #[error("this email is already registered")]
    EmailTaken,
    #[error("{0}")]
    ChargeLimitExceeded(String),
    #[error("{0}")]
    Conflict(String),
    #[error("this coupon type is not open for issue now")]
    CouponNotOpen,
    #[error("no coupons of this type are left")]
    CouponSoldOut,
    #[error("you already hold a coupon of this type")]
    CouponAlreadyIssued,
    #[error("not enough stock for every item; nothing was taken")]
    OutOfStock,
    #[error("{0}")]
    CouponNotUsable(&'static str),
    #[error("{0}")]
    OrderNotCancellable(&'static str),
    #[error("the order is {0}, not PENDING")]
    OrderNotPayable(&'static str),
    #[error("the order's payment time ran out")]
    OrderExpired,
    #[error("the balance is lower than the amount to pay")]
    InsufficientPoints,
    #[error("{0}")]
    InvalidStateTransition(String),
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still running")]
    IdempotencyKeyInUse,
    #[error("{0}; retry later")]
    ConcurrencyConflict(&'static str),
    /// Too many attempts; the answer says when to come back.
    #[error("{what}; retry in {retry_after_secs} s")]
    RateLimited { what: &'static str, retry_after_secs: u64 },
    /// PostgreSQL or Redis failed before anything was written: a retry is safe.
    #[error("{0}; nothing was changed, retry later")]
    Unavailable(&'static str),
    /// The database connection was lost after COMMIT was sent, and whether it
    /// committed could not be found out in time. The request's
    /// Idempotency-Key stays claimed, so a retry with it replays the answer
    /// once it is known instead of running the request again.
    #[error("the database did not confirm whether the change was saved; retry with the same Idempotency-Key")]
    OutcomeUnknown,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) | Self::InvalidCredentials => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::EmailTaken
            | Self::ChargeLimitExceeded(_)
            | Self::Conflict(_)
            | Self::CouponNotOpen
            | Self::CouponSoldOut
            | Self::CouponAlreadyIssued
            | Self::OutOfStock
            | Self::CouponNotUsable(_)
            | Self::OrderNotCancellable(_)
            | Self::OrderNotPayable(_)
            | Self::OrderExpired
            | Self::InsufficientPoints
            | Self::InvalidStateTransition(_)
            | Self::IdempotencyKeyInUse
            | Self::ConcurrencyConflict(_) => StatusCode::CONFLICT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::OutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether a retry of the same request could get another answer; such
    /// answers are not stored under an Idempotency-Key.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::ConcurrencyConflict(_)
                | Self::IdempotencyKeyInUse
                | Self::RateLimited { .. }
                | Self::Unavailable(_)
                | Self::OutcomeUnknown
                | Self::Internal(_)
        )
    }
}

/// One table for both: the `code` each error answers, and the list of
/// every code the server sends (the API document's enum of them).
macro_rules! codes {
    ($($variant:pat => $code:literal,)*) => {
        impl AppError {
            /// The machine-readable `code` of the problem document.
            pub fn code(&self) -> &'static str {
                match self {
                    $($variant => $code,)*
                }
            }
        }

        /// Every `code` the server sends.
        pub const CODES: &[&str] = &[$($code),*];
    };
}

codes! {
    AppError::Validation(_) => "VALIDATION_FAILED",
    AppError::Unauthenticated(_) => "UNAUTHENTICATED",
    AppError::InvalidCredentials => "INVALID_CREDENTIALS",
    AppError::Forbidden(_) => "FORBIDDEN",
    AppError::NotFound(_) => "NOT_FOUND",
    AppError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
    AppError::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
    AppError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
    AppError::EmailTaken => "EMAIL_TAKEN",
    AppError::ChargeLimitExceeded(_) => "CHARGE_LIMIT_EXCEEDED",
    AppError::Conflict(_) => "CONFLICT",
    AppError::CouponNotOpen => "COUPON_NOT_OPEN",
    AppError::CouponSoldOut => "COUPON_SOLD_OUT",
    AppError::CouponAlreadyIssued => "COUPON_ALREADY_ISSUED",
    AppError::OutOfStock => "OUT_OF_STOCK",
    AppError::CouponNotUsable(_) => "COUPON_NOT_USABLE",
    AppError::OrderNotCancellable(_) => "ORDER_NOT_CANCELLABLE",
    AppError::OrderNotPayable(_) => "ORDER_NOT_PAYABLE",
    AppError::OrderExpired => "ORDER_EXPIRED",
    AppError::InsufficientPoints => "INSUFFICIENT_POINTS",
    AppError::InvalidStateTransition(_) => "INVALID_STATE_TRANSITION",
    AppError::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
    AppError::IdempotencyKeyInUse => "IDEMPOTENCY_KEY_IN_USE",
    AppError::ConcurrencyConflict(_) => "CONCURRENCY_CONFLICT",
    AppError::RateLimited { .. } => "RATE_LIMITED",
    AppError::Unavailable(_) | AppError::OutcomeUnknown => "SERVICE_UNAVAILABLE",
    AppError::Internal(_) => "INTERNAL",
}

/// A database failure as the client should see it: a lost race (a deadlock,
/// a serialization failure, a lock wait past `lock_timeout`) is
/// `CONCURRENCY_CONFLICT`; a lost or refused connection is
/// `SERVICE_UNAVAILABLE`; anything else is a bug. A failed statement rolls
/// its transaction back, so none of these has changed anything — except a
/// lost COMMIT, which `storage::commit` resolves before it gets here.
impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            return match db.code().as_deref() {
                Some("40P01" | "40001" | "55P03") => {
                    tracing::warn!(%error, "a transaction lost a race in PostgreSQL");
                    Self::ConcurrencyConflict("the change lost a race in the database")
                }
                // Connection exceptions (08), out of connections, memory or
                // disk (53), the server shutting down or starting, or the
                // session or statement timed out or cancelled (57P, 57014,
                // 25P03), a system error such as an I/O error (58).
                Some(code)
                    if ["08", "53", "57P", "58"].iter().any(|class| code.starts_with(class))
                        || matches!(code, "57014" | "25P03") =>
                {
                    tracing::warn!(%error, "PostgreSQL refused or dropped the connection");
                    Self::Unavailable("the database is unavailable")
                }
                // A row of the caller's refers to an account deleted since
                // its token was issued: the token is nobody's.
                Some("23503") if db.constraint().is_some_and(|name| name.ends_with("_user_id_fkey")) => {
                    Self::Unauthenticated("the account no longer exists")
                }
                _ => Self::internal(error),
            };
        }
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => {
                tracing::warn!(%error, "PostgreSQL could not be reached");
                Self::Unavailable("the database is unavailable")
            }
            error => Self::internal(error),
        }
    }
}

impl From<redis::RedisError> for AppError {
    fn from(error: redis::RedisError) -> Self {
        // Unreachable, or refusing for now: loading, a failover in progress
        // (read-only replica, master down), out of memory, busy with a script.
        let unreachable = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || error.is_cluster_error()
            || matches!(error.code(), Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "OOM" | "BUSY"));
        if unreachable {
            tracing::warn!(%error, "Redis could not be reached");
            return Self::Unavailable("Redis is unavailable");
        }
        Self::internal(error)
    }
}

impl From<ValidationError> for AppError {
    fn from(error: ValidationError) -> Self {
        AppError::Validation(error.to_string())
    }
}

impl From<ChargeLimitExceeded> for AppError {
    fn from(exceeded: ChargeLimitExceeded) -> Self {
        AppError::ChargeLimitExceeded(exceeded.to_string())
    }
}

/// Maps a violation of one named constraint to a client error right beside
/// the query, so uniqueness needs no racy check-then-insert.
pub(crate) trait ResultExt<T> {
    fn on_constraint(self, name: &str, to_error: impl FnOnce() -> AppError) -> Result<T, AppError>;
}

impl<T> ResultExt<T> for Result<T, sqlx::Error> {
    fn on_constraint(self, name: &str, to_error: impl FnOnce() -> AppError) -> Result<T, AppError> {
        self.map_err(|error| match &error {
            sqlx::Error::Database(db) if db.constraint() == Some(name) => to_error(),
            _ => AppError::from(error),
        })
    }
}
