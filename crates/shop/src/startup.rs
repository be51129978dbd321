//! Start-up: reach PostgreSQL and Redis (saying which failed, and where),
//! create and migrate the database, ensure the admin and the demo data, then
//! serve until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, Postgres};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{LoginThrottle, PasswordHasher, Tokens};
use crate::config::{Config, DatabaseConfig};
use crate::coupon_types::CouponTypes;
use crate::domain::points::ChargeLimits;
use crate::events::{Relay, RelayConfig, Sinks};
use crate::http::catalogue::Catalogue;
use crate::http::{self, AppState, Shared};
use crate::instances::{self, Instance};
use crate::issuance::{Issuance, Patience, Queue};
use crate::lock::LeaseLocks;
use crate::redis_conn::{Keyspace, RedisConn};
use crate::seed::{AdminSetup, DEMO_ADMIN_PASSWORD};
use crate::storage::{Db, sessions};
use crate::strategy::{self, Deps};
use crate::top_sellers::TopSellers;
use crate::{idempotency, orders, seed};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle this long is pinged before use.
const TEST_IDLE_CONNECTION_AFTER: Duration = Duration::from_secs(1);
/// Orders expired per transaction by the sweeper.
const EXPIRY_BATCH: i64 = 100;
/// How often each instance deletes expired idempotency keys and delivered
/// events past their retention.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// The shop sends a transaction's statements one after another; one left
/// idle this long belongs to an instance that froze or lost its network
/// mid-transaction, and its row locks would hold every other instance up
/// (until TCP keepalive gives up, hours later): PostgreSQL ends it instead.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A shorter HS256 secret could be guessed offline from any one token.
const MIN_JWT_SECRET_BYTES: usize = 32;

/// The longest drain after SIGTERM, before new connections are refused.
const MAX_DRAIN: Duration = Duration::from_secs(2);

/// How often the metrics recorder folds its samples into its histograms.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A server bound to its address, ready to run.
pub struct Server {
    listener: TcpListener,
    /// `/metrics` alone, when METRICS_ADDR is set.
    metrics_listener: Option<TcpListener>,
    router: axum::Router,
    state: AppState,
    /// How long requests in flight may run on after shutdown begins.
    grace: Duration,
    /// Open HTTP connections at most, on each listener.
    max_connections: usize,
    /// How this instance's heartbeat connects: apart from the pool, so a
    /// busy pool cannot make a live instance look dead.
    heartbeat: PgConnectOptions,
}

impl Server {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        // The one TLS provider the webhook client may use (a second start
        // in one process finds it installed).
        rustls::crypto::ring::default_provider().install_default().ok();
        // Before anything registers a metric handle (the strategies do): one
        // taken before the recorder is installed records nowhere.
        let metrics = metrics_handle()?;
        // First, so that a wrong sink setting stops the start before anything is touched.
        let sinks = Sinks::new(&config.events).await.context("cannot set up the event sinks")?;
        let db = connect_database(&config.database).await?;
        let redis = RedisConn::connect(config.redis_target(), CONNECT_TIMEOUT).await?;
        let keys = Keyspace::new(&config.redis_key_prefix);
        let passwords = PasswordHasher::new(config.password_cost)?;
        let admin = match (&config.admin_password, config.seed_demo_data) {
            (Some(password), _) => Some(AdminSetup::Password(password)),
            (None, true) => {
                tracing::warn!(
                    email = %config.admin_email,
                    "ADMIN_PASSWORD is unset: the demo's admin, if missing, gets the published password `{DEMO_ADMIN_PASSWORD}`; set ADMIN_PASSWORD outside the demo"
                );
                Some(AdminSetup::DemoIfMissing)
            }
            (None, false) => {
                tracing::info!("ADMIN_PASSWORD is unset: no admin account is ensured (`shop admin create` makes one)");
                None
            }
        };
        if let Some(admin) = admin {
            seed::ensure_admin(&db, &passwords, &config.admin_email, admin)
                .await
                .context("cannot ensure the admin account")?;
        }
        if config.seed_demo_data && seed::seed_demo_data(&db).await.context("cannot seed demo data")? {
            tracing::info!("seeded demo products and coupon types");
        }
        let secret = match &config.jwt_secret {
            Some(secret) if secret.len() < MIN_JWT_SECRET_BYTES => {
                anyhow::bail!("JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes (it is {})", secret.len())
            }
            Some(secret) => secret.clone().into_bytes(),
            None => {
                tracing::warn!(
                    "JWT_SECRET is unset: using a random secret; tokens die with this process and other instances refuse them"
                );
                rand::random::<[u8; 32]>().to_vec()
            }
        };
        let locks =
            LeaseLocks::new(redis.clone(), &keys, config.locks.redis_lock_lease(), config.locks.redis_lock_wait());
        let deps = Deps { db: &db, redis: &redis, keys: &keys, locks: &config.locks, leases: &locks };
        let points = strategy::points::build(config.points_strategy, &deps);
        let coupons = strategy::coupons::build(config.coupon_strategy, &deps);
        let stock = strategy::stock::build(config.stock_strategy, &deps);
        let patience = Patience {
            claim_after: config.locks.async_issue_claim_after(),
            requeue_after: config.locks.async_issue_requeue_after(),
        };
        let queue = Queue::new(redis.clone(), &keys);
        let issuance = Issuance::new(db.clone(), queue, coupons.clone(), patience);
        let relay = Relay::new(db.clone(), sinks, RelayConfig::from(&config.events));
        let heartbeat = db.direct().clone();
        let instance = Instance::register(&db, CONNECT_TIMEOUT).await.context("cannot register this instance")?;
        let top_sellers = TopSellers::new(redis.clone(), &keys, config.shop_timezone);
        let state = AppState::new(Shared {
            catalogue: Catalogue::new(db.clone(), top_sellers.clone()),
            placing: orders::Placing::new(db.clone(), stock.clone()),
            db,
            instance,
            redis: redis.clone(),
            tokens: Tokens::new(&secret, Duration::from_secs(config.jwt_access_ttl_secs))?,
            passwords,
            logins: LoginThrottle::new(redis.clone(), &keys, config.login_max_failures, config.login_window_secs),
            points,
            coupons,
            coupon_types: CouponTypes::default(),
            issuance,
            relay,
            stock,
            top_sellers,
            order_payment_timeout_secs: config.order_payment_timeout_secs as i64,
            charge_limits: ChargeLimits {
                daily: config.points_daily_charge_limit,
                monthly: config.points_monthly_charge_limit,
            },
            timezone: config.shop_timezone,
            metrics,
            tasks: TaskTracker::new(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            metrics_elsewhere: config.metrics_addr.is_some(),
            draining: AtomicBool::new(false),
        });
        let router = http::router(state.clone(), &config.cors_allowed_origins)?;
        let listener = bind(config.bind_addr).await?;
        let metrics_listener = match config.metrics_addr {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let max_connections = config.http_max_connections as usize;
        Ok(Self { listener, metrics_listener, router, state, grace, max_connections, heartbeat })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops taking connections and
    /// lets requests in flight finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let state = &self.state;
        // Often enough that an order is released soon after its timeout.
        let expiry_every = Duration::from_secs((state.order_payment_timeout_secs as u64 / 10).clamp(1, 10));
        let mut background = vec![
            spawn_every(state, PURGE_INTERVAL, &stop, "purge idempotency keys", |state| async move {
                idempotency::purge_expired(&state.db).await.map(drop).map_err(Into::into)
            }),
            tokio::spawn(self.state.instance.keep_alive(self.heartbeat.clone(), stop.clone())),
            spawn_every(state, PURGE_INTERVAL, &stop, "forget instances long gone", |state| async move {
                instances::forget_gone(&state.db).await.map(drop).map_err(Into::into)
            }),
            // Safe on many instances at once: each skips the orders another is expiring.
            spawn_every(state, expiry_every, &stop, "expire overdue orders", |state| async move {
                while orders::expire_overdue(&state.db, &*state.stock, EXPIRY_BATCH).await? == EXPIRY_BATCH as usize {}
                Ok(())
            }),
            spawn_every(state, PURGE_INTERVAL, &stop, "purge expired logins", |state| async move {
                let mut conn = state.db.write().await?;
                sessions::purge_expired(&mut conn).await?;
                Ok(conn.commit().await?)
            }),
            tokio::spawn({
                let (state, stop) = (state.clone(), stop.clone());
                async move { state.issuance.consume(stop).await }
            }),
            tokio::spawn({
                let (state, stop) = (state.clone(), stop.clone());
                async move { state.relay.run(stop).await }
            }),
            spawn_every(state, PURGE_INTERVAL, &stop, "purge delivered events", |state| async move {
                state.relay.purge().await
            }),
            spawn_every(state, state.issuance.requeue_every(), &stop, "requeue issue requests", |state| async move {
                state.issuance.requeue_stale().await
            }),
            // Histograms keep each sample until drained: drained on a timer, so
            // memory stays flat whether or not anything scrapes `/metrics`.
            spawn_every(state, METRICS_UPKEEP, &stop, "metrics upkeep", |state| {
                state.metrics.run_upkeep();
                std::future::ready(Ok(()))
            }),
        ];
        for chore in [state.coupons.chore(&state.db), state.stock.chore(&state.db)].into_iter().flatten() {
            background.push(tokio::spawn(every_while(chore.every, stop.clone(), chore.what, chore.run)));
        }
        tracing::info!(
            strategy.points = ?self.state.points.kind(),
            strategy.coupons = ?self.state.coupons.kind(),
            strategy.stock = ?self.state.stock.kind(),
            "listening on http://{}",
            self.local_addr()
        );
        let metrics_served = CancellationToken::new();
        if let Some(listener) = self.metrics_listener {
            let (router, stopped) = (http::metrics_router(state.clone()), metrics_served.clone());
            let max_connections = self.max_connections;
            background.push(tokio::spawn(async move {
                let served = http::serve(listener, router, max_connections, stopped.cancelled_owned(), Duration::ZERO);
                if let Err(error) = served.await {
                    tracing::error!(%error, "the metrics listener failed");
                }
            }));
        }
        // One deadline for the whole shutdown: a drain while readiness says
        // 503 and everything is still served (so a load balancer's check
        // sees it and stops sending), then no new connections while those
        // in flight, and requests whose clients left, finish.
        let drain = (self.grace / 10).min(MAX_DRAIN);
        let deadline = Arc::new(OnceLock::new());
        let draining = {
            let (state, deadline, grace) = (state.clone(), deadline.clone(), self.grace);
            async move {
                shutdown.await;
                deadline.set(tokio::time::Instant::now() + grace).ok();
                state.draining.store(true, Ordering::Relaxed);
                tokio::time::sleep(drain).await;
            }
        };
        http::serve(self.listener, self.router, self.max_connections, draining, self.grace - drain)
            .await
            .context("the HTTP server failed")?;
        self.state.tasks.close();
        let deadline = deadline.get().copied().unwrap_or_else(tokio::time::Instant::now);
        if tokio::time::timeout_at(deadline, self.state.tasks.wait()).await.is_err() {
            tracing::warn!("requests still running after the shutdown grace period are abandoned");
        }
        // Background workers finish the batch in hand, then stop.
        stop.cancel();
        metrics_served.cancel();
        for task in background {
            task.await.ok();
        }
        // Nothing of this instance is in flight now.
        if let Err(error) = self.state.instance.leave(&self.state.db).await {
            tracing::warn!(%error, "could not say this instance has stopped");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))
}

/// How to reach PostgreSQL itself: DATABASE_URL, and a transaction left
/// idle longer than [`IDLE_IN_TRANSACTION_TIMEOUT`] is ended by PostgreSQL.
fn direct_options(config: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(&config.database_url).context("DATABASE_URL is not a PostgreSQL URL")?;
    let idle = format!("{}ms", IDLE_IN_TRANSACTION_TIMEOUT.as_millis());
    Ok(options.options([("idle_in_transaction_session_timeout", idle.as_str())]))
}

/// How to reach PostgreSQL through a transaction-pooling PgBouncer (see
/// `storage::db`): no statement kept between executions, and only the
/// startup parameters PgBouncer passes on.
fn pooler_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url).context("DATABASE_POOLER_URL is not a PostgreSQL URL")?;
    Ok(options.statement_cache_capacity(0).extra_float_digits(None))
}

/// Creates the database if missing, migrates it, and opens the pool
/// (through the pooler, when there is one).
pub async fn connect_database(config: &DatabaseConfig) -> anyhow::Result<Db> {
    let direct = direct_options(config)?;
    let place = format!(
        "PostgreSQL at {}:{} (database {})",
        direct.get_host(),
        direct.get_port(),
        direct.get_database().unwrap_or("postgres"),
    );
    let reach = async {
        ensure_database(&config.database_url).await?;
        let conn: PgConnection = direct.connect().await?;
        Ok::<_, anyhow::Error>(conn)
    };
    let mut conn = within_connect_timeout(reach).await.with_context(|| format!("cannot reach {place}"))?;
    MIGRATOR.run(&mut conn).await.with_context(|| format!("cannot migrate {place}"))?;

    let (pool_options, pool_place) = match &config.database_pooler_url {
        Some(url) => {
            let options = pooler_options(url)?;
            let place = format!("the PostgreSQL pooler at {}:{}", options.get_host(), options.get_port());
            (options, place)
        }
        None => (direct.clone(), place),
    };
    let pool = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(30))
        // sqlx would ping every connection it hands out: a round trip
        // per acquire, a tenth of a short read's cost. Only a
        // connection idle for a while is tested (a restarted PostgreSQL
        // leaves idle ones dead); a busy one proved itself moments ago.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= TEST_IDLE_CONNECTION_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(pool_options);
    let pool = within_connect_timeout(async { Ok(pool.await?) })
        .await
        .with_context(|| format!("cannot reach {pool_place}"))?;
    let db = match config.database_pooler_url {
        Some(_) => {
            let db = Db::through_pooler(pool, direct);
            check_pooler(&db, &mut conn).await.with_context(|| format!("through {pool_place}"))?;
            db
        }
        None => Db::direct_pool(pool),
    };
    conn.close().await.ok();
    Ok(db)
}

/// The pooler must lead to the database `DATABASE_URL` names, where
/// migrations ran and where a lost COMMIT is asked about; and its server
/// connections should end a transaction left idle, as direct ones do.
async fn check_pooler(db: &Db, direct: &mut PgConnection) -> anyhow::Result<()> {
    async fn identity(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT format('database %s of the server %s', current_database(), system_identifier) AS "identity!"
               FROM pg_control_system()"#
        )
        .fetch_one(conn)
        .await
    }
    let mut pooled = db.read().await?;
    let (here, there) = (identity(direct).await?, identity(&mut pooled).await?);
    anyhow::ensure!(here == there, "DATABASE_POOLER_URL leads to {there}, not to DATABASE_URL's {here}");
    let idle = sqlx::query_scalar!(r#"SELECT current_setting('idle_in_transaction_session_timeout') AS "timeout!""#)
        .fetch_one(&mut *pooled)
        .await?;
    if idle == "0" {
        tracing::warn!(
            "the pooler's server connections never end an idle transaction: a frozen instance would hold its locks; \
             set idle_in_transaction_session_timeout in PgBouncer's connect_query (scripts/pgbouncer.ini)"
        );
    }
    Ok(())
}

async fn within_connect_timeout<T>(reach: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(CONNECT_TIMEOUT, reach)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {CONNECT_TIMEOUT:?}"))?
}

async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    if Postgres::database_exists(url).await? {
        return Ok(());
    }
    match Postgres::create_database(url).await {
        // Another instance created it between the check and the create.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => Ok(()),
        other => other,
    }
}

/// The URL without its password.
pub(crate) fn redacted(url: &str) -> String {
    match url.split_once('@') {
        Some((credentials, rest)) => {
            let scheme = credentials.split_once("://").map_or("", |(scheme, _)| scheme);
            format!("{scheme}://***@{rest}")
        }
        None => url.to_owned(),
    }
}

/// One Prometheus recorder per process (the `metrics` facade is global), so
/// several servers in one test process share it.
fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        )?
        .install_recorder()
        .or_else(|error| HANDLE.get().cloned().ok_or(error))
        .context("cannot install the metrics recorder")?;
    Ok(HANDLE
        .get_or_init(|| {
            crate::telemetry::describe();
            handle
        })
        .clone())
}

/// Runs `task` every `period` until `stop`; failures are logged and retried
/// at the next tick.
/// Runs `task` on the state every `period` until `stop`, on a task of its own.
fn spawn_every<Fut>(
    state: &AppState,
    period: Duration,
    stop: &CancellationToken,
    what: &'static str,
    task: impl Fn(AppState) -> Fut + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    Fut: Future<Output = Result<(), crate::error::AppError>> + Send + 'static,
{
    let state = state.clone();
    tokio::spawn(every_while(period, stop.clone(), what, move || task(state.clone())))
}

async fn every_while<F, Fut>(period: Duration, stop: CancellationToken, what: &'static str, task: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), crate::error::AppError>>,
{
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => if let Err(error) = task().await {
                tracing::warn!(%error, "could not {what}");
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(redacted("redis://:hunter2@cache:6379"), "redis://***@cache:6379");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
