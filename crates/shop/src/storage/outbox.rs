//! The transactional outbox: an event is written in the transaction of the
//! change it describes, and delivered from here at least once, in order
//! per order.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// The number the order's next event takes. The caller holds the order's
/// row lock, so no other transaction numbers one meanwhile.
pub async fn next_sequence(conn: &mut PgConnection, order_id: i64) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT coalesce(max(sequence), 0) + 1 AS "next!" FROM outbox_events WHERE order_id = $1"#,
        order_id,
    )
    .fetch_one(conn)
    .await
}

/// A new event: its envelope's bytes are what every delivery sends.
pub struct NewEvent<'a> {
    pub event_id: Uuid,
    pub order_id: i64,
    pub event_type: &'a str,
    pub sequence: i32,
    pub data: &'a Value,
    pub body: &'a str,
}

/// Records the event; `outbox_events` is notified once the transaction
/// commits, for whoever delivers events.
pub async fn record(conn: &mut PgConnection, event: &NewEvent<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO outbox_events (event_id, order_id, event_type, payload, sequence, body)
         VALUES ($1, $2, $3, $4, $5, $6)",
        event.event_id,
        event.order_id,
        event.event_type,
        event.data,
        event.sequence,
        event.body,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!("SELECT pg_notify('outbox_events', '')").fetch_one(conn).await.map(drop)
}

/// An event as the relay delivers it.
pub struct DueEvent {
    pub id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub body: String,
    pub attempts: i32,
    pub delivered_to: Vec<String>,
}

/// Locks up to `limit` due events, skipping those another relay holds,
/// each the oldest undelivered event of its order (an order's later event
/// waits until every earlier one is delivered) and each lacking one of
/// `sinks` at least (the others it lacks are left to relays that have
/// them).
pub async fn lock_due(conn: &mut PgConnection, sinks: &[String], limit: i64) -> Result<Vec<DueEvent>, sqlx::Error> {
    sqlx::query_as!(
        DueEvent,
        "SELECT e.id, e.event_id, e.event_type, e.body, e.attempts, e.delivered_to FROM outbox_events e
         WHERE e.status = 'PENDING' AND e.next_attempt_at <= now()
           AND NOT EXISTS (SELECT 1 FROM outbox_events earlier
                           WHERE earlier.order_id = e.order_id AND earlier.id < e.id AND earlier.status <> 'DELIVERED')
           AND EXISTS (SELECT 1 FROM unnest($1::text[]) AS mine (name) WHERE mine.name <> ALL (e.delivered_to))
         ORDER BY e.next_attempt_at, e.id LIMIT $2
         FOR UPDATE OF e SKIP LOCKED",
        sinks,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// How one attempt at an event went.
pub struct Attempt {
    pub id: i64,
    /// Sinks that acknowledged it, this time or before.
    pub delivered_to: Vec<String>,
    /// Why a sink did not, or `None`: delivered everywhere.
    pub error: Option<String>,
    /// When to try again; `None` with an error: it failed for good.
    pub retry_at: Option<DateTime<Utc>>,
}

/// Records a batch's attempts in one statement. An event every registered
/// sink took is delivered; one that a sink registered meanwhile still
/// lacks stays due, for a relay that has that sink.
pub async fn record_attempts(conn: &mut PgConnection, attempts: &[Attempt]) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = attempts.iter().map(|attempt| attempt.id).collect();
    // Sinks that took each event, comma-separated: a text[][] cannot hold
    // rows of different lengths.
    let delivered_to: Vec<String> = attempts.iter().map(|attempt| attempt.delivered_to.join(",")).collect();
    let errors: Vec<Option<String>> = attempts.iter().map(|attempt| attempt.error.clone()).collect();
    let retry_at: Vec<Option<DateTime<Utc>>> = attempts.iter().map(|attempt| attempt.retry_at).collect();
    sqlx::query!(
        "UPDATE outbox_events e
         SET status = CASE WHEN a.done THEN 'DELIVERED'
                           WHEN a.error IS NULL OR a.retry_at IS NOT NULL THEN 'PENDING'
                           ELSE 'FAILED' END,
             attempts = e.attempts + 1, delivered_to = a.delivered_to, last_error = a.error,
             next_attempt_at = coalesce(a.retry_at, e.next_attempt_at),
             delivered_at = CASE WHEN a.done THEN now() END
         FROM (SELECT r.id, r.error, r.retry_at, taken.sinks AS delivered_to,
                      r.error IS NULL AND NOT EXISTS (SELECT 1 FROM event_sinks s WHERE s.name <> ALL (taken.sinks))
                          AS done
               FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[])
                    AS r(id, delivered_to, error, retry_at),
                    LATERAL (SELECT coalesce(string_to_array(nullif(r.delivered_to, ''), ','), '{}') AS sinks) taken) a
         WHERE e.id = a.id",
        &ids,
        &delivered_to,
        &errors as _,
        &retry_at as _,
    )
    .execute(conn)
    .await
    .map(drop)
}

/// An event as the admin's list shows it.
pub struct EventRow {
    pub id: i64,
    pub event_id: Uuid,
    pub order_id: i64,
    pub event_type: String,
    pub sequence: i32,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Events newest first, strictly older than `before_id`, of one status or all.
pub async fn page(
    conn: &mut PgConnection,
    status: Option<&str>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as!(
        EventRow,
        "SELECT id, event_id, order_id, event_type, sequence, status, attempts, next_attempt_at, last_error,
                created_at, delivered_at
         FROM outbox_events WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
        status,
        before_id,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Puts a `FAILED` event back to `PENDING`, due now with its attempts
/// counted afresh; `None` if there is no such event, `Some(false)` if it is
/// not `FAILED`.
pub async fn retry(conn: &mut PgConnection, event_id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    let status = sqlx::query_scalar!("SELECT status FROM outbox_events WHERE event_id = $1 FOR UPDATE", event_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(status) = status else { return Ok(None) };
    if status != "FAILED" {
        return Ok(Some(false));
    }
    sqlx::query!(
        "UPDATE outbox_events SET status = 'PENDING', attempts = 0, next_attempt_at = now() WHERE event_id = $1",
        event_id,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!("SELECT pg_notify('outbox_events', '')").fetch_one(conn).await?;
    Ok(Some(true))
}

/// Deletes delivered events older than `days`; how many.
pub async fn purge_delivered(conn: &mut PgConnection, days: i32) -> Result<u64, sqlx::Error> {
    let purged = sqlx::query!(
        "DELETE FROM outbox_events WHERE status = 'DELIVERED' AND delivered_at < now() - make_interval(days => $1)",
        days,
    )
    .execute(conn)
    .await?;
    Ok(purged.rows_affected())
}

/// The backlog and the age of its oldest event, in seconds.
pub async fn backlog(conn: &mut PgConnection) -> Result<(i64, f64), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "backlog!",
                  coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) AS "oldest!"
           FROM outbox_events WHERE status <> 'DELIVERED'"#
    )
    .fetch_one(conn)
    .await?;
    Ok((row.backlog, row.oldest))
}

/// Adds the sinks an instance names to the deployment's; those already
/// there keep their date.
pub async fn register_sinks(conn: &mut PgConnection, sinks: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query!("INSERT INTO event_sinks (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING", sinks)
        .execute(conn)
        .await
        .map(drop)
}

/// A registered sink and the undelivered events it still lacks.
pub struct RegisteredSink {
    pub name: String,
    pub registered_at: DateTime<Utc>,
    pub lacking: i64,
}

pub async fn registered_sinks(conn: &mut PgConnection) -> Result<Vec<RegisteredSink>, sqlx::Error> {
    sqlx::query_as!(
        RegisteredSink,
        r#"SELECT s.name, s.registered_at,
                  (SELECT count(*) FROM outbox_events e
                   WHERE e.status <> 'DELIVERED' AND s.name <> ALL (e.delivered_to)) AS "lacking!"
           FROM event_sinks s ORDER BY s.name"#
    )
    .fetch_all(conn)
    .await
}

/// Removes a sink from the deployment's; the events that lacked only it are
/// delivered then and there. Whether it was registered.
pub async fn retire_sink(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let retired = sqlx::query!("DELETE FROM event_sinks WHERE name = $1", name).execute(&mut *tx).await?;
    sqlx::query!(
        "UPDATE outbox_events e SET status = 'DELIVERED', delivered_at = now()
         WHERE e.status = 'PENDING'
           AND NOT EXISTS (SELECT 1 FROM event_sinks s WHERE s.name <> ALL (e.delivered_to))"
    )
    .execute(&mut *tx)
    .await?;
    // Their orders' later events may go now.
    sqlx::query!("SELECT pg_notify('outbox_events', '')").fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(retired.rows_affected() == 1)
}
