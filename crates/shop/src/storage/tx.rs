//! Write transactions whose outcome is always known.
//!
//! A COMMIT can reach PostgreSQL and commit while its reply is lost: the
//! connection drops, the network resets, the server restarts right after.
//! The client then cannot tell from the error whether the change happened,
//! and redoing it could apply it twice. So every write transaction learns
//! its transaction id first ([`Tx::begin`], before it takes any lock), and
//! when COMMIT fails without an answer from the server, [`Tx::commit`] asks
//! PostgreSQL on a fresh connection what became of that id
//! (`pg_xact_status`):
//!
//! - `committed`: the commit succeeded; `commit` returns `Ok`.
//! - `aborted`: nothing happened; `SERVICE_UNAVAILABLE`, safe to retry.
//! - `in progress`: the old session has not finished. If it is still there
//!   after a moment (a connection cut without the server noticing), it is
//!   terminated, which settles the transaction one way or the other.
//! - no answer before [`RESOLVE_WITHIN`] (the database is down):
//!   [`AppError::OutcomeUnknown`]. The caller must not redo the work; an
//!   Idempotency-Key claim stays, so a retry replays the answer once the
//!   database can tell.
//!
//! Cost: one round trip per transaction, before its first lock.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection, PgConnection, Postgres, Transaction};

use super::Db;
use crate::error::AppError;

/// How long a lost COMMIT is investigated before the answer is "unknown".
const RESOLVE_WITHIN: Duration = Duration::from_secs(3);
/// How long a transaction may stay `in progress` after its COMMIT was lost
/// before its session is terminated: longer than a commit takes.
const IN_PROGRESS_GRACE: Duration = Duration::from_millis(200);

/// A transaction that knows its id. Derefs to the connection, so queries
/// take `&mut tx` as they take any `&mut PgConnection`.
pub struct Tx {
    tx: Transaction<'static, Postgres>,
    xid: i64,
    db: Db,
}

impl Tx {
    pub async fn begin(db: &Db) -> Result<Self, AppError> {
        let mut tx = db.begin().await?;
        let xid =
            sqlx::query_scalar!(r#"SELECT pg_current_xact_id()::text::bigint AS "xid!""#).fetch_one(&mut *tx).await?;
        Ok(Self { tx, xid, db: db.clone() })
    }

    /// This transaction's id (`xid8`), as PostgreSQL's snapshots name it.
    pub fn xid(&self) -> i64 {
        self.xid
    }

    /// Commits; if the reply is lost, finds out whether it committed (see
    /// the module documentation).
    pub async fn commit(self) -> Result<(), AppError> {
        let Self { tx, xid, db } = self;
        match tx.commit().await {
            Ok(()) => Ok(()),
            // The server answered: the transaction was rolled back.
            Err(error) if !reply_lost(&error) => Err(error.into()),
            Err(error) => {
                metrics::counter!("shop_commit_replies_lost_total").increment(1);
                tracing::warn!(%error, xid, "the reply to COMMIT was lost; asking PostgreSQL what became of it");
                let outcome = resolve(&db, xid).await;
                let label = match &outcome {
                    Ok(()) => "committed",
                    Err(AppError::OutcomeUnknown) => "unknown",
                    Err(_) => "aborted",
                };
                metrics::counter!("shop_commit_outcomes_total", "outcome" => label).increment(1);
                tracing::warn!(xid, outcome = label, "resolved a lost COMMIT");
                outcome
            }
        }
    }
}

impl Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// Whether a failed COMMIT may have committed. An error from PostgreSQL
/// says it did not, but for those that end the connection instead of
/// answering the COMMIT: a pooler whose server connection broke mid-COMMIT
/// says so with its own `08P01`, and a server shutting down says `57P01`,
/// whether or not the commit got through.
fn reply_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => {
            error.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57P"))
        }
        _ => true,
    }
}

enum Status {
    Committed,
    Aborted,
    InProgress,
}

async fn resolve(db: &Db, xid: i64) -> Result<(), AppError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        // A connection attempt into a silent network would wait far longer.
        let left = RESOLVE_WITHIN.saturating_sub(started.elapsed());
        let asked = tokio::time::timeout(left, status(db, xid, started.elapsed() >= IN_PROGRESS_GRACE)).await;
        match asked {
            Ok(Ok(Status::Committed)) => return Ok(()),
            Ok(Ok(Status::Aborted)) => return Err(AppError::Unavailable("the database connection was lost")),
            Ok(Ok(Status::InProgress)) => {}
            Ok(Err(error)) => tracing::debug!(%error, xid, "could not ask about a lost COMMIT yet"),
            Err(_) => return Err(AppError::OutcomeUnknown),
        }
        if started.elapsed() + pause > RESOLVE_WITHIN {
            return Err(AppError::OutcomeUnknown);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Asks on a connection of its own to PostgreSQL itself, not the pool's:
/// the pool may be full of requests waiting, or of connections as dead as
/// the one that was lost, and a pooler between may be what lost it.
async fn status(db: &Db, xid: i64, terminate_if_running: bool) -> Result<Status, sqlx::Error> {
    let mut conn: PgConnection = db.direct().connect().await?;
    let status =
        sqlx::query_scalar!("SELECT pg_xact_status($1::text::xid8)", xid.to_string()).fetch_one(&mut conn).await?;
    let status = match status.as_deref() {
        Some("committed") => Status::Committed,
        Some("aborted") => Status::Aborted,
        // A session that got no COMMIT and has not noticed that its client is
        // gone holds its locks until it does: end it, which aborts it (or,
        // if it is committing this very moment, lets it finish).
        _ if terminate_if_running => {
            sqlx::query!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_xid = $1::text::xid8::xid",
                xid.to_string(),
            )
            .fetch_all(&mut conn)
            .await?;
            Status::InProgress
        }
        _ => Status::InProgress,
    };
    conn.close().await.ok();
    Ok(status)
}
