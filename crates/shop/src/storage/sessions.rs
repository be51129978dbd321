//! Logins and the one refresh token each holds (see migration 0008).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

pub async fn start(
    conn: &mut PgConnection,
    id: Uuid,
    user_id: i64,
    refresh_token_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO sessions (id, user_id, refresh_token_id, expires_at) VALUES ($1, $2, $3, $4)",
        id,
        user_id,
        refresh_token_id,
        expires_at,
    )
    .execute(conn)
    .await
    .map(drop)
}

/// How presenting a refresh token went.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// It was the login's current token; `next` is now.
    Rotated,
    /// It was an earlier one: the login is revoked.
    Reused,
    /// No such live login (logged out, expired, revoked, the account gone).
    Unknown,
}

/// Swaps the login's current refresh token `presented` for `next`, in one
/// statement: of two refreshes with one token, one wins and the other finds
/// a token already used — which revokes the login, as a replay would.
pub async fn rotate(
    conn: &mut PgConnection,
    id: Uuid,
    presented: Uuid,
    next: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<Rotation, sqlx::Error> {
    let rotated = sqlx::query!(
        "UPDATE sessions SET refresh_token_id = $3, refreshed_at = now(), expires_at = $4
         WHERE id = $1 AND refresh_token_id = $2 AND revoked_at IS NULL AND expires_at > now()",
        id,
        presented,
        next,
        expires_at,
    )
    .execute(&mut *conn)
    .await?;
    if rotated.rows_affected() == 1 {
        return Ok(Rotation::Rotated);
    }
    let revoked = sqlx::query!(
        "UPDATE sessions SET revoked_at = now(), revoked_because = 'REUSED'
         WHERE id = $1 AND refresh_token_id <> $2 AND revoked_at IS NULL",
        id,
        presented,
    )
    .execute(conn)
    .await?;
    Ok(if revoked.rows_affected() == 1 { Rotation::Reused } else { Rotation::Unknown })
}

/// Revokes one of the user's logins; whether it was live.
pub async fn revoke(conn: &mut PgConnection, id: Uuid, user_id: i64) -> Result<bool, sqlx::Error> {
    let revoked = sqlx::query!(
        "UPDATE sessions SET revoked_at = now(), revoked_because = 'LOGOUT'
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        id,
        user_id,
    )
    .execute(conn)
    .await?;
    Ok(revoked.rows_affected() == 1)
}

/// Revokes every live login of the user; how many.
pub async fn revoke_all(conn: &mut PgConnection, user_id: i64) -> Result<u64, sqlx::Error> {
    let revoked = sqlx::query!(
        "UPDATE sessions SET revoked_at = now(), revoked_because = 'LOGOUT_ALL'
         WHERE user_id = $1 AND revoked_at IS NULL",
        user_id,
    )
    .execute(conn)
    .await?;
    Ok(revoked.rows_affected())
}

/// Deletes logins whose last refresh token has expired: nothing can
/// present them any more.
pub async fn purge_expired(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let purged = sqlx::query!("DELETE FROM sessions WHERE expires_at < now()").execute(conn).await?;
    Ok(purged.rows_affected())
}
