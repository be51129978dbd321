//! `shop-bench`: load for `shop`. It prepares a scenario through the public
//! API, drives it (closed or open loop), reports throughput, latency
//! percentiles from an HDR histogram and the answers by code, then checks
//! the scenario's invariants in the database and fails if one is broken.
//!
//! - [`compare`]: every scenario under every strategy, in rounds, into `docs/benchmarks.md`.
//! - [`diff`]: two `compare` results, flagging what moved beyond the noise.
//! - [`rounds`]: the figures of a case's rounds, and their noise.
//! - [`load`]: the closed/open-loop driver and its histogram.
//! - [`scrape`]: `/metrics` fetched every second during the load.
//! - [`scenario`]: what each scenario sends and must leave behind.
//! - [`targets`]: instances given by URL, or spawned on a fresh database.
//! - [`setup`]: users, products and campaigns through the API.

mod compare;
mod cpu;
mod diff;
mod load;
mod receiver;
mod rounds;
mod scenario;
mod scrape;
mod setup;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use load::{Latency, Outcome, Pace, Point, Stop};
use scenario::{Scenario, Setup};
use setup::Api;
use targets::{Spawn, Targets};

/// Database connections of all spawned instances together. PostgreSQL on
/// two cores is busy with a handful of active connections; more only queue
/// on its CPUs and on a hot row's lock (measured: a one-wallet charge storm
/// ran 1,397/s with 40 connections, 2,458/s with 10).
pub(crate) const TOTAL_POOL: u32 = 10;
/// How long a run on one hot row measures the row's own rate first.
const SINGLE_ROW_SECONDS: u64 = 5;

#[derive(Parser)]
#[command(name = "shop-bench", about = "Load generator for shop: scenarios, latency percentiles, invariants")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one scenario and reports it.
    Run(Box<RunArgs>),
    /// Runs every scenario under every strategy, at high and low contention,
    /// on one and three instances, `--rounds` times round after round (each
    /// case's noise is their spread), beside the engine limits and the
    /// shop's ceiling (`GET /health/live`), and writes `docs/benchmarks.md`
    /// with SVG charts (throughput, and latency by percentile) and
    /// `docs/benchmarks.json`.
    Compare(CompareArgs),
    /// Compares two `benchmarks.json` case by case, flagging the throughput
    /// and p99 that moved by more than the case's run-to-run noise.
    Diff(DiffArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// Seconds per run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Times the whole matrix runs, round after round; with one, no noise
    /// is measured.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 2000)]
    users: usize,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Where `benchmarks.md` and its charts go.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Only these scenarios' cases (comma-separated): the report then holds
    /// only them, so it needs an `--out` other than `docs`.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Only these strategies' cases (comma-separated, e.g. `batch,adaptive`;
    /// `defaults` names the mixed and events cases), with the same proviso.
    #[arg(long, value_delimiter = ',')]
    strategies: Vec<String>,
}

#[derive(Args)]
struct DiffArgs {
    /// The earlier `benchmarks.json`.
    old: PathBuf,
    /// The later one.
    new: PathBuf,
    /// Exit 1 when a figure got slower by more than its noise.
    #[arg(long)]
    fail_on_regression: bool,
}

#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Requests in flight (closed loop) and HTTP connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to send, in seconds (ignored with --requests).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop after this many requests instead of after --seconds.
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: send this many requests a second, timing each from when
    /// it was due. Without it, closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Users to register (coupon-rush, order-rush, mixed).
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Coupons in the campaign (coupon-rush) or units of the product
    /// (order-rush); defaults 100 and 1,000,000,000.
    #[arg(long)]
    stock: Option<i64>,
    /// charge-storm: wallets the charges spread over (1 = one hot wallet).
    #[arg(long, default_value_t = 1)]
    wallets: usize,
    /// order-rush: products the orders spread over (1 = one hot product).
    #[arg(long, default_value_t = 1)]
    products: usize,
    /// charge-storm, order-rush: three requests in four go to one of the
    /// wallets or products, a different one each second; the rest spread.
    #[arg(long)]
    moving_hot_spot: bool,
    /// A running shop to load (repeat for several; requests round-robin).
    #[arg(long = "target", conflicts_with = "spawn")]
    targets: Vec<String>,
    /// Start this many shop instances on a fresh database instead.
    #[arg(long)]
    spawn: Option<usize>,
    #[arg(long, env = "POINTS_STRATEGY")]
    points_strategy: Option<String>,
    #[arg(long, env = "STOCK_STRATEGY")]
    stock_strategy: Option<String>,
    #[arg(long, env = "COUPON_STRATEGY")]
    coupon_strategy: Option<String>,
    /// Database connections of each spawned instance (default: 10 shared
    /// by the instances, at least 4 each).
    #[arg(long)]
    pool: Option<u32>,
    /// PostgreSQL server for spawned instances (a fresh database is made on it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    /// A PgBouncer in transaction pooling mode before --postgres, for the
    /// spawned instances' pools (`postgres://postgres@127.0.0.1:6432`).
    #[arg(long)]
    pooler: Option<String>,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The `/metrics` URL of each --target, when they serve it on their
    /// METRICS_ADDR (default: each target's own `/metrics`).
    #[arg(long = "metrics", conflicts_with = "spawn")]
    metrics_urls: Vec<String>,
    /// The database of the --target shop, for the invariant checks.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, env = "ADMIN_EMAIL", default_value = "admin@shop.local")]
    admin_email: String,
    #[arg(long, env = "ADMIN_PASSWORD", default_value = "admin-password")]
    admin_password: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
pub(crate) struct Report {
    scenario: Scenario,
    instances: usize,
    strategies: Vec<(String, String)>,
    connections: usize,
    rate: Option<u64>,
    requests: u64,
    seconds: f64,
    throughput: f64,
    /// Runs on one hot row: that row's own update rate, measured just before.
    single_row: Option<f64>,
    /// CPU time per request, over the load (not its preparation).
    cpu: cpu::PerRequest,
    latency: Latency,
    /// The latency at percentiles from 50 to 99.99, then 100 (the maximum).
    distribution: Vec<Point>,
    answers: std::collections::BTreeMap<String, u64>,
    /// `/metrics` fetched during the load, as Prometheus would.
    scrapes: scrape::Scrapes,
    /// Asynchronous scenarios: from acceptance to the final state.
    settlement: Option<scenario::Settlement>,
    /// The events scenario: how fast the backlog drained.
    delivery: Option<Delivery>,
    broken_invariants: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Run(args) => run(*args).await.map(|report| report.broken_invariants.is_empty()),
        Command::Compare(args) => {
            let base = RunArgs {
                scenario: Scenario::Mixed,
                connections: args.connections,
                seconds: args.seconds,
                requests: None,
                rate: None,
                users: args.users,
                stock: None,
                wallets: 1,
                products: 1,
                moving_hot_spot: false,
                targets: Vec::new(),
                spawn: None,
                pool: None,
                points_strategy: None,
                stock_strategy: None,
                coupon_strategy: None,
                postgres: args.postgres,
                pooler: None,
                redis_url: args.redis_url,
                metrics_urls: Vec::new(),
                database_url: None,
                admin_email: "admin@shop.local".into(),
                admin_password: "admin-password".into(),
                json: None,
            };
            let only = compare::Only { scenarios: args.scenarios, strategies: args.strategies };
            compare::compare(&base, args.rounds, &only, &args.out).await.map(|()| true)
        }
        Command::Diff(args) => diff::diff(&args.old, &args.new, args.fail_on_regression),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let strategies: Vec<(String, String)> = [
        ("POINTS_STRATEGY", &args.points_strategy),
        ("STOCK_STRATEGY", &args.stock_strategy),
        ("COUPON_STRATEGY", &args.coupon_strategy),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.clone().map(|value| (name.to_owned(), value)))
    .collect();
    let mut settings = strategies.clone();
    let receiver = match args.scenario {
        Scenario::Events => {
            let receiver = receiver::Receiver::start().await?;
            settings.extend(
                [
                    ("DATA_PLATFORM_URL", receiver.url.as_str()),
                    // Refused events come due again soon once it accepts,
                    // and are not given up on while it refuses.
                    ("EVENT_RETRY_BASE_MS", "20"),
                    ("EVENT_RETRY_MAX_MS", "100"),
                    ("EVENT_MAX_ATTEMPTS", "100000"),
                ]
                .map(|(name, value)| (name.to_owned(), value.to_owned())),
            );
            Some(receiver)
        }
        _ => None,
    };
    let targets = match args.spawn {
        Some(instances) => {
            Targets::spawn(Spawn {
                instances,
                postgres: &args.postgres,
                pooler: args.pooler.as_deref(),
                redis_url: &args.redis_url,
                connections_per_instance: args.pool.unwrap_or((TOTAL_POOL / instances as u32).max(4)),
                settings: &settings,
            })
            .await?
        }
        None if args.targets.is_empty() => anyhow::bail!("give --target URL (one or more) or --spawn N"),
        None => Targets::given(args.targets.clone(), args.database_url.as_deref()).await?,
    };
    // A run on one hot row is measured against the row's own limit, taken
    // just before it on the same server (the instances idle meanwhile).
    let single_row = if args.scenario.on_one_row(&args) {
        compare::pgbench(&args.postgres, &[1], SINGLE_ROW_SECONDS)?.first().map(|(_, rate)| *rate)
    } else {
        None
    };
    let measured = measure(&args, &targets).await;
    let report = match measured {
        Ok(Load { prepared, outcome, cpu, scrapes }) => {
            let checked = match &targets.db {
                Some(db) => {
                    async {
                        let settlement = Scenario::settlement(&prepared, db).await?;
                        let delivery = match &receiver {
                            Some(receiver) => Some(delivery(receiver, db).await?),
                            None => None,
                        };
                        anyhow::Ok((settlement, delivery, Scenario::check(&prepared, &outcome, db).await?))
                    }
                    .await
                }
                None => {
                    eprintln!("no --database-url: invariants not checked");
                    Ok((None, None, Vec::new()))
                }
            };
            // The spawned instances stop whatever the check found.
            let (settlement, delivery, broken) = match checked {
                Ok(checked) => checked,
                Err(error) => {
                    targets.finish().await;
                    return Err(error);
                }
            };
            Report {
                scenario: args.scenario,
                instances: targets.urls.len(),
                strategies,
                connections: args.connections,
                rate: args.rate,
                requests: outcome.requests,
                seconds: outcome.elapsed.as_secs_f64(),
                throughput: outcome.throughput(),
                single_row,
                cpu,
                latency: outcome.latency(),
                distribution: outcome.distribution(),
                answers: outcome.answers,
                scrapes,
                settlement,
                delivery,
                broken_invariants: broken,
            }
        }
        Err(error) => {
            targets.finish().await;
            return Err(error);
        }
    };
    targets.finish().await;
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(report)
}

/// How fast the relays drain the backlog the run built.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Delivery {
    events: i64,
    drained_in_s: f64,
    per_second: f64,
    /// Still undelivered a minute after the receiver began to accept.
    undelivered: i64,
}

/// Lets the receiver accept, and times the relays draining the outbox.
async fn delivery(receiver: &receiver::Receiver, db: &sqlx::PgPool) -> anyhow::Result<Delivery> {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events").fetch_one(db).await?;
    let started = std::time::Instant::now();
    receiver.accept();
    let mut undelivered = events;
    while started.elapsed() < Duration::from_secs(60) {
        undelivered =
            sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status <> 'DELIVERED'").fetch_one(db).await?;
        if undelivered == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_in_s = started.elapsed().as_secs_f64();
    eprintln!("the receiver took {} deliveries", receiver.taken());
    Ok(Delivery { events, drained_in_s, per_second: (events - undelivered) as f64 / drained_in_s, undelivered })
}

/// A run's load and what it left to check.
struct Load {
    prepared: scenario::Prepared,
    outcome: Outcome,
    cpu: cpu::PerRequest,
    scrapes: scrape::Scrapes,
}

async fn measure(args: &RunArgs, targets: &Targets) -> anyhow::Result<Load> {
    // The TLS provider the shop's HTTP client builds on (both share one reqwest).
    rustls::crypto::ring::default_provider().install_default().ok();
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(args.connections).timeout(Duration::from_secs(30)).build()?;
    let api = Api { client: client.clone(), url: targets.urls[0].clone() };
    let admin = api.login(&args.admin_email, &args.admin_password).await?;
    eprintln!("preparing {:?} on {} instance(s)…", args.scenario, targets.urls.len());
    let prepared = args
        .scenario
        .prepare(Setup {
            api: &api,
            admin: &admin,
            urls: &targets.urls,
            users: args.users,
            stock: args.stock,
            wallets: args.wallets,
            products: args.products,
            moving_hot_spot: args.moving_hot_spot,
        })
        .await?;
    let pace = args.rate.map_or(Pace::Closed, |rate| Pace::Open { rate });
    let stop = args.requests.map_or(Stop::After(Duration::from_secs_f64(args.seconds)), Stop::Requests);
    let metrics_urls = if args.metrics_urls.is_empty() {
        targets.urls.iter().map(|url| format!("{url}/metrics")).collect()
    } else {
        args.metrics_urls.clone()
    };
    let shop = targets.spawned_pids();
    let before = cpu::Sample::take(&shop);
    let scraper = scrape::Scraper::start(&metrics_urls)?;
    let outcome = load::drive(&client, args.connections, pace, stop, prepared.next.clone()).await;
    let scrapes = scraper.stop();
    let cpu = before.per_request(&cpu::Sample::take(&shop), outcome.requests, !shop.is_empty());
    Ok(Load { prepared, outcome, cpu, scrapes })
}

fn print_table(report: &Report) {
    let strategies: Vec<String> = report.strategies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pace = report
        .rate
        .map_or(format!("closed loop, {} connections", report.connections), |rate| format!("open loop at {rate}/s"));
    println!("{:?} on {} instance(s) [{}], {pace}", report.scenario, report.instances, strategies.join(" "));
    println!("  requests    {:>10}   in {:.1} s   {:>9.0} /s", report.requests, report.seconds, report.throughput);
    if let Some(single_row) = report.single_row {
        println!(
            "  single row  {single_row:>9.0} /s (pgbench, one client, just before): this run did {:.2}x",
            report.throughput / single_row
        );
    }
    let l = &report.latency;
    println!(
        "  latency ms  p50 {:.2}   p90 {:.2}   p99 {:.2}   p99.9 {:.2}   p99.99 {:.2}   max {:.2}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.p9999_ms, l.max_ms
    );
    let cpu = &report.cpu;
    let shop = cpu.shop_us.map_or("shop not spawned here".to_owned(), |shop| format!("shop {shop:.0}"));
    println!("  cpu µs/req  {shop}   postgres {:.0}   load generator {:.0}", cpu.postgres_us, cpu.load_generator_us);
    let scrapes = &report.scrapes;
    println!(
        "  scrapes     {} of /metrics, {} failed (each instance, every second)",
        scrapes.succeeded, scrapes.failed
    );
    for (answer, count) in &report.answers {
        println!("  {answer:<32} {count:>10}");
    }
    if let Some(delivery) = &report.delivery {
        println!(
            "  delivered   {} events, backlog drained in {:.2} s: {:.0} events/s{}",
            delivery.events,
            delivery.drained_in_s,
            delivery.per_second,
            if delivery.undelivered > 0 { format!(" ({} NOT delivered)", delivery.undelivered) } else { String::new() }
        );
    }
    if let Some(settled) = &report.settlement {
        println!(
            "  settled ms  p50 {:.2}   p99 {:.2}   max {:.2}   (202 to final; {} still pending)",
            settled.p50_ms, settled.p99_ms, settled.max_ms, settled.still_pending
        );
    }
    if report.broken_invariants.is_empty() {
        println!("  invariants  hold");
    } else {
        for broken in &report.broken_invariants {
            println!("  BROKEN      {broken}");
        }
    }
}
