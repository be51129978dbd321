//! Accounts. A user and their empty wallet are created together.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::user::Role;

#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
}

impl UserRow {
    pub fn role(&self) -> Role {
        Role::from_stored(&self.role)
    }
}

/// Inserts a user and their wallet. A taken email violates `users_email_key`,
/// even when two sign-ups race: the database decides, not a prior lookup.
pub async fn insert(
    conn: &mut PgConnection,
    email: &str,
    name: &str,
    password_hash: &str,
    role: Role,
) -> Result<UserRow, sqlx::Error> {
    sqlx::query_as!(
        UserRow,
        "WITH new_user AS (
             INSERT INTO users (email, name, password_hash, role) VALUES ($1, $2, $3, $4)
             RETURNING id, email, name, password_hash, role, created_at
         ), wallet AS (
             INSERT INTO point_wallets (user_id) SELECT id FROM new_user
         )
         SELECT * FROM new_user",
        email,
        name,
        password_hash,
        role.as_str(),
    )
    .fetch_one(conn)
    .await
}

pub async fn find_by_email(conn: &mut PgConnection, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as!(
        UserRow,
        "SELECT id, email, name, password_hash, role, created_at FROM users WHERE email = $1",
        email
    )
    .fetch_optional(conn)
    .await
}

pub async fn find(conn: &mut PgConnection, id: i64) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as!(UserRow, "SELECT id, email, name, password_hash, role, created_at FROM users WHERE id = $1", id)
        .fetch_optional(conn)
        .await
}

/// The account's role as stored now; `None` if the account is gone.
pub async fn role(conn: &mut PgConnection, id: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!("SELECT role FROM users WHERE id = $1", id).fetch_optional(conn).await
}

pub async fn exists(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "exists!""#, id).fetch_one(conn).await
}

/// Swaps the account's password hash for `new`, if it is still `old`.
pub async fn replace_password_hash(conn: &mut PgConnection, id: i64, old: &str, new: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2", id, old, new)
        .execute(conn)
        .await
        .map(drop)
}

/// Makes the account an admin with this password hash.
pub async fn promote_to_admin(conn: &mut PgConnection, id: i64, password_hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE users SET role = 'admin', password_hash = $2 WHERE id = $1", id, password_hash)
        .execute(conn)
        .await
        .map(drop)
}
