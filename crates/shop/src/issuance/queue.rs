//! The Redis stream asynchronous issue requests wait on, and its consumer
//! group: every instance reads new entries as a consumer of one group,
//! acknowledges (and deletes) an entry only once its outcome is committed,
//! and claims the entries another consumer read but left unacknowledged
//! for too long (it died). Deleting acknowledged entries keeps the stream
//! as long as its backlog.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use uuid::Uuid;

use crate::storage::issue_requests::QueuedRequest;
use crate::strategy::coupons::StreamEntry;

const GROUP: &str = "issuers";

#[derive(Clone)]
pub struct Queue {
    /// A connection of its own: a blocking read would hold up every
    /// command behind it on a shared one.
    redis: ConnectionManager,
    stream: String,
    consumer: String,
}

/// An entry read from the stream: its id, and the request, unless the
/// entry could not be read as one.
pub struct Entry {
    pub id: String,
    pub request: Option<QueuedRequest>,
}

impl Queue {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self { redis, stream: format!("{prefix}coupon-issue:requests"), consumer: Uuid::new_v4().to_string() }
    }

    /// The entry that queues `request`.
    pub fn entry(&self, request: &QueuedRequest) -> StreamEntry {
        StreamEntry {
            stream: self.stream.clone(),
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
            redis::cmd("XADD").arg(&self.stream).arg("*").arg(&fields).query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Creates the group if it is missing (first start, or Redis lost the
    /// stream), reading from the stream's start.
    pub async fn ensure_group(&self) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
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

    /// New entries for this consumer, waiting up to `block` for some.
    pub async fn read_new(&self, count: usize, block: Duration) -> redis::RedisResult<Vec<Entry>> {
        self.read(count, Some(block), ">").await
    }

    /// Entries this consumer read and has not acknowledged.
    pub async fn read_own(&self, count: usize) -> redis::RedisResult<Vec<Entry>> {
        self.read(count, None, "0").await
    }

    /// `XREADGROUP` from `from`: `>` for new entries, `0` for this
    /// consumer's unacknowledged ones.
    async fn read(&self, count: usize, block: Option<Duration>, from: &str) -> redis::RedisResult<Vec<Entry>> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg(&self.consumer).arg("COUNT").arg(count);
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis() as u64);
        }
        let reply: Option<StreamReadReply> =
            read.arg("STREAMS").arg(&self.stream).arg(from).query_async(&mut self.redis.clone()).await?;
        Ok(reply.into_iter().flat_map(|reply| reply.keys).flat_map(|key| key.ids).map(Entry::from).collect())
    }

    /// Entries read by a consumer but not acknowledged for `idle`: taken
    /// over by this one.
    pub async fn claim_idle(&self, idle: Duration, count: usize) -> redis::RedisResult<Vec<Entry>> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(reply.claimed.into_iter().map(Entry::from).collect())
    }

    /// Acknowledges and deletes the entries, in one transaction.
    pub async fn done(&self, ids: &[String]) -> redis::RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(ids)
            .ignore()
            .query_async(&mut self.redis.clone())
            .await
    }
}

impl From<StreamId> for Entry {
    fn from(entry: StreamId) -> Self {
        let field = |name: &str| entry.get::<String>(name);
        let request = (|| {
            Some(QueuedRequest {
                id: Uuid::parse_str(&field("request")?).ok()?,
                user_id: field("user")?.parse().ok()?,
                type_id: field("type")?.parse().ok()?,
                gate_grant: field("grant").and_then(|grant| grant.parse().ok()),
            })
        })();
        Self { id: entry.id, request }
    }
}
