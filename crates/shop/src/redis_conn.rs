//! The shop's Redis: one server through a reconnecting connection, or a
//! Redis Cluster (`REDIS_CLUSTER_NODES`) through the cluster client, which
//! sends each command to the master of its key's slot and follows the
//! cluster through resharding and failover. Code above this module does
//! not know which: both are one [`RedisConn`].
//!
//! A cluster runs a script, a transaction or a pipeline only if all its
//! keys hash to one slot, so every key is built by [`Keyspace`] with a hash
//! tag naming the entity whose keys are used together.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Script, ScriptInvocation,
    ServerErrorKind, Value,
};

/// Where Redis is: a single server, or a cluster's seed nodes.
#[derive(Debug, Clone, Copy)]
pub enum RedisTarget<'a> {
    Single(&'a str),
    Cluster(&'a [String]),
}

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(Cluster),
}

/// The cluster connection, renewed when a node stops answering.
///
/// The cluster client learns where slots moved from `MOVED` replies, but a
/// master that died answers nothing: the client then reconnects to its
/// address again and again and may never read the new slot map. So after
/// such a failure the connection is made anew from the seed nodes (at most
/// once every [`RENEW_AFTER`]), which reads the slots as the cluster has
/// them now.
#[derive(Clone)]
pub struct Cluster(Arc<ClusterState>);

struct ClusterState {
    client: ClusterClient,
    /// The connection, and when it was made.
    current: RwLock<(ClusterConnection, Instant)>,
    renewing: tokio::sync::Mutex<()>,
}

/// The least time between two renewals of a cluster connection.
const RENEW_AFTER: Duration = Duration::from_secs(1);

impl Cluster {
    fn connection(&self) -> ClusterConnection {
        self.0.current.read().expect("not poisoned").0.clone()
    }

    /// After `error`: renews the connection in the background if a node may
    /// have gone.
    fn failed(&self, error: &RedisError) {
        let gone =
            error.is_io_error() || error.is_timeout() || error.is_unrecoverable_error() || error.is_cluster_error();
        if gone && self.0.current.read().expect("not poisoned").1.elapsed() >= RENEW_AFTER {
            tokio::spawn(self.clone().renew());
        }
    }

    async fn renew(self) {
        let Ok(_renewing) = self.0.renewing.try_lock() else {
            return;
        };
        if self.0.current.read().expect("not poisoned").1.elapsed() < RENEW_AFTER {
            return;
        }
        match self.0.client.get_async_connection().await {
            Ok(connection) => {
                *self.0.current.write().expect("not poisoned") = (connection, Instant::now());
                metrics::counter!("shop_redis_cluster_reconnects_total").increment(1);
                tracing::info!("renewed the Redis Cluster connection after a node stopped answering");
            }
            Err(error) => tracing::warn!(%error, "could not renew the Redis Cluster connection"),
        }
    }
}

/// How often a script whose hash a node still does not know, once loaded,
/// is tried again, and the pause before each try (times the attempt).
const UNKNOWN_SCRIPT_RETRIES: u32 = 4;
const UNKNOWN_SCRIPT_PAUSE: Duration = Duration::from_millis(50);

/// Runs a script by its hash, as `invoke_async` does (loading it where a
/// node does not know it), and once more, after a pause, when the node
/// still does not know it. A replica promoted by a failover lacks the
/// scripts its master had (script caches are not replicated), and while
/// the topology changes the client may load a script on the nodes it knew
/// and miss the new master: without this the request would fail. A script
/// refused as unknown never ran, so running it again is safe.
pub trait RunScript {
    fn run<T: FromRedisValue + Send>(&self, redis: &mut RedisConn) -> impl Future<Output = RedisResult<T>> + Send;
}

impl RunScript for ScriptInvocation<'_> {
    async fn run<T: FromRedisValue + Send>(&self, redis: &mut RedisConn) -> RedisResult<T> {
        let mut attempt = 0;
        loop {
            match self.invoke_async(redis).await {
                Err(error)
                    if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
                        && attempt < UNKNOWN_SCRIPT_RETRIES =>
                {
                    attempt += 1;
                    tokio::time::sleep(UNKNOWN_SCRIPT_PAUSE * attempt).await;
                }
                answer => return answer,
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(cluster) => async move {
                let answer = cluster.connection().req_packed_command(cmd).await;
                if let Err(error) = &answer {
                    cluster.failed(error);
                }
                answer
            }
            .boxed(),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => async move {
                let answers = cluster.connection().req_packed_commands(pipeline, offset, count).await;
                if let Err(error) = &answers {
                    cluster.failed(error);
                }
                answers
            }
            .boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

impl RedisConn {
    /// Connects and checks that Redis answers, within `timeout`; each
    /// command later waits at most `timeout` for its reply.
    pub async fn connect(target: RedisTarget<'_>, timeout: Duration) -> anyhow::Result<Self> {
        let reach = async {
            let mut conn = match target {
                RedisTarget::Single(url) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout));
                    Self::Single(ConnectionManager::new_with_config(redis::Client::open(url)?, config).await?)
                }
                RedisTarget::Cluster(nodes) => {
                    // A command retries a moved slot or a lost node a few
                    // times within the response timeout, not for the
                    // client's default minutes: a request answers 503 and is
                    // retried by its client while a failover takes longer.
                    // A retried script may have run: the scripts that take
                    // something answer a second run by the same attempt with
                    // what the first took.
                    let client = ClusterClientBuilder::new(nodes.to_vec())
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .retries(6)
                        .min_retry_wait(50)
                        .max_retry_wait(1_000)
                        .build()?;
                    let connection = client.get_async_connection().await?;
                    Self::Cluster(Cluster(Arc::new(ClusterState {
                        client,
                        current: RwLock::new((connection, Instant::now())),
                        renewing: tokio::sync::Mutex::new(()),
                    })))
                }
            };
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let named = match target {
            RedisTarget::Single(url) => crate::startup::redacted(url),
            RedisTarget::Cluster(nodes) => {
                format!(
                    "the cluster of {}",
                    nodes.iter().map(|node| crate::startup::redacted(node)).collect::<Vec<_>>().join(", ")
                )
            }
        };
        tokio::time::timeout(timeout, reach)
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {timeout:?}"))
            .and_then(|reached| reached.map_err(anyhow::Error::from))
            .with_context(|| format!("cannot reach Redis at {named}"))
    }

    /// The time of the Redis server that holds `key`, in milliseconds: the
    /// clock that stamped the times stored beside it (nodes of a cluster
    /// may disagree by as much as their clocks do).
    pub async fn time_at(&mut self, key: &str) -> redis::RedisResult<i64> {
        static TIME: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new("local now = redis.call('TIME') return now[1] * 1000 + math.floor(now[2] / 1000)")
        });
        TIME.key(key).run(self).await
    }
}

/// Builds every Redis key: the deployment's prefix (`REDIS_KEY_PREFIX`),
/// then a hash tag naming the entity whose keys are used together, so that
/// they share a cluster slot: `shop:{product:5}:gate-counter`.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// `prefix` must not hold `{` or `}`: the first braces of a key are its
    /// hash tag (see `Config::validate`).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The key `name` of `entity`'s slot.
    pub fn key(&self, entity: impl std::fmt::Display, name: impl std::fmt::Display) -> String {
        format!("{}{{{entity}}}:{name}", self.prefix)
    }

    /// The key `name` of campaign slot `slot` (see [`CAMPAIGN_SLOTS`]).
    pub fn campaign_key(&self, slot: i64, name: impl std::fmt::Display) -> String {
        self.key(format_args!("coupons:{slot}"), name)
    }
}

/// How many slots the coupon campaigns are spread over. A campaign's gate
/// and the stream its asynchronous requests are queued on share a slot, so
/// that one script grants a unit and queues its request; a stream per
/// campaign slot spreads the queue over the cluster without consumers
/// having to discover campaigns. Fixed: changing it moves every campaign's
/// keys.
pub const CAMPAIGN_SLOTS: i64 = 16;

/// Which of the [`CAMPAIGN_SLOTS`] a campaign's keys are in.
pub fn campaign_slot(type_id: i64) -> i64 {
    type_id.rem_euclid(CAMPAIGN_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_entity_share_a_hash_tag_after_the_prefix() {
        let keys = Keyspace::new("shop:");
        assert_eq!(keys.key("product:5", "gate-counter"), "shop:{product:5}:gate-counter");
        let slot = |key: String| redis::cluster_routing::Slot::for_key(key);
        assert_eq!(slot(keys.key("product:5", "a")), slot(keys.key("product:5", "b")));
        assert_ne!(slot(keys.key("product:5", "a")), slot(keys.key("product:6", "a")));
    }
}
