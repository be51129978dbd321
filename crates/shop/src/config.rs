//! Command line and configuration. Every setting is a `--flag` with an
//! environment fallback; nothing else in the crate reads the environment, and
//! tests build a [`Config`] directly.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::redis_conn::RedisTarget;

#[derive(Debug, Parser)]
#[command(name = "shop", version, about = "An e-commerce backend that stays correct under contention")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of `serve`, which is what a bare `shop` runs.
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the database, ensure the admin account, seed demo data and serve HTTP.
    Serve(Box<Config>),
    /// Create the database if it is missing and run the migrations, then exit.
    Migrate(DatabaseConfig),
    /// Receive a shop's event deliveries and print one line for each (set
    /// the shop's DATA_PLATFORM_URL to http://127.0.0.1:PORT/).
    WebhookListen(ListenArgs),
    /// List the sinks this deployment delivers events to, or retire one.
    Sinks(SinksArgs),
    /// Manage admin accounts.
    Admin(AdminArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// The cost the servers hash with, so the admin's hash is no cheaper
    /// than anyone's (a cheaper one would tell its email by its timing).
    #[command(flatten)]
    pub password_cost: PasswordCost,
    #[command(subcommand)]
    pub action: AdminAction,
}

/// Password hashing cost; the defaults are OWASP's recommended Argon2id
/// setting.
#[derive(Debug, Clone, Copy, Args)]
pub struct PasswordCost {
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = 19456)]
    pub argon2_memory_kib: u32,
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminAction {
    /// Create an admin account, or make an existing account an admin, with
    /// the password read from standard input (one line), so that it appears
    /// in no command line or shell history.
    Create {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SinksArgs {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(subcommand)]
    pub action: Option<SinksAction>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SinksAction {
    /// Each registered sink, when it was registered and how many
    /// undelivered events it still lacks (what a bare `shop sinks` prints).
    List,
    /// Stop waiting for a sink that no instance names any more: the events
    /// that lack only it are delivered at their next attempt. An instance
    /// that names it registers it again when it starts.
    Retire { name: String },
}

#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// The shop's DATA_PLATFORM_SECRET, to check each delivery's signature.
    #[arg(long)]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL; the database is created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/shop")]
    pub database_url: String,
    /// A PgBouncer in transaction pooling mode in front of DATABASE_URL's
    /// database: when set, the pool goes through it, and DATABASE_URL
    /// serves migrations, LISTEN and the heartbeat (see `storage::db`).
    #[arg(long, env = "DATABASE_POOLER_URL")]
    pub database_pooler_url: Option<String>,
    /// Connections in this instance's pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, comma-separated);
    /// when set, the cluster is used and REDIS_URL is ignored.
    #[arg(long, env = "REDIS_CLUSTER_NODES", value_delimiter = ',')]
    pub redis_cluster_nodes: Vec<String>,
    /// Prefix of every Redis key, so several shops (or tests) share one Redis.
    /// No braces: the braces after it are each key's cluster hash tag.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "shop:", value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,
    /// Listen address; a port of 0 picks a free one, which is printed.
    /// `:PORT` listens on every interface.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080", value_parser = parse_bind_addr)]
    pub bind_addr: SocketAddr,
    /// When set, `/metrics` is served only here, not on BIND_ADDR.
    #[arg(long, env = "METRICS_ADDR", value_parser = parse_bind_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Origins allowed to call the API from a browser, comma-separated
    /// (`https://shop.example`); unset, no CORS headers are sent.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Open HTTP connections at most; more wait in the kernel's backlog.
    /// Keep it under the process's file descriptor limit (`ulimit -n`).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// A request still running after this is answered 503.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// After SIGTERM: readiness answers 503 at once, and requests in
    /// flight get this long to finish.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// HS256 secret for tokens; random per start (with a warning) when unset.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "JWT_ACCESS_TTL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwt_access_ttl_secs: u64,
    #[arg(long, env = "ADMIN_EMAIL", default_value = "admin@shop.local")]
    pub admin_email: String,
    /// The admin account's password, set at every start. Unset: no admin is
    /// ensured, except that the demo (SEED_DEMO_DATA) creates a missing one
    /// with the published password `admin-password`.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// The three strategies default to the winners of docs/benchmarks.md,
    /// points and stock to the one docs/adaptive/benchmarks.md settled
    /// (see the README).
    #[arg(long, env = "POINTS_STRATEGY", value_enum, default_value_t = PointsStrategyKind::Adaptive)]
    pub points_strategy: PointsStrategyKind,
    #[arg(long, env = "STOCK_STRATEGY", value_enum, default_value_t = StockStrategyKind::Adaptive)]
    pub stock_strategy: StockStrategyKind,
    #[arg(long, env = "COUPON_STRATEGY", value_enum, default_value_t = CouponStrategyKind::RedisGate)]
    pub coupon_strategy: CouponStrategyKind,
    /// A PENDING order expires (and releases its stock and coupon) after this.
    #[arg(long, env = "ORDER_PAYMENT_TIMEOUT_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub order_payment_timeout_secs: u64,
    /// Successful charges per user per day; 0 = no limit.
    #[arg(long, env = "POINTS_DAILY_CHARGE_LIMIT", default_value_t = 3)]
    pub points_daily_charge_limit: u32,
    /// Successful charges per user per calendar month; 0 = no limit.
    #[arg(long, env = "POINTS_MONTHLY_CHARGE_LIMIT", default_value_t = 10)]
    pub points_monthly_charge_limit: u32,
    /// Seed demo products and coupon types into an empty database.
    #[arg(long, env = "SEED_DEMO_DATA", default_value_t = true, action = ArgAction::Set)]
    pub seed_demo_data: bool,
    /// Failed logins for one email within the window before further
    /// attempts are 429 (ten times as many from one client address).
    #[arg(long, env = "LOGIN_MAX_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures: u32,
    #[arg(long, env = "LOGIN_WINDOW_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub login_window_secs: u64,
    #[command(flatten)]
    pub password_cost: PasswordCost,
    /// Time zone of calendar days (charge limits, top sellers).
    #[arg(long, env = "SHOP_TIMEZONE", default_value = "Asia/Seoul")]
    pub shop_timezone: chrono_tz::Tz,
    #[command(flatten)]
    pub locks: LockConfig,
    #[command(flatten)]
    pub events: EventsConfig,
    /// `text` for people, `json` for log shippers.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

/// Where paid and cancelled orders are delivered, and how hard to try.
#[derive(Debug, Clone, Args)]
pub struct EventsConfig {
    /// Webhook receiving every event (Standard Webhooks); unset: none.
    #[arg(long, env = "DATA_PLATFORM_URL")]
    pub data_platform_url: Option<String>,
    /// Signs webhook deliveries (`webhook-signature: v1,…`); a `whsec_`
    /// prefix marks a base64 key, as Standard Webhooks' secrets do.
    #[arg(long, env = "DATA_PLATFORM_SECRET", hide_env_values = true)]
    pub data_platform_secret: Option<String>,
    /// Longest wait for the webhook receiver's answer.
    #[arg(long, env = "DATA_PLATFORM_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub data_platform_timeout_ms: u64,
    /// NATS server for the JetStream sink (stream `SHOP_EVENTS`); unset: none.
    #[arg(long, env = "EVENTS_NATS_URL")]
    pub events_nats_url: Option<String>,
    /// Attempts before an event is `FAILED` (and its order's later events wait).
    #[arg(long, env = "EVENT_MAX_ATTEMPTS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub event_max_attempts: u32,
    /// Delivered events are deleted after this many days.
    #[arg(long, env = "EVENT_RETENTION_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub event_retention_days: u32,
    /// The first retry's delay; each later one doubles, with jitter, up to
    /// `EVENT_RETRY_MAX_MS`.
    #[arg(long, env = "EVENT_RETRY_BASE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_retry_base_ms: u64,
    #[arg(long, env = "EVENT_RETRY_MAX_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_retry_max_ms: u64,
}

/// How long the concurrency strategies may wait before answering
/// `CONCURRENCY_CONFLICT`.
#[derive(Debug, Clone, Args)]
pub struct LockConfig {
    /// `pessimistic`: PostgreSQL `lock_timeout` for row locks.
    #[arg(long, env = "DB_LOCK_TIMEOUT_MS", default_value_t = 3000)]
    pub db_lock_timeout_ms: u64,
    /// `optimistic`: attempts after the first lost race.
    #[arg(long, env = "OPTIMISTIC_MAX_RETRIES", default_value_t = 12)]
    pub optimistic_max_retries: u32,
    /// `redis-lock`: lease of a lock; renewed while its holder works.
    #[arg(long, env = "REDIS_LOCK_LEASE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(30..))]
    pub redis_lock_lease_ms: u64,
    /// `redis-lock`: how long a request waits for a lock.
    #[arg(long, env = "REDIS_LOCK_WAIT_MS", default_value_t = 3000)]
    pub redis_lock_wait_ms: u64,
    /// `redis-gate`: a unit handed out by the gate but not known to be
    /// written after this long is completed or given back by the reconciler.
    #[arg(long, env = "GATE_RECONCILE_AFTER_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(30..))]
    pub gate_reconcile_after_ms: u64,
    /// Asynchronous issuance: a queued request read by a consumer that did
    /// not finish it in this long is taken over by another.
    #[arg(long, env = "ASYNC_ISSUE_CLAIM_AFTER_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub async_issue_claim_after_ms: u64,
    /// Asynchronous issuance: a request still pending this long is queued
    /// again (its entry may have been lost with Redis).
    #[arg(long, env = "ASYNC_ISSUE_REQUEUE_AFTER_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub async_issue_requeue_after_ms: u64,
}

impl LockConfig {
    pub fn db_lock_timeout(&self) -> Duration {
        Duration::from_millis(self.db_lock_timeout_ms)
    }

    pub fn redis_lock_lease(&self) -> Duration {
        Duration::from_millis(self.redis_lock_lease_ms)
    }

    pub fn redis_lock_wait(&self) -> Duration {
        Duration::from_millis(self.redis_lock_wait_ms)
    }

    pub fn gate_reconcile_after(&self) -> Duration {
        Duration::from_millis(self.gate_reconcile_after_ms)
    }

    pub fn async_issue_claim_after(&self) -> Duration {
        Duration::from_millis(self.async_issue_claim_after_ms)
    }

    pub fn async_issue_requeue_after(&self) -> Duration {
        Duration::from_millis(self.async_issue_requeue_after_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PointsStrategyKind {
    Optimistic,
    Pessimistic,
    Atomic,
    RedisLock,
    /// The charges an instance receives together are made in one transaction.
    Batch,
    /// `atomic` while a wallet is quiet, `batch` while charges queue on it.
    Adaptive,
    /// No concurrency control at all: unlocked reads, unconditional writes.
    /// Compiled only for the tests that show the races.
    #[cfg(feature = "naive")]
    #[value(skip)]
    Naive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StockStrategyKind {
    Optimistic,
    Pessimistic,
    Atomic,
    RedisLock,
    RedisGate,
    /// The orders an instance receives together are placed in one transaction.
    Batch,
    /// `atomic` while a product is quiet, `batch` while orders queue on it.
    Adaptive,
    /// No concurrency control at all: unlocked reads, unconditional writes.
    /// Compiled only for the tests that show the races.
    #[cfg(feature = "naive")]
    #[value(skip)]
    Naive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CouponStrategyKind {
    Pessimistic,
    Atomic,
    RedisLock,
    RedisGate,
    /// No concurrency control at all: unlocked reads, unconditional writes.
    /// Compiled only for the tests that show the races.
    #[cfg(feature = "naive")]
    #[value(skip)]
    Naive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The name config takes for a value (`redis-lock`), to pass it on as an
/// environment variable or a flag.
pub fn value_name(value: &impl ValueEnum) -> String {
    value.to_possible_value().map(|possible| possible.get_name().to_owned()).unwrap_or_default()
}

/// The names of every value config takes for `K`, in declaration order:
/// every strategy of a family, for the tests and the benchmarks that run
/// them all.
pub fn value_names<K: ValueEnum>() -> Vec<String> {
    K::value_variants().iter().map(value_name).collect()
}

impl Config {
    /// Where Redis is: the cluster when its nodes are named, else REDIS_URL
    /// (`REDIS_CLUSTER_NODES=` set empty names none).
    pub fn redis_target(&self) -> RedisTarget<'_> {
        if self.redis_cluster_nodes.iter().all(String::is_empty) {
            RedisTarget::Single(&self.redis_url)
        } else {
            RedisTarget::Cluster(&self.redis_cluster_nodes)
        }
    }
}

/// A key prefix without braces, which would take the place of the keys'
/// hash tags.
fn parse_key_prefix(value: &str) -> Result<String, String> {
    if value.contains(['{', '}']) {
        return Err(format!("`{value}` holds a brace; the braces after the prefix are the keys' hash tags"));
    }
    Ok(value.to_owned())
}

/// Accepts `host:port`, and `:port` for every interface as Go servers do.
fn parse_bind_addr(value: &str) -> Result<SocketAddr, String> {
    let full = match value.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => value.to_owned(),
    };
    full.parse().map_err(|e| format!("`{value}` is not an address like 127.0.0.1:8080 ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addr_accepts_a_bare_port() {
        assert_eq!(parse_bind_addr(":0").unwrap(), "0.0.0.0:0".parse().unwrap());
        assert_eq!(parse_bind_addr("127.0.0.1:8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert!(parse_bind_addr("localhost").is_err());
    }

    #[test]
    fn a_key_prefix_with_a_brace_is_refused() {
        assert_eq!(parse_key_prefix("shop:").unwrap(), "shop:");
        assert!(parse_key_prefix("shop{1}:").is_err());
    }

    #[test]
    fn bare_shop_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["shop"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.points_daily_charge_limit, 3);
        let cli = Cli::try_parse_from(["shop", "serve", "--seed-demo-data", "false"]).unwrap();
        let Some(Command::Serve(config)) = cli.command else { panic!("expected serve") };
        assert!(!config.seed_demo_data);
    }
}
