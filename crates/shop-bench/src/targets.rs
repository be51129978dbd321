//! What the load runs against: shop instances given by URL, or started here
//! on a fresh database (`--spawn N`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Settings every spawned instance gets: no charge limits (a storm would hit
/// them at once), a cheap password hash (users are registered in bulk), no
/// per-request log line (its cost would be measured too).
const SPAWN_ENVIRONMENT: [(&str, &str); 9] = [
    ("POINTS_DAILY_CHARGE_LIMIT", "0"),
    ("POINTS_MONTHLY_CHARGE_LIMIT", "0"),
    ("ARGON2_MEMORY_KIB", "256"),
    ("ARGON2_ITERATIONS", "1"),
    ("SEED_DEMO_DATA", "false"),
    ("ADMIN_PASSWORD", "admin-password"),
    ("JWT_SECRET", "shop-bench: a secret of thirty-two bytes or more"),
    ("RUST_LOG", "warn,shop::startup=info"),
    ("BIND_ADDR", "127.0.0.1:0"),
];

pub struct Targets {
    pub urls: Vec<String>,
    /// For the invariant checks; absent when the database is not known.
    pub db: Option<PgPool>,
    spawned: Vec<Child>,
    /// Dropped when the run ends, if this run created it.
    fresh_database: Option<(String, String)>,
    /// (Redis URL, key prefix) of spawned instances, deleted when the run ends.
    redis_keys: Option<(String, String)>,
}

pub struct Spawn<'a> {
    pub instances: usize,
    pub postgres: &'a str,
    /// A PgBouncer before `postgres`, for the instances' pools.
    pub pooler: Option<&'a str>,
    pub redis_url: &'a str,
    pub connections_per_instance: u32,
    /// Strategies and other settings, as environment variables.
    pub settings: &'a [(String, String)],
}

impl Targets {
    pub async fn given(urls: Vec<String>, database_url: Option<&str>) -> anyhow::Result<Self> {
        let db = match database_url {
            Some(url) => Some(PgPoolOptions::new().max_connections(2).connect(url).await.context("DATABASE_URL")?),
            None => None,
        };
        Ok(Self { urls, db, spawned: Vec::new(), fresh_database: None, redis_keys: None })
    }

    /// Starts `instances` processes of the shop binary on a fresh database
    /// and Redis prefix.
    pub async fn spawn(spawn: Spawn<'_>) -> anyhow::Result<Self> {
        let binary = shop_binary()?;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("shop_bench_{run}");
        let database_url = format!("{}/{database}", spawn.postgres.trim_end_matches('/'));
        let mut spawned = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..spawn.instances {
            let mut command = Command::new(&binary);
            command
                .arg("serve")
                .envs(SPAWN_ENVIRONMENT)
                .env("DATABASE_URL", &database_url)
                .env("DATABASE_MAX_CONNECTIONS", spawn.connections_per_instance.to_string())
                .env("REDIS_URL", spawn.redis_url)
                .env("REDIS_KEY_PREFIX", format!("bench:{run}:"))
                .envs(spawn.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .envs(
                    spawn
                        .pooler
                        .map(|pooler| ("DATABASE_POOLER_URL", format!("{}/{database}", pooler.trim_end_matches('/')))),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
            let stdout = child.stdout.take().expect("piped");
            let mut lines = BufReader::new(stdout).lines();
            let address = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|line| {
                    line.split("listening on ")
                        .nth(1)
                        .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
                })
                .context("a spawned shop exited before it listened")?;
            std::thread::spawn(move || lines.for_each(drop));
            spawned.push(child);
            urls.push(address.trim_end_matches('"').to_owned());
        }
        let db = PgPoolOptions::new().max_connections(2).connect(&database_url).await?;
        Ok(Self {
            urls,
            db: Some(db),
            spawned,
            fresh_database: Some((spawn.postgres.to_owned(), database)),
            redis_keys: Some((spawn.redis_url.to_owned(), format!("bench:{run}:"))),
        })
    }

    /// The process ids of the instances this run started.
    pub fn spawned_pids(&self) -> Vec<u32> {
        self.spawned.iter().map(Child::id).collect()
    }

    /// Stops spawned instances and drops the database and Redis keys this
    /// run created.
    pub async fn finish(mut self) {
        for child in &mut self.spawned {
            child.kill().ok();
            child.wait().ok();
        }
        if let Some((url, prefix)) = self.redis_keys.take()
            && let Ok(client) = redis::Client::open(url)
            && let Ok(mut redis) = client.get_multiplexed_async_connection().await
        {
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis).await.unwrap_or_default();
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).query_async::<()>(&mut redis).await.ok();
            }
        }
        if let (Some(db), Some((postgres, database))) = (self.db.take(), self.fresh_database.take()) {
            db.close().await;
            if let Ok(admin) = PgPoolOptions::new().max_connections(1).connect(&format!("{postgres}/postgres")).await {
                let drop = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await.ok();
            }
        }
    }
}

/// The shop binary next to this one; built (release) if missing and this
/// runs under cargo.
fn shop_binary() -> anyhow::Result<PathBuf> {
    let here = std::env::current_exe()?;
    let binary = here.with_file_name("shop");
    if binary.exists() {
        return Ok(binary);
    }
    let Ok(cargo) = std::env::var("CARGO") else {
        bail!("{} is missing: build it with `cargo build --release -p shop`", binary.display());
    };
    eprintln!("building the shop binary…");
    let status = Command::new(cargo).args(["build", "--release", "-p", "shop"]).status()?;
    if !status.success() || !binary.exists() {
        bail!("could not build {}", binary.display());
    }
    Ok(binary)
}
