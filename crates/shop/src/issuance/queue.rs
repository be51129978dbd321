//! The Redis streams asynchronous issue requests wait on, and their
//! consumer group: every instance reads new entries as a consumer of one
//! group, acknowledges (and deletes) an entry only once its outcome is
//! committed, and claims the entries another consumer read but left
//! unacknowledged for too long (it died). Deleting acknowledged entries
//! keeps each stream as long as its backlog.
//!
//! There is a stream per campaign slot ([`CAMPAIGN_SLOTS`]), on the slot of
//! its campaigns' gates, so a Redis Cluster spreads the queue over its
//! masters and a campaign's requests stay in one stream, in the order they
//! came. A cluster cannot block on streams of several slots in one read, so
//! consumers read every stream without blocking: at once when a request was
//! queued through this instance, else every [`IDLE_POLL`].

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::redis_conn::{CAMPAIGN_SLOTS, Keyspace, RedisConn, campaign_slot};
use crate::storage::issue_requests::QueuedRequest;
use crate::strategy::coupons::StreamEntry;

const GROUP: &str = "issuers";
/// How often an idle consumer looks for requests queued through other
/// instances.
pub const IDLE_POLL: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Queue {
    redis: RedisConn,
    keys: Keyspace,
    consumer: String,
    /// Wakes this instance's consumer when a request was queued here.
    queued: Arc<Notify>,
}

/// An entry read from a stream: the campaign slot of its stream, its id
/// there, and the request, unless the entry could not be read as one.
pub struct Entry {
    pub slot: i64,
    pub id: String,
    pub request: Option<QueuedRequest>,
}

impl Entry {
    /// Names the entry among every stream's.
    pub fn key(&self) -> (i64, String) {
        (self.slot, self.id.clone())
    }
}

impl Queue {
    pub fn new(redis: RedisConn, keys: &Keyspace) -> Self {
        Self { redis, keys: keys.clone(), consumer: Uuid::new_v4().to_string(), queued: Arc::default() }
    }

    fn stream(&self, slot: i64) -> String {
        self.keys.campaign_key(slot, "issue-requests")
    }

    /// The entry that queues `request`, on its campaign's stream.
    pub fn entry(&self, request: &QueuedRequest) -> StreamEntry {
        StreamEntry {
            stream: self.stream(campaign_slot(request.type_id)),
            fields: vec![
                ("request", request.id.to_string()),
                ("user", request.user_id.to_string()),
                ("type", request.type_id.to_string()),
            ],
        }
    }

    pub async fn add(&self, request: &QueuedRequest) -> redis::RedisResult<()> {
        let entry = self.entry(request);
        let mut fields = entry.fields.clone();
        if let Some(grant) = request.gate_grant {
            fields.push(("grant", grant.to_string()));
        }
        let _: String =
            redis::cmd("XADD").arg(&entry.stream).arg("*").arg(&fields).query_async(&mut self.redis.clone()).await?;
        self.wake();
        Ok(())
    }

    /// Tells this instance's consumer a request was queued and written down.
    pub fn wake(&self) {
        self.queued.notify_one();
    }

    /// Waits until a request is queued through this instance, or `poll`.
    pub async fn until_queued(&self, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.queued.notified()).await;
    }

    /// Creates the group on every stream where it is missing (first start,
    /// or Redis lost the stream), reading from the stream's start.
    pub async fn ensure_group(&self) -> redis::RedisResult<()> {
        futures_util::future::try_join_all((0..CAMPAIGN_SLOTS).map(|slot| self.ensure_group_of(slot))).await.map(drop)
    }

    async fn ensure_group_of(&self, slot: i64) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream(slot))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.redis.clone())
            .await;
        match created {
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// What `per_stream` read from every stream, side by side. A stream
    /// whose group is gone (Redis lost it; the sweep requeues its requests)
    /// gets it back; one whose read fails is skipped this time, so that
    /// what the others handed this consumer is not left unread. An error
    /// only if every stream failed.
    async fn each_stream<F, Fut>(&self, per_stream: F) -> redis::RedisResult<Vec<Entry>>
    where
        F: Fn(i64) -> Fut,
        Fut: Future<Output = redis::RedisResult<Vec<Entry>>>,
    {
        let reads = futures_util::future::join_all((0..CAMPAIGN_SLOTS).map(&per_stream)).await;
        let (mut entries, mut failures, mut last_failure) = (Vec::new(), 0, None);
        for (slot, read) in (0..CAMPAIGN_SLOTS).zip(reads) {
            let failure = match read {
                Ok(read) => {
                    entries.extend(read);
                    continue;
                }
                Err(error) if error.code() == Some("NOGROUP") => match self.ensure_group_of(slot).await {
                    Ok(()) => continue,
                    Err(error) => error,
                },
                Err(error) => error,
            };
            tracing::warn!(error = %failure, slot, "could not read an issue request stream; trying again");
            failures += 1;
            last_failure = Some(failure);
        }
        match last_failure {
            Some(error) if failures == CAMPAIGN_SLOTS => Err(error),
            _ => Ok(entries),
        }
    }

    /// New entries for this consumer, up to `count` from each stream.
    pub async fn read_new(&self, count: usize) -> redis::RedisResult<Vec<Entry>> {
        self.read(count, ">").await
    }

    /// Entries this consumer read and has not acknowledged.
    pub async fn read_own(&self, count: usize) -> redis::RedisResult<Vec<Entry>> {
        self.read(count, "0").await
    }

    /// `XREADGROUP` from `from` on every stream, side by side: `>` for new
    /// entries, `0` for this consumer's unacknowledged ones.
    async fn read(&self, count: usize, from: &str) -> redis::RedisResult<Vec<Entry>> {
        self.each_stream(|slot| {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP").arg(GROUP).arg(&self.consumer).arg("COUNT").arg(count);
            read.arg("STREAMS").arg(self.stream(slot)).arg(from);
            let mut redis = self.redis.clone();
            async move {
                let reply: Option<StreamReadReply> = read.query_async(&mut redis).await?;
                let ids = reply.into_iter().flat_map(|reply| reply.keys).flat_map(|key| key.ids);
                Ok(ids.map(|id| Entry::read(slot, id)).collect())
            }
        })
        .await
    }

    /// Entries read by a consumer but not acknowledged for `idle`: taken
    /// over by this one, up to `count` from each stream.
    pub async fn claim_idle(&self, idle: Duration, count: usize) -> redis::RedisResult<Vec<Entry>> {
        self.each_stream(|slot| {
            let mut claim = redis::cmd("XAUTOCLAIM");
            claim.arg(self.stream(slot)).arg(GROUP).arg(&self.consumer).arg(idle.as_millis() as u64);
            claim.arg("0-0").arg("COUNT").arg(count);
            let mut redis = self.redis.clone();
            async move {
                let reply: StreamAutoClaimReply = claim.query_async(&mut redis).await?;
                Ok(reply.claimed.into_iter().map(|id| Entry::read(slot, id)).collect())
            }
        })
        .await
    }

    /// Acknowledges and deletes the entries, in one transaction per stream.
    pub async fn done(&self, entries: &[(i64, String)]) -> redis::RedisResult<()> {
        let mut by_slot: std::collections::BTreeMap<i64, Vec<&str>> = std::collections::BTreeMap::new();
        for (slot, id) in entries {
            by_slot.entry(*slot).or_default().push(id);
        }
        let dones = by_slot.into_iter().map(|(slot, ids)| {
            let stream = self.stream(slot);
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(&ids).ignore();
            pipe.cmd("XDEL").arg(&stream).arg(&ids).ignore();
            let mut redis = self.redis.clone();
            async move { pipe.query_async::<()>(&mut redis).await }
        });
        futures_util::future::try_join_all(dones).await.map(drop)
    }
}

impl Entry {
    fn read(slot: i64, entry: StreamId) -> Self {
        let field = |name: &str| entry.get::<String>(name);
        let request = (|| {
            Some(QueuedRequest {
                id: Uuid::parse_str(&field("request")?).ok()?,
                user_id: field("user")?.parse().ok()?,
                type_id: field("type")?.parse().ok()?,
                gate_grant: field("grant").and_then(|grant| grant.parse().ok()),
            })
        })();
        Self { slot, id: entry.id, request }
    }
}
