//! The running instances, each with the last time it said it was alive.
//!
//! Work an instance leaves unfinished when it dies — an `Idempotency-Key`
//! claimed mid-request — is taken over once its owner has gone quiet,
//! instead of after the longest time a request could run. Taking over is
//! safe even when the owner is only slow, not dead: the owner's effect
//! commits only with its claim intact (see `idempotency`), so a quiet
//! verdict that comes too early costs the slow request its answer, never a
//! double effect.

use std::time::Duration;

use crate::storage::Db;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection, PgExecutor};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often each instance says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silent this long, an instance is taken for gone: three beats, so that
/// one slow beat does not make a live one look dead, and short enough that
/// a client retrying a dead instance's request is answered within seconds.
pub const QUIET_AFTER: Duration = Duration::from_secs(3);
/// The longest one beat may take, connecting included.
const BEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Instances silent this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// This process, as the other instances know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance(Uuid);

impl Instance {
    /// Says this process is running, under a new id, trying again for up
    /// to `patience` while the database does not answer (a connection cut
    /// mid-start is no reason not to start). Like every beat, on a
    /// connection to PostgreSQL itself.
    pub async fn register(db: &Db, patience: Duration) -> Result<Self, sqlx::Error> {
        let instance = Self(Uuid::new_v4());
        let started = std::time::Instant::now();
        loop {
            let beaten = async { instance.beat(&mut db.direct().connect().await?).await };
            match beaten.await {
                Ok(()) => return Ok(instance),
                Err(error) if started.elapsed() < patience => {
                    tracing::debug!(%error, "cannot register this instance yet");
                    tokio::time::sleep(HEARTBEAT / 5).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    pub fn id(self) -> Uuid {
        self.0
    }

    /// Says it is still alive (and is known again if it was forgotten).
    async fn beat(self, db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
        sqlx::query!("INSERT INTO instances (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET seen_at = now()", self.0)
            .execute(db)
            .await?;
        Ok(())
    }

    /// Says it is alive every [`HEARTBEAT`] until `stop`, on a connection
    /// of its own (made again when lost): on the pool, requests queueing
    /// for connections would silence a live instance.
    pub async fn keep_alive(self, options: PgConnectOptions, stop: CancellationToken) {
        let mut every = tokio::time::interval(HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connection: Option<PgConnection> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let beaten = async {
                let conn = match &mut connection {
                    Some(conn) => conn,
                    None => connection.insert(options.connect().await?),
                };
                self.beat(conn).await
            };
            // A beat stuck this long is as good as missed: its connection is
            // dropped and the next beat makes another. It may take longer than
            // a period (the next one waits) and still land in time.
            match tokio::time::timeout(BEAT_TIMEOUT, beaten).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not say this instance is alive");
                    connection = None;
                }
                Err(_) => {
                    tracing::warn!("saying this instance is alive took longer than {BEAT_TIMEOUT:?}");
                    connection = None;
                }
            }
        }
    }

    /// Says it has stopped, with nothing left in flight: what it claimed
    /// is free for others at once.
    pub async fn leave(self, db: &Db) -> Result<(), sqlx::Error> {
        let mut conn: PgConnection = db.direct().connect().await?;
        sqlx::query!("DELETE FROM instances WHERE id = $1", self.0).execute(&mut conn).await?;
        Ok(())
    }
}

/// Forgets instances silent for a day; run periodically by every instance.
pub async fn forget_gone(db: &Db) -> Result<u64, sqlx::Error> {
    let mut conn = db.write().await?;
    let forgotten = sqlx::query!(
        "DELETE FROM instances WHERE seen_at < now() - make_interval(secs => $1)",
        FORGET_AFTER.as_secs_f64()
    )
    .execute(&mut *conn)
    .await?;
    conn.commit().await?;
    Ok(forgotten.rows_affected())
}
