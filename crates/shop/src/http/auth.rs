//! Sign-up, login, token refresh and the caller's own profile.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::Problem;
use super::extract::Json;
use crate::auth::{Caller, TokenPair};
use crate::domain::user::{Email, Password, Role, UserName};
use crate::error::{AppError, ResultExt};
use crate::storage::Tx;
use crate::storage::sessions::{self, Rotation};
use crate::storage::users::{self, UserRow};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// A valid address of at most 254 characters; stored trimmed and lower-cased.
    #[schema(example = "kim@example.com", format = Email, max_length = 254)]
    email: String,
    /// 8 to 64 characters.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 64)]
    password: String,
    /// 1 to 50 characters after trimming.
    #[schema(example = "김철수", min_length = 1, max_length = 50)]
    name: String,
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    user_id: i64,
    email: String,
    name: String,
    role: Role,
    access_token: String,
    refresh_token: String,
    /// When the access token expires.
    expires_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    user_id: i64,
    email: String,
    name: String,
    role: Role,
    created_at: DateTime<Utc>,
}

/// Registers an account. Exactly one of many simultaneous sign-ups of one email succeeds.
#[utoipa::path(post, path = "/api/auth/register", operation_id = "register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, body = AuthResponse),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 409, description = "EMAIL_TAKEN", body = Problem)))]
pub async fn register(
    State(state): State<AppState>,
    Json(request): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<AuthResponse>), AppError> {
    let email = Email::parse(&request.email)?;
    let password = Password::parse(request.password)?;
    let name = UserName::parse(&request.name)?;
    // Spares a hash for the common case; the unique constraint decides races.
    if users::find_by_email(&mut *state.db.read().await?, email.as_str()).await?.is_some() {
        return Err(AppError::EmailTaken);
    }
    fail::fail_point!("auth::signup::read");
    let hash = state.passwords.hash(password.expose()).await?;
    let mut tx = Tx::begin(&state.db).await?;
    let user = users::insert(&mut tx, email.as_str(), name.as_str(), &hash, Role::User)
        .await
        .on_constraint("users_email_key", || AppError::EmailTaken)?;
    let signed_in = sign_in(&state, &mut tx, user).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(signed_in)))
}

/// Exchanges email and password for tokens.
#[utoipa::path(post, path = "/api/auth/login", operation_id = "login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, body = AuthResponse),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 401, description = "INVALID_CREDENTIALS, for a wrong email and a wrong password alike", body = Problem),
        (status = 429, description = "RATE_LIMITED: too many failed logins for this email or from this address; see Retry-After", body = Problem)))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Json(request): Json<LoginRequest>,
) -> Result<Json<AuthResponse>, AppError> {
    let email = request.email.trim().to_lowercase();
    let admitted = state.logins.admit(&email, client.ip()).await?;
    let checked = async {
        let user = users::find_by_email(&mut *state.db.read().await?, &email).await?;
        let hash = user.as_ref().map(|user| user.password_hash.as_str());
        match (state.passwords.verify(&request.password, hash).await?, user) {
            (true, Some(user)) => Ok(user),
            _ => Err(AppError::InvalidCredentials),
        }
    };
    let user = match checked.await {
        // Only a wrong password counts as a failure.
        Err(AppError::InvalidCredentials) => return Err(AppError::InvalidCredentials),
        outcome => {
            state.logins.give_back(admitted).await;
            outcome?
        }
    };
    if !state.passwords.is_current(&user.password_hash)
        && let Err(error) = renew_hash(&state, &user, &request.password).await
    {
        // The login stands; the next one tries again.
        tracing::warn!(%error, user_id = user.id, "could not renew a password hash made at an old cost");
    }
    let mut conn = state.db.write().await?;
    let signed_in = sign_in(&state, &mut conn, user).await?;
    conn.commit().await?;
    Ok(Json(signed_in))
}

/// Hashes the password again at today's cost, unless the hash was changed
/// meanwhile (a new admin password, say).
async fn renew_hash(state: &AppState, user: &UserRow, password: &str) -> Result<(), AppError> {
    let renewed = state.passwords.hash(password).await?;
    let mut conn = state.db.write().await?;
    users::replace_password_hash(&mut conn, user.id, &user.password_hash, &renewed).await?;
    Ok(conn.commit().await?)
}

/// Exchanges a refresh token for a new token pair. Each refresh token is
/// good for one refresh; presenting one already used revokes its login.
/// Access tokens are refused here.
#[utoipa::path(post, path = "/api/auth/refresh", operation_id = "refreshTokens", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, body = AuthResponse),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 401, description = "UNAUTHENTICATED: invalid, expired, already used (which revokes its login) or logged out", body = Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<Json<AuthResponse>, AppError> {
    let (caller, presented) = state
        .tokens
        .verify_refresh(&request.refresh_token)
        .ok_or(AppError::Unauthenticated("the refresh token is invalid or expired"))?;
    // A `Tx`, whose lost COMMIT is looked into: answered 503 after the
    // rotation committed, the client would retry with the old token and end
    // its own login as a reuse.
    let mut tx = Tx::begin(&state.db).await?;
    // The account's current role goes into the new tokens.
    let user =
        users::find(&mut tx, caller.user_id).await?.ok_or(AppError::Unauthenticated("the account no longer exists"))?;
    let role = user.role();
    let tokens = state.tokens.issue(Caller { role, ..caller }).map_err(AppError::Internal)?;
    let rotation =
        sessions::rotate(&mut tx, caller.session, presented, tokens.refresh_id, tokens.refresh_expires_at).await?;
    tx.commit().await?;
    match rotation {
        Rotation::Rotated => Ok(Json(AuthResponse::new(user, tokens))),
        Rotation::Reused => {
            tracing::warn!(user_id = caller.user_id, session = %caller.session, "a used refresh token was presented again: login revoked");
            Err(AppError::Unauthenticated("the refresh token was already used; sign in again"))
        }
        Rotation::Unknown => Err(AppError::Unauthenticated("the login has ended; sign in again")),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogoutRequest {
    /// The login to end, if not the access token's own.
    refresh_token: Option<String>,
}

/// Ends a login: its refresh tokens stop working on every instance at once.
/// Which login: the given refresh token's (it must be the caller's), else
/// the access token's. The access token itself lives until it expires.
#[utoipa::path(post, path = "/api/auth/logout", operation_id = "logout", tag = "auth", security(("bearer" = [])),
    request_body(content = Option<LogoutRequest>, description = "optional: no body ends the access token's own login"),
    responses(
        (status = 204, description = "the login's refresh tokens are revoked"),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 401, description = "UNAUTHENTICATED, also for a refresh token that is not valid or not yours", body = Problem)))]
pub async fn logout(
    State(state): State<AppState>,
    caller: Caller,
    body: Option<Json<LogoutRequest>>,
) -> Result<StatusCode, AppError> {
    let session = match body.and_then(|Json(body)| body.refresh_token) {
        Some(token) => match state.tokens.verify_refresh(&token) {
            Some((owner, _)) if owner.user_id == caller.user_id => owner.session,
            _ => return Err(AppError::Unauthenticated("the refresh token is invalid or not yours")),
        },
        None => caller.session,
    };
    let mut conn = state.db.write().await?;
    sessions::revoke(&mut conn, session, caller.user_id).await?;
    conn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every login of the caller: every refresh token stops working.
#[utoipa::path(post, path = "/api/auth/logout-all", operation_id = "logoutAll", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "every refresh token of the caller is revoked")))]
pub async fn logout_all(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, AppError> {
    let mut conn = state.db.write().await?;
    sessions::revoke_all(&mut conn, caller.user_id).await?;
    conn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's profile.
#[utoipa::path(get, path = "/api/users/me", operation_id = "getMe", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Me)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Me>, AppError> {
    let user = users::find(&mut *state.db.read().await?, caller.user_id)
        .await?
        .ok_or(AppError::Unauthenticated("the account no longer exists"))?;
    Ok(Json(Me {
        user_id: user.id,
        role: user.role(),
        email: user.email,
        name: user.name,
        created_at: user.created_at,
    }))
}

/// Starts a login for the user: its row and its first tokens.
async fn sign_in(state: &AppState, conn: &mut PgConnection, user: UserRow) -> Result<AuthResponse, AppError> {
    let caller = Caller { user_id: user.id, role: user.role(), session: Uuid::new_v4() };
    let tokens = state.tokens.issue(caller).map_err(AppError::Internal)?;
    sessions::start(conn, caller.session, user.id, tokens.refresh_id, tokens.refresh_expires_at).await?;
    Ok(AuthResponse::new(user, tokens))
}

impl AuthResponse {
    fn new(user: UserRow, tokens: TokenPair) -> Self {
        Self {
            user_id: user.id,
            role: user.role(),
            email: user.email,
            name: user.name,
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at: tokens.expires_at,
        }
    }
}
