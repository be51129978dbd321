//! Redis gate: one Lua script decides at once — one per user, units left —
//! and hands out a unit; only then is the coupon written to PostgreSQL. A
//! rush is answered from Redis: requests that cannot win never reach the
//! database, and those that can do not queue on a row lock to learn it.
//!
//! Per campaign Redis holds `left` (units not yet handed out), the set of
//! holders, and the *pending* grants (holder → time granted) whose coupon is
//! not yet known to be in PostgreSQL. Removing a holder from `pending` is how
//! a grant is settled, by whoever gets there first:
//!
//! - the issuing request after its commit (`ZREM`), or after a failed write
//!   by giving the unit back (the give-back script `ZREM`s first and only
//!   returns the unit if that removed something). The request runs to its
//!   end even when its client leaves (`http::run_to_completion`);
//! - the reconciler, for grants older than `reconcile_after`: if the coupon
//!   is in PostgreSQL it completes the grant, else it gives the unit back —
//!   so a crash between the gate and the write loses no unit for good.
//!
//! A refusal is given only once it is final. While a unit is pending, the
//! gate does not know whether it will be written or come back, so a user
//! whose own grant is pending, or anyone asking while every unit left is
//! pending, waits for the grants to settle (briefly; past that, PostgreSQL
//! answers what it knows, or the answer is a retryable 503) — never
//! `COUPON_ALREADY_ISSUED` or `COUPON_SOLD_OUT` on a guess.
//!
//! PostgreSQL has the last word, so the gate may be optimistic but never
//! pessimistic: a unit the reconciler returned while its slow writer still
//! committed makes the gate hand out one too many, and the database's
//! `coupon_types_issued_check` refuses it, which closes the gate; a holder
//! the gate forgot is refused by `coupons_user_type_key`.
//!
//! Granted requests are written together: the grants an instance hands
//! out while its previous write is in flight go to PostgreSQL in one
//! transaction (see [`crate::batcher`]) — one count of the campaign row and
//! one insert of their coupons — so that the second in which a drop's
//! coupons are written, while later requests wait on pending grants to
//! learn they are sold out, lasts a few batches instead of a row lock per
//! coupon. The batch decides its grants under the campaign row's lock, as
//! the database sees them, so a gate that granted more than the database
//! has left costs no redo; a batch that fails all the same (a lost
//! connection) is written one grant at a time, each with its own answer,
//! and one whose COMMIT's outcome is unknown leaves its grants pending for
//! the reconciler.
//!
//! If Redis loses the keys (a restart without persistence), the script says
//! so and the gate is rebuilt from PostgreSQL before it answers again: one
//! instance takes a loading lease and loads `left = total − issued` and the
//! holders, the others wait for it. The load installs only while its lease
//! holds and no gate exists, so a loader that stalled past its lease cannot
//! overwrite a newer gate with an older snapshot. Grants that were in flight
//! during the loss may then be handed out twice by Redis; the constraints
//! refuse the surplus. Redis must not evict these keys
//! (`maxmemory-policy noeviction`).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{AsyncCommands, Script};
use sqlx::PgConnection;
use tokio::sync::Notify;

use super::sold_out::SoldOut;
use super::{
    CouponHold, CouponStrategy, Issued, StreamEntry, count_issued, refuse_settled, save_response, write_alone,
    write_coupon,
};
use crate::batcher::{self, Batcher};
use crate::config::CouponStrategyKind;
use crate::domain::coupon::CouponType;
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::redis_conn::RunScript;
use crate::redis_conn::{Keyspace, RedisConn, campaign_slot};
use crate::storage::Db;
use crate::storage::Tx;
use crate::storage::coupons;
use crate::strategy::active::ActiveSet;
use crate::strategy::{Chore, Deps};

/// Hands out a unit. KEYS: state, holders, pending, and for an
/// asynchronous request the stream it is queued on (of the campaign's
/// slot), in the same step. ARGV: user, the attempt's token, then the
/// stream entry's fields and values (`grant` is added). Answers
/// `GRANTED:<the grant's time, ms>`, or `PENDING` while the answer depends
/// on grants not yet settled (`HOLDER_PENDING`: the user's own). The token
/// is kept in the state (`t:<user>`) while the grant is pending, so the same
/// attempt run again (a client re-sending it after a lost reply) is answered
/// its grant, not its own pending grant. Public so the load generator can
/// measure Redis running it alone.
pub const GRANT_LUA: &str = r"if redis.call('EXISTS', KEYS[1]) == 0 then return 'NOT_LOADED' end
          if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
              local granted = redis.call('ZSCORE', KEYS[3], ARGV[1])
              if not granted then return 'ALREADY_ISSUED' end
              if redis.call('HGET', KEYS[1], 't:' .. ARGV[1]) == ARGV[2] then
                  return 'GRANTED:' .. string.format('%.0f', tonumber(granted))
              end
              return 'HOLDER_PENDING'
          end
          if tonumber(redis.call('HGET', KEYS[1], 'left')) <= 0 then
              if redis.call('ZCARD', KEYS[3]) > 0 then return 'PENDING' end
              return 'SOLD_OUT'
          end
          redis.call('HINCRBY', KEYS[1], 'left', -1)
          redis.call('HSET', KEYS[1], 't:' .. ARGV[1], ARGV[2])
          redis.call('SADD', KEYS[2], ARGV[1])
          local now = redis.call('TIME')
          local granted = now[1] * 1000 + math.floor(now[2] / 1000)
          redis.call('ZADD', KEYS[3], granted, ARGV[1])
          if KEYS[4] then
              local fields = {unpack(ARGV, 3)}
              table.insert(fields, 'grant')
              table.insert(fields, granted)
              redis.call('XADD', KEYS[4], '*', unpack(fields))
          end
          return 'GRANTED:' .. granted";

static GRANT: LazyLock<Script> = LazyLock::new(|| Script::new(GRANT_LUA));

// The settling scripts answer 0 if the grant was settled already, 2 if
// requests waiting on pending grants may now have their answer, else 1.

/// Settles a pending grant whose coupon was written. KEYS: state, holders,
/// pending. ARGV: user.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
          redis.call('HDEL', KEYS[1], 't:' .. ARGV[1])
          if redis.call('ZCARD', KEYS[3]) == 0 then return 2 end
          return 1",
    )
});

/// Settles a pending grant by returning its unit. KEYS: state, holders,
/// pending. ARGV: user, keep holder (1 when the user turned out to hold one).
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
          redis.call('HDEL', KEYS[1], 't:' .. ARGV[1])
          redis.call('HINCRBY', KEYS[1], 'left', 1)
          if ARGV[2] == '0' then redis.call('SREM', KEYS[2], ARGV[1]) end
          return 2",
    )
});

/// Settles a pending grant that the database refused as sold out: the
/// database is the truth, so the gate closes. KEYS: state, holders, pending.
/// ARGV: user.
static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
          redis.call('HDEL', KEYS[1], 't:' .. ARGV[1])
          redis.call('SREM', KEYS[2], ARGV[1])
          redis.call('HSET', KEYS[1], 'left', 0)
          return 2",
    )
});

/// Installs a loaded campaign, if this loader still holds the loading lease
/// and no gate exists. KEYS: state, holders, pending, this loader's staged
/// holders, loading lease. ARGV: left, loader token. Answers 1 if installed.
static LOAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[5]) ~= ARGV[2] or redis.call('EXISTS', KEYS[1]) == 1 then
              redis.call('DEL', KEYS[4])
              return 0
          end
          if redis.call('EXISTS', KEYS[4]) == 1 then
              redis.call('RENAME', KEYS[4], KEYS[2])
          else
              redis.call('DEL', KEYS[2])
          end
          redis.call('DEL', KEYS[3])
          redis.call('HSET', KEYS[1], 'left', ARGV[1])
          redis.call('DEL', KEYS[5])
          return 1",
    )
});

/// How long one instance may take to load a campaign before another may.
const LOADING_LEASE: Duration = Duration::from_secs(10);
const HOLDERS_PER_SADD: usize = 5_000;
/// How long a request waits for pending grants to settle before it asks
/// PostgreSQL what is final. Writes take milliseconds, or a few seconds on
/// a saturated machine; a grant pending longer lost its writer, and the
/// reconciler settles it.
const PENDING_WAIT: Duration = Duration::from_secs(5);
/// How long the read of a sold-out campaign's holders may take before it
/// is given up, to be tried again by a later `SOLD_OUT`.
const HOLDERS_READ_DEADLINE: Duration = Duration::from_secs(10);
/// Longest pause between two looks while waiting: settlements by other
/// instances are seen this late at most (this instance's wake waiters).
const PENDING_POLL: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct CouponGate {
    redis: RedisConn,
    keys: Keyspace,
    /// A grant still pending after this long is reconciled.
    reconcile_after: Duration,
    /// Wakes this instance's requests waiting on pending grants when a
    /// settlement may have given them their answer, so that they need not
    /// poll Redis often.
    settled: Arc<Notify>,
    /// The campaigns the reconciler visits.
    active: ActiveSet,
    /// Granted requests waiting to be written together.
    writes: Arc<Batcher<Granted, Result<Issued, AppError>>>,
    /// Campaigns known sold out for good, answered without Redis.
    sold_out: Arc<SoldOut>,
}

/// A granted request, to be written.
struct Granted {
    coupon_type: CouponType,
    user_id: i64,
    /// The grant's time, which the coupon records.
    grant: Option<i64>,
    claim: Option<Claim>,
}

struct Keys {
    state: String,
    holders: String,
    pending: String,
    loading: String,
    /// Prefix of each loader's staged holders.
    staged: String,
}

#[async_trait]
impl CouponStrategy for CouponGate {
    fn kind(&self) -> CouponStrategyKind {
        CouponStrategyKind::RedisGate
    }

    async fn hold(&self, db: &Db, coupon_type: &CouponType, user_id: i64) -> Result<CouponHold, AppError> {
        let granted = self
            .grant(db, coupon_type, &self.keys(coupon_type.id), user_id, None)
            .await?
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("a synchronous grant left undecided")))?;
        // A simulated crash: the unit is handed out and never written.
        fail::fail_point!("coupons::gate::granted", |_| Err(AppError::internal(anyhow::anyhow!(
            "simulated crash after the coupon gate"
        ))));
        Ok(CouponHold { leases: Vec::new(), grant: Some(granted) })
    }

    /// The grant and the request's entry in one script. While every unit
    /// left is pending, the request is accepted without a unit (`None`):
    /// the database decides it when its turn comes.
    async fn accept(
        &self,
        db: &Db,
        coupon_type: &CouponType,
        user_id: i64,
        queue: &StreamEntry,
    ) -> Result<Option<i64>, AppError> {
        self.grant(db, coupon_type, &self.keys(coupon_type.id), user_id, Some(queue)).await
    }

    /// Written with the grants handed out beside it.
    async fn write(
        &self,
        _: &Db,
        coupon_type: &CouponType,
        user_id: i64,
        hold: &CouponHold,
        claim: Option<&Claim>,
    ) -> Result<Issued, AppError> {
        let granted = Granted { coupon_type: coupon_type.clone(), user_id, grant: hold.grant, claim: claim.cloned() };
        self.writes.submit(granted).await.and_then(|issued| issued)
    }

    async fn issue(
        &self,
        conn: &mut PgConnection,
        coupon_type: &CouponType,
        user_id: i64,
        hold: &CouponHold,
    ) -> Result<Issued, AppError> {
        issue_granted(conn, coupon_type, user_id, hold.grant).await
    }

    async fn settle(&self, coupon_type: &CouponType, user_id: i64, _: CouponHold, issued: Result<&Issued, &AppError>) {
        let keys = self.keys(coupon_type.id);
        let settled = match issued {
            Ok(_) => self.settle_grant(&COMPLETE, &keys, user_id, None).await,
            Err(AppError::CouponSoldOut) => self.settle_grant(&CLOSE, &keys, user_id, None).await,
            Err(AppError::CouponAlreadyIssued) => self.settle_grant(&GIVE_BACK, &keys, user_id, Some(true)).await,
            // It may have been written: the reconciler looks in PostgreSQL
            // before it completes the grant or gives the unit back.
            Err(AppError::OutcomeUnknown) => Ok(()),
            Err(_) => self.settle_grant(&GIVE_BACK, &keys, user_id, Some(false)).await,
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "could not settle a coupon grant; the reconciler will");
        }
    }

    /// Settles the grants left behind, often enough that a lost unit is
    /// back within `reconcile_after` and a third.
    fn chore(&self, db: &Db) -> Option<Chore> {
        let (gate, db) = (self.clone(), db.clone());
        Some(Chore {
            every: self.reconcile_after / 3,
            what: "reconcile the coupon gate",
            run: Box::new(move || Box::pin(gate.clone().reconcile(db.clone()))),
        })
    }

    fn holds_settle_within(&self) -> Duration {
        self.reconcile_after + self.reconcile_after / 3
    }
}

impl CouponGate {
    pub fn new(deps: &Deps<'_>) -> Self {
        Self {
            redis: deps.redis.clone(),
            keys: deps.keys.clone(),
            reconcile_after: deps.locks.gate_reconcile_after(),
            settled: Arc::new(Notify::new()),
            active: ActiveSet::new(deps.keys.key("coupon-gate", "active")),
            sold_out: Arc::new(SoldOut::default()),
            writes: Arc::new(Batcher::start("coupons", {
                let db = deps.db.clone();
                move |grants| write_grants(db.clone(), grants)
            })),
        }
    }

    /// The campaign's keys, of its slot (see [`campaign_slot`]).
    fn keys(&self, type_id: i64) -> Keys {
        let key = |name: &str| self.keys.campaign_key(campaign_slot(type_id), format_args!("gate:{type_id}:{name}"));
        Keys {
            state: key("state"),
            holders: key("holders"),
            pending: key("pending"),
            loading: key("loading"),
            staged: key("staged"),
        }
    }

    /// Takes a unit from the gate for the user (the grant's time, which
    /// names it), queueing an asynchronous request on `queue` in the same
    /// script, or says why not once that is final. An asynchronous request
    /// is refused at once while the user's own grant is pending, and not
    /// held up by others' (`None`: no unit taken, the database decides).
    async fn grant(
        &self,
        db: &Db,
        coupon_type: &CouponType,
        keys: &Keys,
        user_id: i64,
        queue: Option<&StreamEntry>,
    ) -> Result<Option<i64>, AppError> {
        if let Some(refusal) = self.sold_out.refusal(coupon_type.id, user_id) {
            metrics::counter!("shop_coupon_gate_remembered_total").increment(1);
            return Err(refusal);
        }
        let asked = Instant::now();
        let mut loads = 0;
        let mut pause = Duration::from_millis(5);
        self.active.touch([coupon_type.id]);
        let mut script = GRANT.key(&keys.state);
        script.key(&keys.holders).key(&keys.pending).arg(user_id).arg(uuid::Uuid::new_v4().to_string());
        if let Some(queue) = queue {
            script.key(&queue.stream);
            for (field, value) in &queue.fields {
                script.arg(*field).arg(value);
            }
        }
        loop {
            let answer: String = script.run(&mut self.redis.clone()).await?;
            let (outcome, granted) = answer.split_once(':').unwrap_or((answer.as_str(), ""));
            metrics::counter!("shop_coupon_gate_total", "outcome" => outcome.to_lowercase()).increment(1);
            match outcome {
                "GRANTED" => return granted.parse().map(Some).map_err(AppError::internal),
                "SOLD_OUT" => {
                    self.remember_sold_out(db, coupon_type);
                    return Err(AppError::CouponSoldOut);
                }
                "ALREADY_ISSUED" => return Err(AppError::CouponAlreadyIssued),
                "NOT_LOADED" if loads < 3 => {
                    loads += 1;
                    self.load(db, coupon_type.id, keys).await?;
                }
                "NOT_LOADED" => return Err(AppError::Unavailable("the coupon gate is being rebuilt")),
                "HOLDER_PENDING" if queue.is_some() => return Err(AppError::CouponAlreadyIssued),
                "PENDING" if queue.is_some() => return Ok(None),
                "PENDING" | "HOLDER_PENDING" if asked.elapsed() < PENDING_WAIT => {
                    tokio::select! {
                        _ = self.settled.notified() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(PENDING_POLL);
                }
                "PENDING" | "HOLDER_PENDING" => return Err(refusal_from_database(db, coupon_type, user_id).await),
                other => return Err(AppError::internal(anyhow::anyhow!("unexpected gate answer {other}"))),
            }
        }
    }

    /// After the gate said `SOLD_OUT`: reads the campaign's holders in the
    /// background, so that its later requests are answered without Redis
    /// (see [`SoldOut`]). One read at a time per campaign, in one
    /// statement; one that cannot be kept is tried again after
    /// [`RETRY`](super::sold_out::RETRY) at the earliest.
    fn remember_sold_out(&self, db: &Db, coupon_type: &CouponType) {
        let type_id = coupon_type.id;
        if !self.sold_out.start_reading(type_id, coupon_type.terms.total_quantity) {
            return;
        }
        let (sold_out, db) = (self.sold_out.clone(), db.clone());
        tokio::spawn(async move {
            let read = async { coupons::holders(&mut *db.read().await?, type_id).await.map_err(AppError::from) };
            let (outcome, holders) = match tokio::time::timeout(HOLDERS_READ_DEADLINE, read).await {
                Ok(Ok((0, holders))) => ("sold_out", Some(holders)),
                // The gate is never pessimistic; should it ever be, the
                // campaign is not sold out, and the gate answers on.
                Ok(Ok((left, _))) => {
                    tracing::warn!(type_id, left, "the coupon gate said sold out with units left in PostgreSQL");
                    ("units_left", None)
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, type_id, "could not read a sold-out campaign's holders");
                    ("failed", None)
                }
                Err(_) => {
                    tracing::warn!(type_id, "reading a sold-out campaign's holders timed out");
                    ("failed", None)
                }
            };
            metrics::counter!("shop_coupon_gate_holders_reads_total", "outcome" => outcome).increment(1);
            sold_out.read(type_id, holders);
        });
    }

    async fn settle_grant(
        &self,
        script: &Script,
        keys: &Keys,
        user_id: i64,
        keep_holder: Option<bool>,
    ) -> redis::RedisResult<()> {
        let mut invocation = script.key(&keys.state);
        invocation.key(&keys.holders).key(&keys.pending).arg(user_id);
        if let Some(keep) = keep_holder {
            invocation.arg(u8::from(keep));
        }
        if invocation.run::<i64>(&mut self.redis.clone()).await? == 2 {
            self.settled.notify_waiters();
        }
        Ok(())
    }

    /// Loads the campaign from PostgreSQL, once across instances: whoever
    /// takes the loading lock loads, the others wait until it has.
    async fn load(&self, db: &Db, type_id: i64, keys: &Keys) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let token = uuid::Uuid::new_v4().to_string();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(LOADING_LEASE.as_millis() as u64));
        let loader: Option<String> = redis.set_options(&keys.loading, &token, options).await?;
        if loader.is_none() {
            return self.wait_for_load(keys).await;
        }
        // Another loader may have finished between our NOT_LOADED and our lock.
        if redis.exists(&keys.state).await? {
            let _: i64 = redis.del(&keys.loading).await?;
            return Ok(());
        }
        // Known to the reconciler before any grant can be pending (the set
        // lives on a slot of its own, so not in the script that installs).
        self.active.add(&mut redis, type_id).await?;
        let (left, holders) = coupons::holders(&mut *db.read().await?, type_id).await?;
        // Tests hold a load here until its lease has run out.
        fail::fail_point!("coupons::gate::read");
        let staged = format!("{}:{token}", keys.staged);
        for chunk in holders.chunks(HOLDERS_PER_SADD) {
            let _: () = redis.sadd(&staged, chunk).await?;
            let _: () = redis.pexpire(&staged, LOADING_LEASE.as_millis() as i64).await?;
        }
        let installed: i64 = LOAD
            .key(&keys.state)
            .key(&keys.holders)
            .key(&keys.pending)
            .key(&staged)
            .key(&keys.loading)
            .arg(left)
            .arg(&token)
            .run(&mut redis)
            .await?;
        if installed == 1 {
            metrics::counter!("shop_coupon_gate_loads_total").increment(1);
            tracing::info!(type_id, left, holders = holders.len(), "loaded the coupon gate from PostgreSQL");
        } else {
            tracing::warn!(type_id, "a coupon gate load outlived its lease; its snapshot was dropped");
        }
        Ok(())
    }

    async fn wait_for_load(&self, keys: &Keys) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let deadline = Instant::now() + LOADING_LEASE;
        while Instant::now() < deadline {
            if redis.exists(&keys.state).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The loader died; its lease has run out, so the next attempt loads.
        Ok(())
    }

    /// Settles grants pending longer than `reconcile_after`: completed if the
    /// coupon is in PostgreSQL, else its unit is given back. Safe on many
    /// instances at once: each grant is settled by whoever removes it first.
    /// A campaign whose node fails is looked at next round.
    async fn reconcile(self, db: Db) -> Result<(), AppError> {
        for type_id in self.active.round(&mut self.redis.clone()).await {
            if let Err(error) = self.reconcile_campaign(&db, type_id).await {
                tracing::warn!(%error, type_id, "could not reconcile a campaign's coupon grants");
            }
        }
        Ok(())
    }

    async fn reconcile_campaign(&self, db: &Db, type_id: i64) -> Result<(), AppError> {
        let mut redis = self.redis.clone();
        let keys = self.keys(type_id);
        // Grants are stamped by the clock of their campaign's node.
        let cutoff = redis.time_at(&keys.pending).await? - self.reconcile_after.as_millis() as i64;
        let stale: Vec<(i64, i64)> =
            redis.zrangebyscore_limit_withscores(&keys.pending, "-inf", cutoff, 0, 500).await?;
        for (user_id, granted_ms) in stale {
            let written = coupons::gate_grant_of(&mut *db.read().await?, type_id, user_id).await?;
            let action = match written {
                // The grant's own coupon.
                Some(Some(grant)) if grant == granted_ms => {
                    self.settle_grant(&COMPLETE, &keys, user_id, None).await?;
                    "completed"
                }
                // A coupon from before the grant, which the gate had lost
                // track of: the grant's write was refused, its unit is free.
                Some(_) => {
                    self.settle_grant(&GIVE_BACK, &keys, user_id, Some(true)).await?;
                    "returned"
                }
                None => {
                    self.settle_grant(&GIVE_BACK, &keys, user_id, Some(false)).await?;
                    "returned"
                }
            };
            metrics::counter!("shop_coupon_gate_reconciled_total", "action" => action).increment(1);
            tracing::info!(type_id, user_id, action, "reconciled a stale coupon grant");
        }
        Ok(())
    }
}

/// When grants stayed pending past [`PENDING_WAIT`] (their writer died; the
/// reconciler will settle them): what PostgreSQL says is final, else a 503
/// to retry, never a refusal that a returning unit could prove wrong.
async fn refusal_from_database(db: &Db, coupon_type: &CouponType, user_id: i64) -> AppError {
    match refuse_settled(db, coupon_type, user_id).await {
        Err(refusal) => refusal,
        Ok(()) => AppError::Unavailable("a coupon of this campaign is still being settled"),
    }
}

/// Counts and writes the coupon of a grant.
async fn issue_granted(
    conn: &mut PgConnection,
    coupon_type: &CouponType,
    user_id: i64,
    grant: Option<i64>,
) -> Result<Issued, AppError> {
    // The gate has decided; others racing now get its answer.
    fail::fail_point!("coupons::issue::read");
    count_issued(conn, coupon_type.id).await?;
    let coupon = write_coupon(conn, coupon_type, user_id, grant).await?;
    Ok(Issued { coupon, last_unit: false })
}

/// Writes the grants handed out together: alone, as any issue is written;
/// several, in one transaction.
async fn write_grants(db: Db, grants: Vec<Granted>) -> Vec<Result<Issued, AppError>> {
    if let [grant] = grants.as_slice() {
        return vec![write_one(&db, grant).await];
    }
    match write_together(&db, &grants).await {
        Ok(answers) => answers,
        Err(failure) => batcher::one_by_one("coupons", &grants, failure, |grant| write_one(&db, grant)).await,
    }
}

async fn write_one(db: &Db, grant: &Granted) -> Result<Issued, AppError> {
    write_alone(db, &grant.coupon_type, grant.claim.as_ref(), async |conn| {
        issue_granted(conn, &grant.coupon_type, grant.user_id, grant.grant).await
    })
    .await
}

/// Writes the grants' coupons in one transaction, campaign by campaign in
/// ascending id (the order every writer takes campaign rows). Under each
/// campaign's row lock the grants are decided in arrival order as the
/// database sees them — a user holding one already is refused
/// `COUPON_ALREADY_ISSUED`, one past the total `COUPON_SOLD_OUT` (a gate
/// may grant more than the database has left: an asynchronous request took
/// a unit without a grant, or the reconciler returned a unit under a live
/// writer) — so that no constraint fails the batch and no grant waits for
/// a redo one at a time. The winners' answers are stored under their
/// Idempotency-Keys in the same transaction.
async fn write_together(db: &Db, grants: &[Granted]) -> Result<Vec<Result<Issued, AppError>>, AppError> {
    let mut by_campaign: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (index, grant) in grants.iter().enumerate() {
        by_campaign.entry(grant.coupon_type.id).or_default().push(index);
    }
    let mut tx = Tx::begin(db).await?;
    // The gate has decided; others racing now get its answer.
    fail::fail_point!("coupons::issue::read");
    let mut answers: Vec<Option<Result<Issued, AppError>>> = grants.iter().map(|_| None).collect();
    for (type_id, indexes) in by_campaign {
        let (issued, total) = coupons::lock_type(&mut tx, type_id).await?;
        let users: Vec<i64> = indexes.iter().map(|&index| grants[index].user_id).collect();
        let mut held: HashSet<i64> = coupons::holders_among(&mut tx, type_id, &users).await?.into_iter().collect();
        let mut left = total - issued;
        let mut winners = Vec::new();
        for index in indexes {
            if !held.insert(grants[index].user_id) {
                answers[index] = Some(Err(AppError::CouponAlreadyIssued));
            } else if left > 0 {
                left -= 1;
                winners.push(index);
            } else {
                answers[index] = Some(Err(AppError::CouponSoldOut));
            }
        }
        if winners.is_empty() {
            continue;
        }
        let users: Vec<i64> = winners.iter().map(|&index| grants[index].user_id).collect();
        let marks: Vec<Option<i64>> = winners.iter().map(|&index| grants[index].grant).collect();
        let valid_days = grants[winners[0]].coupon_type.terms.valid_days;
        let coupons = coupons::issue_many(&mut tx, type_id, valid_days, &users, &marks).await?;
        for (index, coupon) in winners.into_iter().zip(coupons) {
            let issued = Issued { coupon, last_unit: false };
            save_response(&mut tx, &grants[index].coupon_type, &issued, grants[index].claim.as_ref()).await?;
            answers[index] = Some(Ok(issued));
        }
    }
    // Checked before the commit: a batch that failed is redone one by one.
    let answers: Vec<Result<Issued, AppError>> = answers
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("a grant of a batch was left unanswered")))?;
    tx.commit().await?;
    Ok(answers)
}
