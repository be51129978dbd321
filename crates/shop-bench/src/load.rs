//! The load driver: closed loop (each connection sends its next request when
//! the last is answered) or open loop (requests sent at a fixed rate, each
//! timed from the moment it was *meant* to be sent, so a server that stalls
//! is charged for the requests it held up — no coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Mutex;

/// One request to send; built by a scenario for each sequence number.
pub struct Request {
    pub method: reqwest::Method,
    pub url: String,
    pub token: Option<String>,
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// `connections` requests in flight at all times.
    Closed,
    /// This many requests a second, however fast they are answered.
    Open { rate: u64 },
}

#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

/// What came back: latency and answers by status and code.
pub struct Outcome {
    pub histogram: Histogram<u64>,
    pub answers: BTreeMap<String, u64>,
    pub requests: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
}

/// The percentiles a distribution is drawn through: two between each
/// "nine", where a tail's bend shows.
const DISTRIBUTION_PERCENTILES: [f64; 9] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99];

/// One point of the latency distribution; percentile 100 is the maximum.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub percentile: f64,
    pub ms: f64,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn latency(&self) -> Latency {
        Latency {
            p50_ms: self.ms_at(50.0),
            p90_ms: self.ms_at(90.0),
            p99_ms: self.ms_at(99.0),
            p999_ms: self.ms_at(99.9),
            p9999_ms: self.ms_at(99.99),
            max_ms: self.ms_at(100.0),
        }
    }

    /// The latency at each of [`DISTRIBUTION_PERCENTILES`], then the maximum.
    pub fn distribution(&self) -> Vec<Point> {
        DISTRIBUTION_PERCENTILES
            .into_iter()
            .chain([100.0])
            .map(|percentile| Point { percentile, ms: self.ms_at(percentile) })
            .collect()
    }

    fn ms_at(&self, percentile: f64) -> f64 {
        self.histogram.value_at_percentile(percentile) as f64 / 1000.0
    }

    /// How many answers had this key (`"201"`, `"409 COUPON_SOLD_OUT"`, …).
    pub fn count(&self, key: &str) -> u64 {
        self.answers.get(key).copied().unwrap_or(0)
    }
}

struct Tally {
    histogram: Histogram<u64>,
    answers: BTreeMap<String, u64>,
}

/// Sends requests built by `next` until `stop`, at `pace`, with at most
/// `connections` in flight (closed loop) or as many as the rate needs (open).
pub async fn drive(
    client: &reqwest::Client,
    connections: usize,
    pace: Pace,
    stop: Stop,
    next: Arc<dyn Fn(u64) -> Request + Send + Sync>,
) -> Outcome {
    let tally = Arc::new(Mutex::new(Tally {
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        answers: BTreeMap::new(),
    }));
    let sequence = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let progress = tokio::spawn(show_progress(sequence.clone(), done.clone(), started));
    let claim = {
        let sequence = sequence.clone();
        move || {
            let n = sequence.fetch_add(1, Ordering::Relaxed);
            let over = match stop {
                Stop::After(duration) => started.elapsed() >= duration,
                Stop::Requests(total) => n >= total,
            };
            (!over).then_some(n)
        }
    };
    match pace {
        Pace::Closed => {
            let workers: Vec<_> = (0..connections)
                .map(|_| {
                    let (client, tally, next, claim) = (client.clone(), tally.clone(), next.clone(), claim.clone());
                    tokio::spawn(async move {
                        while let Some(n) = claim() {
                            let sent = Instant::now();
                            let answer = send(&client, next(n)).await;
                            record(&tally, sent, answer).await;
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.await.ok();
            }
        }
        Pace::Open { rate } => {
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut in_flight = Vec::new();
            let mut i = 0u32;
            while let Some(n) = claim() {
                let intended = started + interval * i;
                i += 1;
                tokio::time::sleep_until(intended.into()).await;
                let (client, tally, request) = (client.clone(), tally.clone(), next(n));
                in_flight.push(tokio::spawn(async move {
                    let answer = send(&client, request).await;
                    record(&tally, intended, answer).await;
                }));
                if in_flight.len() >= 4096 {
                    in_flight.retain(|task: &tokio::task::JoinHandle<()>| !task.is_finished());
                }
            }
            for task in in_flight {
                task.await.ok();
            }
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    progress.await.ok();
    let tally = Arc::try_unwrap(tally).ok().expect("all workers finished").into_inner();
    let requests = tally.histogram.len();
    Outcome { histogram: tally.histogram, answers: tally.answers, requests, elapsed }
}

/// The status and, for errors, the problem `code`.
async fn send(client: &reqwest::Client, request: Request) -> String {
    let mut builder = client.request(request.method, &request.url);
    if let Some(token) = &request.token {
        builder = builder.bearer_auth(token);
    }
    if let Some(body) = &request.body {
        builder = builder.json(body);
    }
    match builder.send().await {
        Ok(response) if response.status().is_success() => response.status().as_u16().to_string(),
        Ok(response) => {
            let status = response.status().as_u16();
            let problem: serde_json::Value = response.json().await.unwrap_or_default();
            match problem["code"].as_str() {
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            }
        }
        Err(error) if error.is_timeout() => "timeout".to_owned(),
        Err(_) => "connection error".to_owned(),
    }
}

async fn record(tally: &Mutex<Tally>, since: Instant, answer: String) {
    let micros = since.elapsed().as_micros().max(1) as u64;
    let mut tally = tally.lock().await;
    tally.histogram.saturating_record(micros);
    *tally.answers.entry(answer).or_default() += 1;
}

async fn show_progress(sequence: Arc<AtomicU64>, done: Arc<AtomicBool>, started: Instant) {
    let mut last = 0;
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = sequence.load(Ordering::Relaxed);
        eprint!("\r  {:>5.1} s  {sent:>9} requests  {:>8} /s   ", started.elapsed().as_secs_f64(), sent - last);
        last = sent;
    }
    eprintln!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome_of(micros: impl IntoIterator<Item = u64>) -> Outcome {
        let mut histogram = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        for value in micros {
            histogram.record(value).expect("in bounds");
        }
        let requests = histogram.len();
        Outcome { histogram, answers: BTreeMap::new(), requests, elapsed: Duration::from_secs(1) }
    }

    #[test]
    fn the_distribution_rises_to_the_maximum() {
        // 1 µs to 10 ms, one request each: the p-th percentile is p % of 10 ms.
        let outcome = outcome_of(1..=10_000);
        let distribution = outcome.distribution();
        let percentiles: Vec<f64> = distribution.iter().map(|point| point.percentile).collect();
        assert_eq!(percentiles, [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0]);
        assert!(distribution.windows(2).all(|pair| pair[0].ms <= pair[1].ms), "{distribution:?}");
        let latency = outcome.latency();
        assert!((latency.p50_ms - 5.0).abs() < 0.01, "{latency:?}");
        assert!((latency.p9999_ms - 9.999).abs() < 0.01, "{latency:?}");
        assert_eq!(latency.max_ms, outcome.histogram.max() as f64 / 1000.0);
        assert_eq!(distribution.last().map(|point| point.ms), Some(latency.max_ms));
    }
}
