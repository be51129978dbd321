//! Batch: the charges an instance receives together are written together,
//! in one transaction (see [`crate::batcher`]). A wallet charged from many
//! tabs is locked and written once per batch instead of once per charge,
//! so one wallet takes charges faster than its single row can be updated.
//!
//! A batch locks its wallets (ascending user id, as every wallet lock is
//! taken) and reads them; under those locks it applies each charge in
//! arrival order to what the charges before it left: the limits are checked
//! on the counters so far, the balance grows. A refused charge gets its
//! answer (`CHARGE_LIMIT_EXCEEDED`, `NOT_FOUND`) and changes nothing; the
//! accepted ones are written with one statement for the wallets and one for
//! their ledger rows, each row with its own balance after. A batch whose
//! writes fail is rolled back whole and its charges made one by one, as
//! `atomic` makes them; a batch whose COMMIT reply was lost is resolved
//! (`storage::Tx`) and never redone: if it cannot be resolved, each of its
//! charges is answered `SERVICE_UNAVAILABLE`, its Idempotency-Key kept.
//! Alone — a charge with no other in its batch, the redo of a failed
//! batch, a payment's debit — it applies as `atomic` does, taking the same
//! row lock.
//!
//! Cost: a charge that finds no other in its batch is made alone, by
//! `atomic`'s one statement; a batch of several costs a transaction of four
//! statements whatever its size. Never answers `CONCURRENCY_CONFLICT`.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{Charge, PointsStrategy, Spend, WalletHold, atomic, save_response, wallet_missing};
use crate::batcher::{self, Batcher};
use crate::config::PointsStrategyKind;
use crate::domain::points::ChargeCounters;
use crate::error::AppError;
use crate::idempotency::Claim;
use crate::storage::Db;
use crate::storage::Tx;
use crate::storage::ledger::{self, NewCharge};
use crate::storage::wallets::{self, WalletWrite};

/// Holds the charges waiting to be made together.
pub struct Batch(Batcher<Job, Result<i64, AppError>>);

struct Job {
    charge: Charge,
    claim: Option<Claim>,
}

impl Batch {
    pub fn start(db: Db) -> Self {
        Self(Batcher::start("charges", move |jobs| charge_batch(db.clone(), jobs)))
    }
}

#[async_trait]
impl PointsStrategy for Batch {
    fn kind(&self) -> PointsStrategyKind {
        PointsStrategyKind::Batch
    }

    async fn charge(&self, conn: &mut PgConnection, charge: Charge, _: &WalletHold) -> Result<i64, AppError> {
        atomic::charge_once(conn, charge).await
    }

    async fn debit(&self, conn: &mut PgConnection, spend: Spend, _: &WalletHold) -> Result<i64, AppError> {
        atomic::debit_once(conn, spend).await
    }

    /// Queues the charge for the next batch; its new balance.
    async fn charge_alone(&self, _: &Db, charge: Charge, claim: Option<&Claim>) -> Result<i64, AppError> {
        self.0.submit(Job { charge, claim: claim.cloned() }).await?
    }
}

async fn charge_batch(db: Db, jobs: Vec<Job>) -> Vec<Result<i64, AppError>> {
    if let [job] = jobs.as_slice() {
        // Alone, a charge is `atomic`'s one statement, not a transaction of four.
        return vec![atomic::Atomic.charge_alone(&db, job.charge, job.claim.as_ref()).await];
    }
    match write(&db, &jobs).await {
        Ok(answers) => answers,
        Err(failure) => {
            batcher::one_by_one("charges", &jobs, failure, |job| {
                atomic::Atomic.charge_alone(&db, job.charge, job.claim.as_ref())
            })
            .await
        }
    }
}

/// A wallet as the batch's charges leave it.
struct Running {
    balance: i64,
    counters: ChargeCounters,
    charged: bool,
}

/// Applies and writes the batch in one transaction: each charge's answer,
/// or an error if the batch as a whole failed (nothing was written).
async fn write(db: &Db, jobs: &[Job]) -> Result<Vec<Result<i64, AppError>>, AppError> {
    let mut tx = Tx::begin(db).await?;
    let user_ids: BTreeSet<i64> = jobs.iter().map(|job| job.charge.user_id).collect();
    let mut wallets: HashMap<i64, Running> = wallets::lock_many(&mut tx, &Vec::from_iter(user_ids))
        .await?
        .into_iter()
        .map(|(user_id, wallet)| {
            (user_id, Running { balance: wallet.balance, counters: wallet.counters(), charged: false })
        })
        .collect();
    fail::fail_point!("points::charge::read");
    let mut ledger_rows = Vec::new();
    let answers: Vec<Result<i64, AppError>> = jobs
        .iter()
        .map(|job| {
            let charge = job.charge;
            let wallet = wallets.get_mut(&charge.user_id).ok_or_else(wallet_missing)?;
            wallet.counters = wallet.counters.after_charge(charge.on, charge.limits)?;
            wallet.balance += charge.amount.won();
            wallet.charged = true;
            ledger_rows.push(NewCharge {
                user_id: charge.user_id,
                amount: charge.amount.won(),
                balance_after: wallet.balance,
            });
            Ok(wallet.balance)
        })
        .collect();
    if !ledger_rows.is_empty() {
        let written: Vec<WalletWrite> = wallets
            .iter()
            .filter(|(_, wallet)| wallet.charged)
            .map(|(user_id, wallet)| WalletWrite {
                user_id: *user_id,
                balance: wallet.balance,
                counters: wallet.counters,
            })
            .collect();
        wallets::write_many(&mut tx, &written).await?;
        fail::fail_point!("points::batch::written", |_| Err(AppError::internal(anyhow::anyhow!(
            "failed at a fail point"
        ))));
        ledger::append_charges(&mut tx, &ledger_rows).await?;
        for (job, answer) in jobs.iter().zip(&answers) {
            if let Ok(balance) = answer {
                save_response(&mut tx, job.charge, *balance, job.claim.as_ref()).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(answers)
}
