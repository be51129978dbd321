//! Requests that arrive together are written together: a queue, and a
//! worker that takes whatever queued while its previous batch was in flight
//! and hands it to one write. A lone request waits for nothing; a rush fills
//! batches, so a hot row is locked and written once per batch, and a batch
//! costs a handful of round trips and one WAL flush whatever its size.
//!
//! One worker per instance: a second, gathering while the first's batch is
//! in flight, halves the batches and doubles the transactions that queue on
//! a hot row. Measured on one hot product (`shop-bench run order-rush`, one
//! run each): one worker 9,019 orders/s on one instance and 7,271/s on
//! three, two workers 8,457/s and 5,448/s; charges on one wallet were the
//! same either way (13,606/s and 13,514/s).
//!
//! Used by the `batch` strategies of orders (`orders::batch`) and charges
//! (`strategy::points::batch`), and by the coupon gate for the coupons it
//! granted (`strategy::coupons::redis_gate`). A request whose client goes away once it is
//! queued is still written, as it would be had it reached the database.

use anyhow::anyhow;
use tokio::sync::{mpsc, oneshot};

use crate::error::AppError;

/// Requests per batch at most: enough for every connection of a rush, few
/// enough that one statement's arrays stay small.
const MAX_BATCH: usize = 128;
/// Requests waiting for the worker; submitting more waits for room.
const QUEUE: usize = 4096;

pub struct Batcher<J, A> {
    name: &'static str,
    jobs: mpsc::Sender<(J, oneshot::Sender<A>)>,
}

impl<J: Send + 'static, A: Send + 'static> Batcher<J, A> {
    /// Starts the worker. `write` answers a batch, one answer per job in
    /// the order given. The worker stops once the batcher is dropped and
    /// its queue drained. `name` labels the batch-size metric.
    pub fn start<F, Fut>(name: &'static str, write: F) -> Self
    where
        F: Fn(Vec<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<A>> + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(work(name, queue, write));
        Self { name, jobs }
    }

    /// Queues the job for the next batch and waits for its answer.
    pub async fn submit(&self, job: J) -> Result<A, AppError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || AppError::internal(anyhow!("the {} batcher has stopped", self.name));
        self.jobs.send((job, answer)).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())
    }
}

/// The answers of a batch whose write failed: each request made alone, in
/// order — unless the batch may have committed (its COMMIT's outcome is
/// unknown), when redoing it could do it twice and every request is told so.
pub async fn one_by_one<'a, J, T, F, Fut>(
    name: &str,
    jobs: &'a [J],
    failure: AppError,
    alone: F,
) -> Vec<Result<T, AppError>>
where
    F: Fn(&'a J) -> Fut,
    Fut: Future<Output = Result<T, AppError>>,
{
    if matches!(failure, AppError::OutcomeUnknown) {
        return jobs.iter().map(|_| Err(AppError::OutcomeUnknown)).collect();
    }
    tracing::warn!(error = %failure, batch = name, requests = jobs.len(), "a batch failed; writing its requests one by one");
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        answers.push(alone(job).await);
    }
    answers
}

async fn work<J, A, F, Fut>(name: &'static str, mut queue: mpsc::Receiver<(J, oneshot::Sender<A>)>, write: F)
where
    F: Fn(Vec<J>) -> Fut,
    Fut: Future<Output = Vec<A>>,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        metrics::histogram!("shop_batch_size", "batch" => name).record(batch.len() as f64);
        let (jobs, answers): (Vec<J>, Vec<oneshot::Sender<A>>) = std::mem::take(&mut batch).into_iter().unzip();
        for (answer, result) in answers.into_iter().zip(write(jobs).await) {
            // The client may have gone; what was written stands.
            answer.send(result).ok();
        }
    }
}
