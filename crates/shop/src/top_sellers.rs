//! Top sellers of the last N calendar days: per-day Redis sorted sets of
//! quantity and revenue by product, summed over the days asked for.
//!
//! PostgreSQL is the truth. A day is *built* from it — the lines of the
//! orders paid that day and not cancelled, summed in one statement together
//! with the snapshot that statement saw (`pg_current_snapshot()`) — and
//! then kept up to date by each payment (after it commits) and each paid
//! order's cancellation, which add or subtract their lines.
//!
//! A rebuild races the payments that commit while it reads: each payment
//! is recorded with its transaction id in a short-lived per-day log, and
//! every Lua step decides by that id whether the installed snapshot already
//! holds it. A payment the snapshot saw is not added again; one it did not
//! see is added, whether it was recorded before the rebuild was installed
//! or after; a payment recorded twice counts once. So a sale is counted
//! exactly once, and a rebuild that read an older snapshot than the one
//! installed is dropped. An update Redis never received (it was down, or
//! the instance died) is healed by the next rebuild: today's *built* marker
//! lives [`TODAY_TTL`], a past day's [`PAST_DAY_TTL`]; a cancellation whose
//! commit could not be confirmed drops its day's marker at once.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use redis::Script;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::AppError;
use crate::redis_conn::RunScript;
use crate::redis_conn::{Keyspace, RedisConn};
use crate::storage::Db;
use crate::storage::payments::Sale;

const TODAY_TTL: Duration = Duration::from_secs(5);
const PAST_DAY_TTL: Duration = Duration::from_secs(3600);
/// Sets outlive the longest window asked for (30 days).
const SET_TTL: Duration = Duration::from_secs(32 * 24 * 3600);
/// How long a payment stays in the log: longer than any rebuild takes from
/// its read to its install (one that takes longer is not installed).
const LOG_TTL: Duration = Duration::from_secs(60);

/// The Lua shared by [`RECORD`] and [`BUILD`]: a log entry is
/// `order|sign|xid|product:quantity:revenue,…`.
const LOG_LUA: &str = r"
local function parse(entry)
    local sign, xid, lines = string.match(entry, '^%d+|(-?%d+)|(%d+)|(.*)$')
    return tonumber(sign), tonumber(xid), lines
end
local function visible(xid, snapshot)
    if not snapshot then return false end
    local xmin, xmax, running = string.match(snapshot, '^(%d+):(%d+):(.*)$')
    if xid < tonumber(xmin) then return true end
    if xid >= tonumber(xmax) then return false end
    for other in string.gmatch(running, '%d+') do
        if tonumber(other) == xid then return false end
    end
    return true
end
local function apply(quantities, revenue, sign, lines)
    for product, quantity, amount in string.gmatch(lines, '(%d+):(%d+):(%d+)') do
        redis.call('ZINCRBY', quantities, sign * tonumber(quantity), product)
        redis.call('ZINCRBY', revenue, sign * tonumber(amount), product)
    end
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
";

/// Logs a payment (sign 1) or a paid order's cancellation (sign -1), and
/// adds it to a built day unless its snapshot holds it. KEYS: built marker,
/// quantities, revenue, installed snapshot, log. ARGV: log TTL ms, entry.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LOG_LUA}
        redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms - tonumber(ARGV[1]))
        if redis.call('ZADD', KEYS[5], 'NX', now_ms, ARGV[2]) == 0 then return 0 end
        redis.call('PEXPIRE', KEYS[5], ARGV[1])
        if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
        local sign, xid, lines = parse(ARGV[2])
        if not visible(xid, redis.call('GET', KEYS[4])) then apply(KEYS[2], KEYS[3], sign, lines) end
        return 1"
    ))
});

/// Installs a day read from PostgreSQL, plus what its snapshot did not see
/// of the log since `read_at` (a payment logged before the read committed
/// before it, and is in the sums). KEYS: built marker, quantities, revenue,
/// installed snapshot, log. ARGV: marker TTL ms, set TTL ms, snapshot,
/// read_at (Redis ms), then product, quantity, revenue, … repeated.
static BUILD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LOG_LUA}
        local installed = redis.call('GET', KEYS[4])
        if installed and redis.call('EXISTS', KEYS[1]) == 1 then
            local installed_xmax = tonumber(string.match(installed, '^%d+:(%d+):'))
            if installed_xmax > tonumber(string.match(ARGV[3], '^%d+:(%d+):')) then return 0 end
        end
        redis.call('DEL', KEYS[2], KEYS[3])
        for i = 5, #ARGV, 3 do
            redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
            redis.call('ZADD', KEYS[3], ARGV[i + 2], ARGV[i])
        end
        for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], ARGV[4], '+inf')) do
            local sign, xid, lines = parse(entry)
            if not visible(xid, ARGV[3]) then apply(KEYS[2], KEYS[3], sign, lines) end
        end
        redis.call('PEXPIRE', KEYS[2], ARGV[2])
        redis.call('PEXPIRE', KEYS[3], ARGV[2])
        redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[2])
        redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
        return 1"
    ))
});

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopSeller {
    pub rank: usize,
    pub product_id: i64,
    pub name: String,
    pub price: i64,
    pub sales_count: i64,
    pub total_revenue: i64,
}

#[derive(Clone)]
pub struct TopSellers {
    redis: RedisConn,
    keys: Keyspace,
    timezone: chrono_tz::Tz,
}

/// A sorted set's (product, score) pairs.
type Scores = Vec<(i64, i64)>;

/// One day's sets: quantities and revenue by product.
struct DaySales {
    built: bool,
    quantities: Scores,
    revenue: Scores,
}

struct DayKeys {
    built: String,
    quantities: String,
    revenue: String,
    snapshot: String,
    log: String,
}

/// A committed payment or cancellation, as the top sellers record it.
pub struct SaleRecord<'a> {
    pub order_id: i64,
    /// The transaction that committed it.
    pub xid: i64,
    pub paid_at: DateTime<Utc>,
    pub sales: &'a [Sale],
}

impl TopSellers {
    pub fn new(redis: RedisConn, keys: &Keyspace, timezone: chrono_tz::Tz) -> Self {
        Self { redis, keys: keys.clone(), timezone }
    }

    fn day_of(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.timezone).date_naive()
    }

    /// The instant a calendar day begins in the shop's time zone.
    fn start_of(&self, day: NaiveDate) -> DateTime<Utc> {
        let midnight = day.and_time(chrono::NaiveTime::MIN);
        // A day that begins in a daylight-saving gap begins at its first instant.
        self.timezone
            .from_local_datetime(&midnight)
            .earliest()
            .map_or_else(|| midnight.and_utc(), |start| start.with_timezone(&Utc))
    }

    /// A day's keys, of one slot: the scripts use them together.
    fn keys(&self, day: NaiveDate) -> DayKeys {
        let day = format!("top-sellers:{day}");
        DayKeys {
            built: self.keys.key(&day, "built"),
            quantities: self.keys.key(&day, "quantity"),
            revenue: self.keys.key(&day, "revenue"),
            snapshot: self.keys.key(&day, "snapshot"),
            log: self.keys.key(&day, "log"),
        }
    }

    /// After a payment committed: its lines count on the day it was paid.
    pub async fn paid(&self, record: SaleRecord<'_>) {
        self.record(record, 1).await;
    }

    /// After a paid order's cancellation committed: its lines no longer count.
    pub async fn cancelled(&self, record: SaleRecord<'_>) {
        self.record(record, -1).await;
    }

    async fn record(&self, record: SaleRecord<'_>, sign: i64) {
        let keys = self.keys(self.day_of(record.paid_at));
        let lines: Vec<String> = record
            .sales
            .iter()
            .map(|(product_id, quantity, revenue)| format!("{product_id}:{quantity}:{revenue}"))
            .collect();
        let entry = format!("{}|{sign}|{}|{}", record.order_id, record.xid, lines.join(","));
        let mut script = RECORD.key(&keys.built);
        script.key(&keys.quantities).key(&keys.revenue).key(&keys.snapshot).key(&keys.log);
        script.arg(LOG_TTL.as_millis() as u64).arg(entry);
        // A missed update heals when the day is next rebuilt.
        if let Err(error) = script.run::<i64>(&mut self.redis.clone()).await {
            tracing::warn!(%error, "could not update the top sellers");
        }
    }

    /// Marks the day of `paid_at` for a rebuild at its next read: a
    /// cancellation whose commit could not be confirmed may or may not count.
    pub async fn rebuild_later(&self, paid_at: DateTime<Utc>) {
        let keys = self.keys(self.day_of(paid_at));
        if let Err(error) = redis::cmd("DEL").arg(&keys.built).query_async::<i64>(&mut self.redis.clone()).await {
            tracing::warn!(%error, "could not mark a top-sellers day for a rebuild");
        }
    }

    /// The best sellers of the last `days` days (today included), ties by
    /// lower product id.
    pub async fn top(&self, db: &Db, days: u32, limit: usize) -> Result<Vec<TopSeller>, AppError> {
        let today = self.day_of(Utc::now());
        let days: Vec<NaiveDate> = (0..days).map(|back| today - Days::new(back.into())).collect();
        let mut sales = self.read(&days).await?;
        if sales.iter().any(|day| !day.built) {
            for (day, _) in days.iter().zip(&sales).filter(|(_, sales)| !sales.built) {
                self.rebuild(db, *day, *day == today).await?;
            }
            sales = self.read(&days).await?;
        }
        let mut totals: HashMap<i64, (i64, i64)> = HashMap::new();
        for day in sales {
            let revenue: HashMap<i64, i64> = day.revenue.into_iter().collect();
            for (product_id, quantity) in day.quantities {
                let entry = totals.entry(product_id).or_default();
                entry.0 += quantity;
                entry.1 += revenue.get(&product_id).copied().unwrap_or(0);
            }
        }
        let mut ranked: Vec<(i64, i64, i64)> =
            totals.into_iter().filter(|(_, (quantity, _))| *quantity > 0).map(|(id, (q, r))| (id, q, r)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(limit);
        let ids: Vec<i64> = ranked.iter().map(|(id, _, _)| *id).collect();
        let products = crate::storage::products::by_ids(&mut *db.read().await?, &ids).await?;
        let products: HashMap<i64, _> = products.into_iter().map(|p| (p.id, p)).collect();
        Ok(ranked
            .into_iter()
            .filter_map(|(id, quantity, revenue)| products.get(&id).map(|p| (p, quantity, revenue)))
            .enumerate()
            .map(|(i, (product, quantity, revenue))| TopSeller {
                rank: i + 1,
                product_id: product.id,
                name: product.name.clone(),
                price: product.price,
                sales_count: quantity,
                total_revenue: revenue,
            })
            .collect())
    }

    /// The days' sets and whether each is built, side by side: a
    /// transaction per day (its own slot), so a day's marker and sets are
    /// read together.
    async fn read(&self, days: &[NaiveDate]) -> Result<Vec<DaySales>, AppError> {
        let reads = days.iter().map(|day| {
            let keys = self.keys(*day);
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.exists(&keys.built).zrange_withscores(&keys.quantities, 0, -1).zrange_withscores(&keys.revenue, 0, -1);
            let mut redis = self.redis.clone();
            async move {
                let (built, quantities, revenue): (bool, Scores, Scores) = pipe.query_async(&mut redis).await?;
                Ok::<_, AppError>(DaySales { built, quantities, revenue })
            }
        });
        futures_util::future::try_join_all(reads).await
    }

    /// Loads one day from PostgreSQL: lines of orders paid that day and not
    /// cancelled since, with the snapshot they were read in.
    async fn rebuild(&self, db: &Db, day: NaiveDate, today: bool) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let keys = self.keys(day);
        // The clock of the node that stamps the day's log.
        let read_at = redis.time_at(&keys.log).await?;
        let started = std::time::Instant::now();
        let read = sqlx::query_as!(
            DayRead,
            r#"SELECT pg_current_snapshot()::text AS "snapshot!",
                      COALESCE(array_agg(product_id ORDER BY product_id), '{}') AS "product_ids!",
                      COALESCE(array_agg(quantity ORDER BY product_id), '{}') AS "quantities!",
                      COALESCE(array_agg(revenue ORDER BY product_id), '{}') AS "revenues!"
               FROM (SELECT i.product_id, sum(i.quantity)::bigint AS quantity,
                            sum(i.quantity * i.unit_price)::bigint AS revenue
                     FROM orders o JOIN order_items i ON i.order_id = o.id
                     WHERE o.paid_at IS NOT NULL AND o.status IN ('PAID', 'SHIPPED', 'DELIVERED', 'COMPLETED')
                       AND o.paid_at >= $1 AND o.paid_at < $2
                     GROUP BY i.product_id) sales"#,
            self.start_of(day),
            self.start_of(day + Days::new(1)),
        )
        .fetch_one(&mut *db.read().await?)
        .await?;
        if started.elapsed() > LOG_TTL / 2 {
            // The log may no longer hold every payment this read missed.
            return Ok(());
        }
        // Tests hold a rebuild here while a payment commits and records.
        fail::fail_point!("top_sellers::rebuild::read");
        let marker_ttl = if today { TODAY_TTL } else { PAST_DAY_TTL };
        let mut script = BUILD.key(&keys.built);
        script.key(&keys.quantities).key(&keys.revenue).key(&keys.snapshot).key(&keys.log);
        script.arg(marker_ttl.as_millis() as u64).arg(SET_TTL.as_millis() as u64).arg(&read.snapshot).arg(read_at);
        for ((product_id, quantity), revenue) in read.product_ids.iter().zip(&read.quantities).zip(&read.revenues) {
            script.arg(product_id).arg(quantity).arg(revenue);
        }
        script.run::<i64>(&mut redis).await?;
        metrics::counter!("shop_top_sellers_rebuilds_total").increment(1);
        Ok(())
    }
}

/// A day's sales as PostgreSQL had them, by product, and the snapshot
/// they were read in (`xmin:xmax:running,…`).
struct DayRead {
    snapshot: String,
    product_ids: Vec<i64>,
    quantities: Vec<i64>,
    revenues: Vec<i64>,
}
