//! Several real `shop serve` processes on one database and Redis prefix.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::pg_proxy::PgProxy;
use shop::redis_conn::Keyspace;

use super::{ADMIN_PASSWORD, PG, PGBOUNCER_ENV, REDIS, TEST_SECRET, drop_test_data, redis_cluster_nodes};

pub struct Cluster {
    instances: Mutex<Vec<Instance>>,
    /// The environment each instance was started with, to restart it.
    environments: Vec<Vec<(String, String)>>,
    /// The test's own connection to the database, never through a proxy.
    pub db: PgPool,
    pub client: reqwest::Client,
    pub database_url: String,
    pub redis_key_prefix: String,
}

struct Instance {
    child: Child,
    address: String,
}

/// The environment of every instance: one database, one Redis prefix, one
/// token secret, a cheap password hash.
fn shared_environment(database_url: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url),
        ("DATABASE_MAX_CONNECTIONS", "8"),
        ("REDIS_URL", REDIS),
        ("REDIS_CLUSTER_NODES", &redis_cluster_nodes().join(",")),
        ("REDIS_KEY_PREFIX", prefix),
        ("BIND_ADDR", "127.0.0.1:0"),
        ("JWT_SECRET", TEST_SECRET),
        ("ARGON2_MEMORY_KIB", "256"),
        ("ARGON2_ITERATIONS", "1"),
        ("SEED_DEMO_DATA", "false"),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "warn,shop::startup=info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl Cluster {
    /// Starts `count` instances at once with `environment` on top of the
    /// shared one; `per_instance(i)` adds settings to instance `i` alone.
    pub async fn start(
        count: usize,
        environment: &[(&str, &str)],
        per_instance: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        let pooler = std::env::var(PGBOUNCER_ENV).ok();
        Self::start_with(None, pooler.as_deref(), count, environment, per_instance).await
    }

    /// As [`Cluster::start`], with the instances' pools going through the
    /// PgBouncer at `pooler` (a URL without a database).
    pub async fn start_pooled(
        pooler: &str,
        count: usize,
        environment: &[(&str, &str)],
        per_instance: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        Self::start_with(None, Some(pooler), count, environment, per_instance).await
    }

    /// As [`Cluster::start`], with the instances' database connections
    /// passing through `proxy` when given.
    pub async fn start_behind(
        proxy: Option<&PgProxy>,
        count: usize,
        environment: &[(&str, &str)],
        per_instance: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        Self::start_with(proxy, None, count, environment, per_instance).await
    }

    async fn start_with(
        proxy: Option<&PgProxy>,
        pooler: Option<&str>,
        count: usize,
        environment: &[(&str, &str)],
        per_instance: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("shop_test_{id}");
        let database_url = format!("{PG}/{database}");
        let served_url = proxy.map_or_else(|| database_url.clone(), |proxy| proxy.url(&database));
        let redis_key_prefix = format!("test:{id}:");
        let mut shared = shared_environment(&served_url, &redis_key_prefix);
        if let Some(pooler) = pooler {
            shared.push(("DATABASE_POOLER_URL".to_owned(), format!("{pooler}/{database}")));
        }
        shared.extend(environment.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let environments: Vec<Vec<(String, String)>> = (0..count)
            .map(|i| {
                let mut environment = shared.clone();
                environment.extend(per_instance(i));
                environment
            })
            .collect();
        let starting: Vec<_> = environments
            .iter()
            .cloned()
            .map(|environment| tokio::task::spawn_blocking(move || spawn(&environment)))
            .collect();
        let mut instances = Vec::new();
        for started in starting {
            instances.push(started.await.unwrap());
        }
        let db = PgPoolOptions::new().max_connections(2).connect(&database_url).await.unwrap();
        let client = crate::support::http_client().timeout(Duration::from_secs(60)).build().unwrap();
        Cluster { instances: Mutex::new(instances), environments, db, client, database_url, redis_key_prefix }
    }

    pub fn len(&self) -> usize {
        self.environments.len()
    }

    /// The URL of `path` on instance `i` (modulo the number of instances, so
    /// callers can round-robin with a counter).
    /// The instances' Redis keys.
    pub fn keys(&self) -> Keyspace {
        Keyspace::new(&self.redis_key_prefix)
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        let instances = self.instances.lock().unwrap();
        format!("{}{path}", instances[i % instances.len()].address)
    }

    /// A product made by the admin through instance `i`; its id.
    pub async fn create_product(&self, i: usize, stock: i64) -> i64 {
        let admin = super::admin_of(&self.db).await;
        let body = serde_json::json!({"name": "mug", "price": 1000, "stock": stock, "category": "kitchen"});
        let request = self.client.post(self.url(i, "/api/admin/products")).bearer_auth(&admin.token).json(&body);
        let created: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        created["id"].as_i64().expect("the product was created")
    }

    /// A product's stock, read from the database.
    pub async fn stock(&self, product_id: i64) -> i64 {
        super::stock_of(&self.db, product_id).await
    }

    /// Kills instance `i` without warning (SIGKILL).
    pub fn kill(&self, i: usize) {
        let mut instances = self.instances.lock().unwrap();
        instances[i].child.kill().unwrap();
        instances[i].child.wait().unwrap();
    }

    /// Starts instance `i` again, on a new port, after [`Cluster::kill`].
    pub async fn restart(&self, i: usize) {
        let environment = self.environments[i].clone();
        let started = tokio::task::spawn_blocking(move || spawn(&environment)).await.unwrap();
        self.instances.lock().unwrap()[i] = started;
    }
}

/// Starts the process and reads its address from its `listening on` line.
fn spawn(environment: &[(String, String)]) -> Instance {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shop"));
    command.arg("serve").env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command.envs(environment.iter().cloned());
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("the shop binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let address = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| line.split("listening on ").nth(1).map(|rest| rest.split('"').next().unwrap().to_owned()))
        .expect("an instance prints its address");
    std::thread::spawn(move || lines.for_each(drop));
    Instance { child, address }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for instance in self.instances.get_mut().unwrap() {
            instance.child.kill().ok();
            instance.child.wait().ok();
        }
        drop_test_data(&self.database_url, &self.redis_key_prefix);
    }
}
