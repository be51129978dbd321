//! The relay, one in every instance: it takes due events with `FOR UPDATE
//! SKIP LOCKED` — each the oldest undelivered event of its order, so an
//! order's events keep their order even with several relays side by side —
//! sends each to the sinks that have not taken it yet, and records the
//! attempt in the same transaction: delivered, or due again after an
//! exponential backoff with jitter, or `FAILED` after `EVENT_MAX_ATTEMPTS`.
//! An event is delivered once every sink of the deployment took it (the
//! sinks every instance registered as it started); a relay takes the events
//! that lack one of its own sinks and sends them there, and leaves the
//! sinks it does not have to the relays that do.
//! The events stay locked while they are sent, so no two relays send one
//! at the same time; a relay that dies mid-send releases them with its
//! connection, and another sends them again (at least once). It wakes on
//! `NOTIFY outbox_events` from the transaction that recorded an event, and
//! looks anyway every second for events whose retry came due.

use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::Sinks;
use crate::config::EventsConfig;
use crate::error::AppError;
use crate::storage::Db;
use crate::storage::Tx;
use crate::storage::outbox::{self, Attempt, DueEvent};

/// Events sent per transaction.
const BATCH: i64 = 100;
/// How often to look without being woken: retries come due unannounced.
const POLL: Duration = Duration::from_secs(1);

pub struct RelayConfig {
    pub max_attempts: i32,
    pub retention_days: i32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl From<&EventsConfig> for RelayConfig {
    fn from(config: &EventsConfig) -> Self {
        Self {
            max_attempts: config.event_max_attempts as i32,
            retention_days: config.event_retention_days as i32,
            retry_base: Duration::from_millis(config.event_retry_base_ms),
            retry_max: Duration::from_millis(config.event_retry_max_ms),
        }
    }
}

pub struct Relay {
    db: Db,
    sinks: Sinks,
    config: RelayConfig,
}

impl Relay {
    pub fn new(db: Db, sinks: Sinks, config: RelayConfig) -> Self {
        Self { db, sinks, config }
    }

    /// Delivers events until `stop`; without a sink, they stay recorded.
    pub async fn run(&self, stop: CancellationToken) {
        if !self.sinks.any() {
            return;
        }
        // This instance's sinks join the deployment's before it delivers.
        while let Err(error) = self.register().await {
            tracing::warn!(%error, "cannot register this instance's event sinks; trying again");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        let mut listener = match self.listen().await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for new events; looking every second instead");
                None
            }
        };
        while !stop.is_cancelled() {
            match self.deliver_once().await {
                Ok(sent) if sent as i64 == BATCH => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "could not deliver events"),
            }
            let woken = async {
                match listener.as_mut() {
                    Some(listener) => drop(listener.recv().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = woken => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn register(&self) -> Result<(), AppError> {
        let mut conn = self.db.write().await?;
        outbox::register_sinks(&mut conn, &self.sinks.names()).await?;
        Ok(conn.commit().await?)
    }

    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = self.db.listener().await?;
        listener.listen("outbox_events").await?;
        Ok(listener)
    }

    /// One batch: taken, sent, recorded. Returns how many were taken.
    async fn deliver_once(&self) -> Result<usize, AppError> {
        let mut tx = Tx::begin(&self.db).await?;
        let due = outbox::lock_due(&mut tx, &self.sinks.names(), BATCH).await?;
        if due.is_empty() {
            return Ok(0);
        }
        // The events stay locked while the sinks take them, which may be
        // longer than the idle time PostgreSQL otherwise allows a
        // transaction (see `startup`).
        sqlx::query!("SELECT set_config('idle_in_transaction_session_timeout', '0', true)").fetch_one(&mut *tx).await?;
        // Each event is its order's oldest undelivered one: they can go side by side.
        let attempts = join_all(due.iter().map(|event| self.attempt(event))).await;
        outbox::record_attempts(&mut tx, &attempts).await?;
        tx.commit().await?;
        Ok(due.len())
    }

    async fn attempt(&self, event: &DueEvent) -> Attempt {
        let mut delivered_to = event.delivered_to.clone();
        let mut errors = Vec::new();
        for sink in self.sinks.names() {
            if delivered_to.contains(&sink) {
                continue;
            }
            match self.sinks.send(&sink, event).await {
                Ok(()) => delivered_to.push(sink),
                Err(error) => errors.push(format!("{sink}: {error}")),
            }
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        let tried = event.attempts + 1;
        let retry_at = match &error {
            Some(_) if tried < self.config.max_attempts => Some(Utc::now() + self.backoff(tried)),
            _ => None,
        };
        Attempt { id: event.id, delivered_to, error, retry_at }
    }

    /// Exponential from `retry_base`, capped at `retry_max`, the upper half
    /// random: relays retrying together spread apart, and none retries at
    /// once.
    fn backoff(&self, tried: i32) -> chrono::Duration {
        let ceiling =
            self.config.retry_base.saturating_mul(1 << (tried - 1).clamp(0, 20) as u32).min(self.config.retry_max);
        let half = ceiling / 2;
        let wait = half + Duration::from_micros(rand::random_range(0..=half.as_micros() as u64));
        chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
    }

    /// Deletes delivered events past their retention.
    pub async fn purge(&self) -> Result<(), AppError> {
        let mut conn = self.db.write().await?;
        let purged = outbox::purge_delivered(&mut conn, self.config.retention_days).await?;
        conn.commit().await?;
        if purged > 0 {
            tracing::info!(purged, "deleted delivered events past their retention");
        }
        Ok(())
    }
}
