//! The transactional outbox: an event is written in the transaction of the
//! change it describes.

use serde_json::Value;
use sqlx::PgConnection;

pub async fn record(
    conn: &mut PgConnection,
    order_id: i64,
    event_type: &str,
    payload: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO outbox_events (order_id, event_type, payload) VALUES ($1, $2, $3)",
        order_id,
        event_type,
        payload,
    )
    .execute(conn)
    .await
    .map(drop)
}
