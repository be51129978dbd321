//! Point balances and their charge counters.

use chrono::NaiveDate;
use sqlx::PgConnection;

use crate::domain::points::{ChargeCounters, ChargeDay, ChargeLimits};

#[derive(Debug, Clone, Copy)]
pub struct Wallet {
    pub balance: i64,
    pub version: i64,
    charge_day: Option<NaiveDate>,
    charges_on_day: i32,
    charge_month: Option<NaiveDate>,
    charges_in_month: i32,
}

impl Wallet {
    pub fn counters(&self) -> ChargeCounters {
        ChargeCounters {
            day: self.charge_day,
            on_day: self.charges_on_day,
            month: self.charge_month,
            in_month: self.charges_in_month,
        }
    }
}

pub async fn balance(conn: &mut PgConnection, user_id: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!("SELECT balance FROM point_wallets WHERE user_id = $1", user_id).fetch_optional(conn).await
}

pub async fn read(conn: &mut PgConnection, user_id: i64) -> Result<Option<Wallet>, sqlx::Error> {
    sqlx::query_as!(
        Wallet,
        "SELECT balance, version, charge_day, charges_on_day, charge_month, charges_in_month
         FROM point_wallets WHERE user_id = $1",
        user_id,
    )
    .fetch_optional(conn)
    .await
}

/// Reads the wallet and locks its row until the transaction ends.
pub async fn read_for_update(conn: &mut PgConnection, user_id: i64) -> Result<Option<Wallet>, sqlx::Error> {
    sqlx::query_as!(
        Wallet,
        "SELECT balance, version, charge_day, charges_on_day, charge_month, charges_in_month
         FROM point_wallets WHERE user_id = $1 FOR UPDATE",
        user_id,
    )
    .fetch_optional(conn)
    .await
}

/// Locks the wallets of `user_ids` in ascending order and reads them.
pub async fn lock_many(conn: &mut PgConnection, user_ids: &[i64]) -> Result<Vec<(i64, Wallet)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT user_id, balance, version, charge_day, charges_on_day, charge_month, charges_in_month
         FROM point_wallets WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE",
        user_ids,
    )
    .fetch_all(conn)
    .await?;
    let wallets = rows.into_iter().map(|row| {
        let wallet = Wallet {
            balance: row.balance,
            version: row.version,
            charge_day: row.charge_day,
            charges_on_day: row.charges_on_day,
            charge_month: row.charge_month,
            charges_in_month: row.charges_in_month,
        };
        (row.user_id, wallet)
    });
    Ok(wallets.collect())
}

/// A wallet's new balance and charge counters.
pub struct WalletWrite {
    pub user_id: i64,
    pub balance: i64,
    pub counters: ChargeCounters,
}

/// Writes wallets the caller has locked and read.
pub async fn write_many(conn: &mut PgConnection, writes: &[WalletWrite]) -> Result<(), sqlx::Error> {
    // `as _` skips the macro's check of an argument, which knows arrays only without NULLs.
    sqlx::query!(
        "UPDATE point_wallets w
         SET balance = t.balance, charge_day = t.day, charges_on_day = t.on_day, charge_month = t.month,
             charges_in_month = t.in_month, version = w.version + 1
         FROM unnest($1::bigint[], $2::bigint[], $3::date[], $4::int[], $5::date[], $6::int[])
              AS t(user_id, balance, day, on_day, month, in_month)
         WHERE w.user_id = t.user_id",
        &writes.iter().map(|w| w.user_id).collect::<Vec<_>>(),
        &writes.iter().map(|w| w.balance).collect::<Vec<_>>(),
        &writes.iter().map(|w| w.counters.day).collect::<Vec<_>>() as _,
        &writes.iter().map(|w| w.counters.on_day).collect::<Vec<_>>(),
        &writes.iter().map(|w| w.counters.month).collect::<Vec<_>>() as _,
        &writes.iter().map(|w| w.counters.in_month).collect::<Vec<_>>(),
    )
    .execute(conn)
    .await
    .map(drop)
}

pub enum FenceClaim {
    /// The token was newer than any written before: the row is now locked by
    /// this transaction and carries the token.
    Claimed(Wallet),
    /// A holder with a token at least this high has already written.
    Stale {
        newest: i64,
    },
    Missing,
}

/// Stamps the wallet with a lease holder's fencing token, if it is newer than
/// the last one. This is the lease holder's first write, so it also takes the
/// row lock: a stale holder is refused before it reads anything it could act on.
pub async fn claim_fence(conn: &mut PgConnection, user_id: i64, fence: i64) -> Result<FenceClaim, sqlx::Error> {
    let claimed = sqlx::query_as!(
        Wallet,
        "UPDATE point_wallets SET fence = $2 WHERE user_id = $1 AND fence < $2
         RETURNING balance, version, charge_day, charges_on_day, charge_month, charges_in_month",
        user_id,
        fence,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(wallet) = claimed {
        return Ok(FenceClaim::Claimed(wallet));
    }
    let newest =
        sqlx::query_scalar!("SELECT fence FROM point_wallets WHERE user_id = $1", user_id).fetch_optional(conn).await?;
    Ok(newest.map_or(FenceClaim::Missing, |newest| FenceClaim::Stale { newest }))
}

/// Writes a new balance and counters. With `expected_version`, only if nobody
/// wrote since that version was read (optimistic): `false` means the race was lost.
pub async fn write(
    conn: &mut PgConnection,
    user_id: i64,
    balance: i64,
    counters: ChargeCounters,
    expected_version: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        "UPDATE point_wallets
         SET balance = $2, charge_day = $3, charges_on_day = $4, charge_month = $5,
             charges_in_month = $6, version = version + 1
         WHERE user_id = $1 AND ($7::bigint IS NULL OR version = $7)",
        user_id,
        balance,
        counters.day,
        counters.on_day,
        counters.month,
        counters.in_month,
        expected_version,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The whole charge in one statement: the balance, the counters and the
/// ledger row change only if the limits allow, with no read beforehand. The
/// counters follow `ChargeCounters::after_charge`: a stamp older than the
/// last charge's day counts on that day. `None`: a limit refused it (or
/// there is no wallet).
pub async fn charge_within_limits(
    conn: &mut PgConnection,
    user_id: i64,
    amount: i64,
    on: ChargeDay,
    limits: ChargeLimits,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "WITH charged AS (
             UPDATE point_wallets
             SET balance = balance + $2,
                 charges_on_day = CASE WHEN charge_day >= $3 THEN charges_on_day + 1 ELSE 1 END,
                 charge_day = GREATEST(charge_day, $3),
                 charges_in_month = CASE WHEN charge_month >= $4 THEN charges_in_month + 1 ELSE 1 END,
                 charge_month = GREATEST(charge_month, $4),
                 version = version + 1
             WHERE user_id = $1
               AND ($5 = 0 OR charge_day IS NULL OR charge_day < $3 OR charges_on_day < $5)
               AND ($6 = 0 OR charge_month IS NULL OR charge_month < $4 OR charges_in_month < $6)
             RETURNING user_id, balance
         )
         INSERT INTO point_ledger (user_id, kind, amount, balance_after)
         SELECT user_id, 'CHARGE', $2, balance FROM charged
         RETURNING balance_after",
        user_id,
        amount,
        on.day,
        on.month,
        limits.daily as i32,
        limits.monthly as i32,
    )
    .fetch_optional(conn)
    .await
}

/// Sets the balance alone (a payment's debit or a refund read under a lock);
/// with `expected_version`, only if unchanged since read. Charge counters
/// are left as they are.
pub async fn set_balance(
    conn: &mut PgConnection,
    user_id: i64,
    balance: i64,
    expected_version: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        "UPDATE point_wallets SET balance = $2, version = version + 1
         WHERE user_id = $1 AND ($3::bigint IS NULL OR version = $3)",
        user_id,
        balance,
        expected_version,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// A payment's debit in one statement: `amount` leaves the wallet and its
/// `USE` ledger row is written only if the balance covers it. The new
/// balance, or `None` when it does not.
pub async fn debit_if_covered(
    conn: &mut PgConnection,
    user_id: i64,
    amount: i64,
    order_id: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "WITH debited AS (
             UPDATE point_wallets SET balance = balance - $2, version = version + 1
             WHERE user_id = $1 AND balance >= $2 RETURNING user_id, balance
         )
         INSERT INTO point_ledger (user_id, kind, amount, balance_after, order_id)
         SELECT user_id, 'USE', -$2, balance, $3 FROM debited
         RETURNING balance_after",
        user_id,
        amount,
        order_id,
    )
    .fetch_optional(conn)
    .await
}

/// Credits a refund in one statement, whatever strategy charges: every
/// strategy's read-then-write of a wallet either holds the row lock this
/// waits for or checks the `version` this bumps. Returns the new balance.
pub async fn credit(conn: &mut PgConnection, user_id: i64, amount: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE point_wallets SET balance = balance + $2, version = version + 1 WHERE user_id = $1 RETURNING balance",
        user_id,
        amount,
    )
    .fetch_one(conn)
    .await
}
