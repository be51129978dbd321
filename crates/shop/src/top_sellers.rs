//! Top sellers of the last N calendar days: per-day Redis sorted sets of
//! quantity and revenue by product, summed over the days asked for.
//!
//! PostgreSQL is the truth. Each day's sets carry a *built* marker, set when
//! the day was loaded from PostgreSQL. A payment (after it commits) adds to
//! a day only while its marker exists, and a paid order's cancellation
//! subtracts from the day it was paid; a day without its marker (never
//! loaded, or lost by Redis) is rebuilt before it is read. An increment that
//! races a rebuild can be missed, so today's marker lives only
//! [`TODAY_TTL`]: a payment shows within that long whatever happens.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use redis::Script;
use redis::aio::ConnectionManager;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::http::error::AppError;

const TODAY_TTL: Duration = Duration::from_secs(5);
const PAST_DAY_TTL: Duration = Duration::from_secs(3600);
/// Sets outlive the longest window asked for (30 days).
const SET_TTL: Duration = Duration::from_secs(32 * 24 * 3600);

/// Adds (or with negative numbers, subtracts) a paid order's lines to a day
/// if the day is built. KEYS: built marker, quantities, revenue. ARGV:
/// product, quantity, revenue, … repeated.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
          for i = 1, #ARGV, 3 do
              redis.call('ZINCRBY', KEYS[2], ARGV[i + 1], ARGV[i])
              redis.call('ZINCRBY', KEYS[3], ARGV[i + 2], ARGV[i])
          end
          return 1",
    )
});

/// Replaces a day's sets. KEYS: built marker, quantities, revenue. ARGV:
/// marker TTL ms, set TTL ms, then product, quantity, revenue, … repeated.
static BUILD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('DEL', KEYS[2], KEYS[3])
          for i = 3, #ARGV, 3 do
              redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
              redis.call('ZADD', KEYS[3], ARGV[i + 2], ARGV[i])
          end
          redis.call('PEXPIRE', KEYS[2], ARGV[2])
          redis.call('PEXPIRE', KEYS[3], ARGV[2])
          redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
          return 1",
    )
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

/// (product id, quantity, revenue) of one order line.
pub type Sale = (i64, i64, i64);

#[derive(Clone)]
pub struct TopSellers {
    redis: ConnectionManager,
    prefix: String,
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
}

impl TopSellers {
    pub fn new(redis: ConnectionManager, prefix: &str, timezone: chrono_tz::Tz) -> Self {
        Self { redis, prefix: prefix.to_owned(), timezone }
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

    fn keys(&self, day: NaiveDate) -> DayKeys {
        let base = format!("{}top-sellers:{day}", self.prefix);
        DayKeys {
            built: format!("{base}:built"),
            quantities: format!("{base}:quantity"),
            revenue: format!("{base}:revenue"),
        }
    }

    /// After a payment committed: its lines count on the day it was paid.
    pub async fn paid(&self, paid_at: DateTime<Utc>, sales: &[Sale]) {
        self.record(paid_at, sales, 1).await;
    }

    /// After a paid order's cancellation committed: its lines no longer count.
    pub async fn cancelled(&self, paid_at: DateTime<Utc>, sales: &[Sale]) {
        self.record(paid_at, sales, -1).await;
    }

    async fn record(&self, paid_at: DateTime<Utc>, sales: &[Sale], sign: i64) {
        let keys = self.keys(self.day_of(paid_at));
        let mut script = RECORD.key(&keys.built);
        script.key(&keys.quantities).key(&keys.revenue);
        for (product_id, quantity, revenue) in sales {
            script.arg(product_id).arg(sign * quantity).arg(sign * revenue);
        }
        // A missed update heals when the day is next rebuilt.
        if let Err(error) = script.invoke_async::<i64>(&mut self.redis.clone()).await {
            tracing::warn!(%error, "could not update the top sellers");
        }
    }

    /// The best sellers of the last `days` days (today included), ties by
    /// lower product id.
    pub async fn top(&self, db: &PgPool, days: u32, limit: usize) -> Result<Vec<TopSeller>, AppError> {
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
        let products = crate::storage::products::by_ids(&mut *db.acquire().await?, &ids).await?;
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

    /// The days' sets and whether each is built, in one round trip; a
    /// transaction, so a day's marker and sets are read together.
    async fn read(&self, days: &[NaiveDate]) -> Result<Vec<DaySales>, AppError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for day in days {
            let keys = self.keys(*day);
            pipe.exists(&keys.built).zrange_withscores(&keys.quantities, 0, -1).zrange_withscores(&keys.revenue, 0, -1);
        }
        let replies: Vec<(bool, Scores, Scores)> = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(replies.into_iter().map(|(built, quantities, revenue)| DaySales { built, quantities, revenue }).collect())
    }

    /// Loads one day from PostgreSQL: lines of orders paid that day and not
    /// cancelled since.
    async fn rebuild(&self, db: &PgPool, day: NaiveDate, today: bool) -> Result<(), AppError> {
        let sales: Vec<Sale> = sqlx::query_as(
            "SELECT i.product_id, sum(i.quantity)::bigint, sum(i.quantity * i.unit_price)::bigint
             FROM orders o JOIN order_items i ON i.order_id = o.id
             WHERE o.paid_at IS NOT NULL AND o.status IN ('PAID', 'SHIPPED', 'DELIVERED', 'COMPLETED')
               AND o.paid_at >= $1 AND o.paid_at < $2
             GROUP BY i.product_id",
        )
        .bind(self.start_of(day))
        .bind(self.start_of(day + Days::new(1)))
        .fetch_all(db)
        .await?;
        let keys = self.keys(day);
        let marker_ttl = if today { TODAY_TTL } else { PAST_DAY_TTL };
        let mut script = BUILD.key(&keys.built);
        script.key(&keys.quantities).key(&keys.revenue);
        script.arg(marker_ttl.as_millis() as u64).arg(SET_TTL.as_millis() as u64);
        for (product_id, quantity, revenue) in &sales {
            script.arg(product_id).arg(quantity).arg(revenue);
        }
        script.invoke_async::<i64>(&mut self.redis.clone()).await?;
        metrics::counter!("shop_top_sellers_rebuilds_total").increment(1);
        Ok(())
    }
}
