//! The shop's way to PostgreSQL: a pool for requests, and PostgreSQL itself
//! for what a pool of borrowed connections cannot carry.
//!
//! The pool reaches PostgreSQL directly, or through a PgBouncer in
//! transaction pooling mode (`DATABASE_POOLER_URL`), which lends a server
//! connection for one transaction at a time, so that many instances share
//! few PostgreSQL connections. Through such a pooler:
//!
//! - sqlx sends a statement in two steps (prepare, then bind and execute),
//!   each ended by a Sync. Outside a transaction the pooler may give the
//!   server connection to another client in between, and the second step
//!   lands where the statement was never prepared. So every statement runs
//!   in a transaction: writes are [`Tx`](super::Tx)s, and [`Db::read`] opens
//!   a read-only one (a write slipped into a read fails at once instead of
//!   vanishing with its rollback).
//! - sqlx names prepared statements and reuses a name it has prepared on its
//!   connection, which the next transaction's server has never seen, while
//!   another client's statements hold the same names there. So the pool
//!   keeps no statements (its cache is off: each execution prepares its
//!   own), and PgBouncer drops each transaction's statements when it takes
//!   the server back (`server_reset_query = DEALLOCATE ALL` with
//!   `server_reset_query_always = 1`, scripts/pgbouncer.ini). PgBouncer 1.21
//!   would carry named statements itself; Debian 12 ships 1.18.
//! - What outlives one transaction goes to PostgreSQL directly
//!   (`DATABASE_URL`, [`Db::direct`]): migrations (a session advisory
//!   lock), LISTEN, the heartbeat, and asking about a COMMIT whose reply was
//!   lost (the pooler may be what lost it).
//! - PgBouncer passes no `options` startup parameter, so the idle-in-
//!   transaction timeout the shop sets per connection is set by the
//!   pooler's `connect_query` instead (scripts/pgbouncer.ini).
//!
//! The cost through the pooler: a read takes three round trips instead of
//! one (BEGIN, prepare, execute), and every statement is planned afresh.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    through_pooler: bool,
    direct: Arc<PgConnectOptions>,
}

impl Db {
    /// `pool` reaches PostgreSQL as `direct` does.
    pub fn direct_pool(pool: PgPool) -> Self {
        let direct = Arc::new((*pool.connect_options()).clone());
        Self { pool, through_pooler: false, direct }
    }

    /// `pool` goes through a transaction-pooling PgBouncer; `direct`
    /// reaches PostgreSQL itself.
    pub fn through_pooler(pool: PgPool, direct: PgConnectOptions) -> Self {
        Self { pool, through_pooler: true, direct: Arc::new(direct) }
    }

    /// A connection for reading: in a read-only transaction when the pool
    /// goes through a pooler (see the module documentation), else as the
    /// pool lends it. Dropping it ends the transaction.
    pub async fn read(&self) -> Result<Read, sqlx::Error> {
        Ok(Read(self.lend("BEGIN READ ONLY").await?))
    }

    /// A connection for statements that each stand alone (no lock held
    /// from one to the next, nothing to undo if a later one fails): each
    /// takes effect at once when the pool reaches PostgreSQL directly;
    /// through a pooler they share a transaction, which [`Write::commit`]
    /// commits. What must happen together, or must not be answered 503
    /// when it may have happened (a lost reply is not looked into here), is
    /// a [`Tx`](super::Tx).
    pub async fn write(&self) -> Result<Write, sqlx::Error> {
        Ok(Write(self.lend("BEGIN").await?))
    }

    async fn lend(&self, begin: &'static str) -> Result<Lent, sqlx::Error> {
        Ok(if self.through_pooler {
            Lent::InTransaction(self.begin_with(begin).await?)
        } else {
            Lent::Connection(self.pool.acquire().await?)
        })
    }

    /// A transaction on the pool. A write transaction whose COMMIT must not
    /// be lost unnoticed is a [`Tx`](super::Tx).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin_with("BEGIN").await
    }

    /// Begins on a task of its own. sqlx counts a transaction only once
    /// BEGIN has answered, so a caller dropped while it waits (a request
    /// past its deadline, a client gone) would hand the connection back to
    /// the pool still inside the transaction, and the next borrower's
    /// statements would join it (sqlx issue 4393). Through a pooler BEGIN
    /// is where a request waits for a server connection, so the wait is
    /// real. The task finishes the BEGIN; if no one awaits it any more, the
    /// transaction it returns is dropped, which rolls it back.
    async fn begin_with(&self, begin: &'static str) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let pool = self.pool.clone();
        tokio::spawn(async move { pool.begin_with(begin).await })
            .await
            .unwrap_or_else(|stopped| Err(sqlx::Error::Io(std::io::Error::other(stopped))))
    }

    /// How to reach PostgreSQL itself, for connections of their own.
    pub fn direct(&self) -> &PgConnectOptions {
        &self.direct
    }

    /// LISTEN, on a connection to PostgreSQL itself: a pooler would lend
    /// the session to others between transactions.
    pub async fn listener(&self) -> Result<PgListener, sqlx::Error> {
        let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with((*self.direct).clone());
        PgListener::connect_with(&pool).await
    }

    /// Connections open in the pool, and how many of them are idle.
    pub fn pool_usage(&self) -> (u32, u32) {
        (self.pool.size(), self.pool.num_idle() as u32)
    }

    pub fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }
}

/// A connection lent for reading; derefs to it.
pub struct Read(Lent);

/// A connection lent for writing; derefs to it. See [`Db::write`].
pub struct Write(Lent);

impl Write {
    /// Makes the writes take effect through a pooler (directly they have).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.0 {
            Lent::Connection(_) => Ok(()),
            Lent::InTransaction(tx) => tx.commit().await,
        }
    }
}

enum Lent {
    Connection(PoolConnection<Postgres>),
    InTransaction(Transaction<'static, Postgres>),
}

impl Deref for Lent {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Self::Connection(conn) => conn,
            Self::InTransaction(tx) => tx,
        }
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Self::Connection(conn) => conn,
            Self::InTransaction(tx) => tx,
        }
    }
}

impl Deref for Read {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for Read {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

impl Deref for Write {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for Write {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}
