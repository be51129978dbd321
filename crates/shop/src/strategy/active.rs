//! The campaigns or products a gate's reconciler visits each round: a Redis
//! set of every one ever loaded, and those this instance was asked for
//! since its last round. The set lives on a slot of its own (Redis Cluster
//! cannot add to it in the scripts of the entities' slots), so a failover
//! can lose a member whose gate lives on; every instance adds back what it
//! was asked for, so any request for an entity brings it back under
//! reconciliation.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use redis::AsyncCommands;

use crate::redis_conn::RedisConn;

#[derive(Clone)]
pub struct ActiveSet {
    key: String,
    touched: Arc<Mutex<HashSet<i64>>>,
}

impl ActiveSet {
    pub fn new(key: String) -> Self {
        Self { key, touched: Arc::default() }
    }

    /// This instance was asked for `ids`.
    pub fn touch(&self, ids: impl IntoIterator<Item = i64>) {
        self.touched.lock().expect("not poisoned").extend(ids);
    }

    /// Records `id` before anything of it can need reconciling (a load).
    pub async fn add(&self, redis: &mut RedisConn, id: i64) -> redis::RedisResult<()> {
        redis.sadd::<_, _, i64>(&self.key, id).await.map(drop)
    }

    /// The ids to visit this round: the set's and those asked for here
    /// since the last round, which are added to it. When Redis fails those
    /// asked for are still visited, and kept for the next round.
    pub async fn round(&self, redis: &mut RedisConn) -> Vec<i64> {
        let touched: Vec<i64> = std::mem::take(&mut *self.touched.lock().expect("not poisoned")).into_iter().collect();
        if !touched.is_empty()
            && let Err(error) = redis.sadd::<_, _, i64>(&self.key, &touched).await
        {
            tracing::warn!(%error, key = self.key, "could not add to a reconciler's set; trying next round");
            self.touch(touched.iter().copied());
        }
        let mut ids: BTreeSet<i64> = touched.into_iter().collect();
        match redis.smembers::<_, Vec<i64>>(&self.key).await {
            Ok(members) => ids.extend(members),
            Err(error) => tracing::warn!(%error, key = self.key, "could not read a reconciler's set"),
        }
        ids.into_iter().collect()
    }
}
