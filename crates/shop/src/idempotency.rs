//! `Idempotency-Key`: a retried request gets the first answer, and its effect
//! happens once.
//!
//! 1. [`begin`] claims the key with an `INSERT … ON CONFLICT DO NOTHING` in
//!    its own statement, so a second request with the key sees the claim at
//!    once (`IDEMPOTENCY_KEY_IN_USE`) instead of queueing behind it.
//! 2. The operation stores its response with [`Claim::save`] *inside the
//!    transaction that commits its effect*: there is never an effect without
//!    its stored answer, nor a stored answer without its effect.
//! 3. If the operation fails, [`Claim::settle`] stores a final answer (a
//!    domain 4xx, which happened without effect) or frees the key for an
//!    answer a retry could change (5xx, `CONCURRENCY_CONFLICT`) — but never
//!    deletes a stored answer, and keeps the claim when a lost COMMIT could
//!    not be resolved, so that the retry replays rather than re-runs.
//!
//! A claim left by a server that died mid-request had no effect (step 2), so
//! it is taken over once its server has gone quiet (see `instances`), or
//! once it is older than any request can run.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::ValidationError;
use crate::error::AppError;
use crate::instances::{self, Instance};
use crate::storage::Db;

/// Longer than any request runs (lock waits are a few seconds).
const STALE_CLAIM: Duration = Duration::from_secs(60);
/// Keys live at least this long: the contract promises a day.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// 1–255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self, ValidationError> {
        let printable = raw.iter().all(|b| (0x20..=0x7e).contains(b));
        if raw.is_empty() || raw.len() > 255 || !printable {
            return Err(ValidationError::new("Idempotency-Key", "must be 1 to 255 printable ASCII characters"));
        }
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }
}

/// What makes two requests "the same" under one key: method, path and a
/// JSON-equal body (object keys in any order).
#[derive(Debug, Clone)]
pub struct Fingerprint {
    method: String,
    path: String,
    body_hash: Vec<u8>,
}

impl Fingerprint {
    pub fn new(method: &Method, path: &str, body: &Value) -> Self {
        let mut canonical = String::new();
        write_canonical(body, &mut canonical);
        Self {
            method: method.to_string(),
            path: path.to_owned(),
            body_hash: Sha256::digest(canonical.as_bytes()).to_vec(),
        }
    }
}

/// JSON with object keys sorted, so JSON-equal bodies give equal text
/// whatever the order their keys came in.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The answer first given to a request, replayed for its repeats.
pub struct StoredResponse {
    pub status: StatusCode,
    pub body: Value,
}

/// What became of a claim whose operation failed.
pub enum Settled {
    /// Still this request's: its error is the key's answer (stored, if final).
    Ours,
    /// A retry took the key over meanwhile (this request's instance looked
    /// gone): the key's answer is the retry's, not this request's error.
    TakenOver,
}

pub enum Begun {
    /// This request owns the key and must run.
    Fresh(Claim),
    /// A request with this key and fingerprint already finished.
    Replay(StoredResponse),
}

/// Ownership of a key by the running request.
#[derive(Debug, Clone)]
pub struct Claim {
    user_id: i64,
    key: String,
    token: Uuid,
}

struct KeyRow {
    request_method: String,
    request_path: String,
    request_hash: Vec<u8>,
    claim_token: Uuid,
    stale: bool,
    response_status: Option<i16>,
    response_body: Option<Value>,
}

/// `holds_settle_within`: how long the operation's holds outside PostgreSQL
/// may outlive a request that died; a claim is not taken over sooner.
pub async fn begin(
    db: &Db,
    instance: Instance,
    holds_settle_within: Duration,
    user_id: i64,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
) -> Result<Begun, AppError> {
    let mut conn = db.write().await?;
    let begun = claim_or_find(&mut conn, db, instance, holds_settle_within, user_id, key, fingerprint).await;
    // Through a pooler the claim takes effect here (see `storage::db`).
    if let Err(error) = conn.commit().await {
        if let Ok(Begun::Fresh(claim)) = &begun {
            claim.free_later(db.clone());
        }
        return Err(error.into());
    }
    begun
}

async fn claim_or_find(
    conn: &mut PgConnection,
    db: &Db,
    instance: Instance,
    holds_settle_within: Duration,
    user_id: i64,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
) -> Result<Begun, AppError> {
    // The row can vanish between the INSERT and the SELECT (its request failed
    // transiently and freed it); then the next round claims it.
    for _ in 0..3 {
        let claim = Claim { user_id, key: key.0.clone(), token: Uuid::new_v4() };
        let inserted = sqlx::query!(
            "INSERT INTO idempotency_keys
                 (user_id, key, request_method, request_path, request_hash, claim_token, claimed_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            user_id,
            claim.key,
            fingerprint.method,
            fingerprint.path,
            fingerprint.body_hash,
            claim.token,
            instance.id(),
        )
        .execute(&mut *conn)
        .await;
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(error) => {
                // The claim may have been written with its reply lost: undo
                // it once the database answers, or retries find it in use.
                claim.free_later(db.clone());
                return Err(error.into());
            }
        };
        if inserted.rows_affected() == 1 {
            return Ok(Begun::Fresh(claim));
        }
        let Some(row) = find(conn, user_id, &claim.key, holds_settle_within).await? else {
            continue;
        };
        if row.request_method != fingerprint.method
            || row.request_path != fingerprint.path
            || row.request_hash != fingerprint.body_hash
        {
            return Err(AppError::IdempotencyKeyReused);
        }
        if let (Some(status), Some(body)) = (row.response_status, row.response_body) {
            let status = StatusCode::from_u16(status as u16).map_err(AppError::internal)?;
            return Ok(Begun::Replay(StoredResponse { status, body }));
        }
        if row.stale && take_over(conn, instance, &claim, row.claim_token).await? {
            return Ok(Begun::Fresh(claim));
        }
        return Err(AppError::IdempotencyKeyInUse);
    }
    Err(AppError::IdempotencyKeyInUse)
}

async fn find(
    conn: &mut PgConnection,
    user_id: i64,
    key: &str,
    holds_settle_within: Duration,
) -> Result<Option<KeyRow>, sqlx::Error> {
    // Stale: older than any request runs, or claimed by an instance that
    // has gone quiet (claims from before instances were known have no
    // owner) — in both cases no sooner than the operation's holds settle.
    sqlx::query_as!(
        KeyRow,
        r#"SELECT request_method, request_path, request_hash, claim_token,
                  (claimed_at < now() - make_interval(secs => $3)
                   OR (claimed_by IS NOT NULL AND claimed_at < now() - make_interval(secs => $5)
                       AND NOT EXISTS (
                           SELECT FROM instances
                           WHERE id = claimed_by AND seen_at > now() - make_interval(secs => $4)))) AS "stale!",
                  response_status, response_body
           FROM idempotency_keys WHERE user_id = $1 AND key = $2"#,
        user_id,
        key,
        STALE_CLAIM.max(holds_settle_within).as_secs_f64(),
        instances::QUIET_AFTER.as_secs_f64(),
        holds_settle_within.as_secs_f64(),
    )
    .fetch_optional(conn)
    .await
}

async fn take_over(
    conn: &mut PgConnection,
    instance: Instance,
    claim: &Claim,
    stale_token: Uuid,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query!(
        "UPDATE idempotency_keys SET claim_token = $3, claimed_at = now(), claimed_by = $5
         WHERE user_id = $1 AND key = $2 AND claim_token = $4 AND response_status IS NULL",
        claim.user_id,
        claim.key,
        claim.token,
        stale_token,
        instance.id(),
    )
    .execute(conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}

impl Claim {
    /// Stores the response; call it in the transaction that commits the
    /// effect. Fails (and so rolls the effect back) if the claim was taken
    /// over meanwhile, which only happens to a request stuck past
    /// [`STALE_CLAIM`] or on an instance that went quiet.
    pub async fn save(
        &self,
        conn: &mut PgConnection,
        status: StatusCode,
        body: &impl Serialize,
    ) -> Result<(), AppError> {
        let body = serde_json::to_value(body).map_err(AppError::internal)?;
        if self.store(conn, status, &body).await? {
            Ok(())
        } else {
            Err(AppError::ConcurrencyConflict("the Idempotency-Key was taken over by a retry"))
        }
    }

    /// After the operation failed: keep a final answer, free the key when a
    /// retry could be answered differently, and leave it claimed when the
    /// effect may have committed ([`AppError::OutcomeUnknown`]): its answer
    /// was stored with it, so a retry replays it, or, if it did not commit,
    /// takes the claim over once stale.
    pub async fn settle(self, db: &Db, error: &AppError) -> Result<Settled, AppError> {
        if matches!(error, AppError::OutcomeUnknown) {
            // The database cannot be asked now; once it can, the claim goes
            // unless the answer is there (see `free`).
            self.free_later(db.clone());
            return Ok(Settled::Ours);
        }
        let ours = if error.is_transient() {
            match self.free(db).await {
                Ok(freed) => freed,
                Err(error) => {
                    self.free_later(db.clone());
                    return Err(error);
                }
            }
        } else {
            let body = serde_json::to_value(error.problem()).map_err(AppError::internal)?;
            // Nothing to roll back: the failed operation changed nothing.
            let mut conn = db.write().await?;
            let stored = self.store(&mut conn, error.status(), &body).await?;
            conn.commit().await?;
            stored
        };
        Ok(if ours { Settled::Ours } else { Settled::TakenOver })
    }

    /// Deletes the claim unless an answer is stored: a stored answer is
    /// never deleted. Whether it was still this request's to delete. The effect's transaction stores the answer while it
    /// holds the row, so if that transaction is somehow still running the
    /// delete waits for it (a bounded while) and then sees its answer; one
    /// that has not stored it yet finds the claim gone and rolls back.
    async fn free(&self, db: &Db) -> Result<bool, AppError> {
        let mut tx = db.begin().await?;
        sqlx::query!("SELECT set_config('lock_timeout', '1000ms', true)").fetch_one(&mut *tx).await?;
        let freed = sqlx::query!(
            "DELETE FROM idempotency_keys
             WHERE user_id = $1 AND key = $2 AND claim_token = $3 AND response_status IS NULL",
            self.user_id,
            self.key,
            self.token,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(freed.rows_affected() == 1)
    }

    /// [`Claim::free`] in the background, retried while the database does
    /// not answer, for as long as the claim could matter: a claim left in
    /// place makes retries wait ([`STALE_CLAIM`]) for nothing.
    fn free_later(&self, db: Db) {
        let claim = self.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut pause = Duration::from_millis(100);
            while started.elapsed() < STALE_CLAIM {
                tokio::time::sleep(pause).await;
                match claim.free(&db).await {
                    Ok(_) => return,
                    Err(error) => tracing::debug!(%error, "cannot free an idempotency claim yet"),
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Whether the claim was still this request's, and so took the answer.
    async fn store(&self, conn: &mut PgConnection, status: StatusCode, body: &Value) -> Result<bool, sqlx::Error> {
        let stored = sqlx::query!(
            "UPDATE idempotency_keys SET response_status = $4, response_body = $5
             WHERE user_id = $1 AND key = $2 AND claim_token = $3 AND response_status IS NULL",
            self.user_id,
            self.key,
            self.token,
            status.as_u16() as i16,
            body,
        )
        .execute(conn)
        .await?;
        Ok(stored.rows_affected() == 1)
    }
}

/// The answer stored under a key, if there is one yet.
pub async fn stored_answer(db: &Db, user_id: i64, key: &IdempotencyKey) -> Result<Option<StoredResponse>, AppError> {
    let Some(row) = find(&mut *db.read().await?, user_id, &key.0, Duration::ZERO).await? else { return Ok(None) };
    match (row.response_status, row.response_body) {
        (Some(status), Some(body)) => {
            let status = StatusCode::from_u16(status as u16).map_err(AppError::internal)?;
            Ok(Some(StoredResponse { status, body }))
        }
        _ => Ok(None),
    }
}

/// Deletes keys past their retention; run periodically by every instance
/// (concurrent runs only delete the same rows).
pub async fn purge_expired(db: &Db) -> Result<u64, sqlx::Error> {
    let mut conn = db.write().await?;
    let purged = sqlx::query!(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
        RETENTION.as_secs_f64()
    )
    .execute(&mut *conn)
    .await?;
    conn.commit().await?;
    Ok(purged.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        assert!(IdempotencyKey::parse(b"order-2026-11-25#1").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 256]).is_err());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(b"tab\there").is_err());
        assert!(IdempotencyKey::parse("키".as_bytes()).is_err());
    }

    #[test]
    fn json_equal_bodies_share_a_fingerprint() {
        let a: Value = serde_json::from_str(r#"{"amount": 1000, "meta": {"b": 1, "a": [1, 2]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"meta":{"a":[1,2],"b":1},"amount":1000}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"amount": 2000}"#).unwrap();
        let print = |v: &Value| Fingerprint::new(&Method::POST, "/api/x", v).body_hash;
        assert_eq!(print(&a), print(&b));
        assert_ne!(print(&a), print(&c));
    }
}
