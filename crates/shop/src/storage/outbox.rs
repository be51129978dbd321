//! The transactional outbox: an event is written in the transaction of the
//! change it describes.

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
