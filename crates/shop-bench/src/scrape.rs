//! A stand-in for Prometheus: while the load runs, each instance's
//! `/metrics` is fetched once a second and its body read and dropped. A
//! deployed shop is scraped, and a scrape is not free (it renders every
//! series and counts the outbox backlog and pending issue requests in the
//! database), so the figures include it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// The busy end of scrape intervals in use (Prometheus's default is 60 s,
/// 15 s is common). Prometheus gives up on a scrape after at most this long
/// too (its `scrape_timeout` may not exceed the interval).
const EVERY: Duration = Duration::from_secs(1);

/// Scrapes over a run, of all instances together.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scrapes {
    pub succeeded: u64,
    /// Not 200, not answered within the interval, or the connection failed.
    pub failed: u64,
}

#[derive(Default)]
struct Tally {
    succeeded: AtomicU64,
    failed: AtomicU64,
}

/// Scraping under way; [`Scraper::stop`] ends it.
pub struct Scraper {
    tasks: Vec<JoinHandle<()>>,
    tally: Arc<Tally>,
}

impl Scraper {
    /// Scrapes each of `urls` (full `/metrics` URLs) every second from now,
    /// each on its own connection, as Prometheus keeps one per target.
    pub fn start(urls: &[String]) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(EVERY).build()?;
        let tally = Arc::new(Tally::default());
        let tasks = urls
            .iter()
            .map(|url| tokio::spawn(scrape_every_second(client.clone(), url.clone(), tally.clone())))
            .collect();
        Ok(Self { tasks, tally })
    }

    /// Stops scraping; a scrape in flight is dropped uncounted.
    pub fn stop(self) -> Scrapes {
        for task in &self.tasks {
            task.abort();
        }
        Scrapes {
            succeeded: self.tally.succeeded.load(Ordering::Relaxed),
            failed: self.tally.failed.load(Ordering::Relaxed),
        }
    }
}

async fn scrape_every_second(client: reqwest::Client, url: String, tally: Arc<Tally>) {
    let mut interval = tokio::time::interval(EVERY);
    // A scrape late under load is not made up for with a burst.
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let scraped = match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
            _ => false,
        };
        let counter = if scraped { &tally.succeeded } else { &tally.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
