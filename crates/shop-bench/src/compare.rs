//! `compare`: every scenario under every strategy, at high and low
//! contention, on one and three instances, beside reference lines measured
//! in the same run — the engines alone (pgbench, redis-benchmark) and the
//! shop's own ceiling (`GET /health/live`). The matrix runs `--rounds`
//! times, round after round, so each case's run-to-run noise is measured.
//! Written to `docs/benchmarks.md` with SVG charts (throughput bars, and
//! latency by percentile for each contention level), and to
//! `docs/benchmarks.json` for machines and `shop-bench diff`.

mod charts;
mod markdown;

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use clap::ValueEnum;
use serde::Serialize;
use shop::config::{CouponStrategyKind, PointsStrategyKind, StockStrategyKind, value_names};

use crate::rounds::{self, Round, Summary};
use crate::scenario::Scenario;
use crate::{Report, RunArgs, run};

/// One case of the matrix.
#[derive(Serialize)]
struct Case {
    scenario: Scenario,
    contention: &'static str,
    variable: &'static str,
    strategy: String,
    instances: usize,
    #[serde(flatten)]
    load: Load,
}

/// What a contention level loads (see `RunArgs`).
#[derive(Serialize, Clone, Copy)]
struct Load {
    stock: Option<i64>,
    wallets: usize,
    products: usize,
    moving_hot_spot: bool,
    /// In place of the run's connections: a light load.
    connections: Option<usize>,
}

impl Default for Load {
    fn default() -> Self {
        Self { stock: None, wallets: 1, products: 1, moving_hot_spot: false, connections: None }
    }
}

fn matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |scenario, contention, variable, strategies: &[String], load| {
        for instances in [1, 3] {
            for strategy in strategies {
                let strategy = strategy.clone();
                cases.push(Case { scenario, contention, variable, strategy, instances, load });
            }
        }
    };
    let coupons = value_names::<CouponStrategyKind>();
    let units = |units| Load { stock: Some(units), ..Load::default() };
    add(Scenario::CouponRush, "high: 2,000 users, 100 coupons", "COUPON_STRATEGY", &coupons, units(100));
    add(Scenario::CouponRushAsync, "high: 2,000 users, 100 coupons", "COUPON_STRATEGY", &coupons, units(100));
    let plenty = units(1_000_000);
    add(Scenario::CouponRush, "low: 2,000 users, 1,000,000 coupons", "COUPON_STRATEGY", &coupons, plenty);
    let points = value_names::<PointsStrategyKind>();
    let wallets = |wallets, moving_hot_spot| Load { wallets, moving_hot_spot, ..Load::default() };
    add(Scenario::ChargeStorm, "high: one wallet", "POINTS_STRATEGY", &points, wallets(1, false));
    add(Scenario::ChargeStorm, "low: 64 wallets", "POINTS_STRATEGY", &points, wallets(64, false));
    let moving = "moving: 64 wallets, 3 in 4 charges on one, another each second";
    add(Scenario::ChargeStorm, moving, "POINTS_STRATEGY", &points, wallets(64, true));
    let light = Load { connections: Some(LIGHT), ..wallets(64, false) };
    add(Scenario::ChargeStorm, "light: 64 wallets, 4 connections", "POINTS_STRATEGY", &points, light);
    let stock = value_names::<StockStrategyKind>();
    let products = |products, moving_hot_spot| Load { products, moving_hot_spot, ..Load::default() };
    add(Scenario::OrderRush, "high, ample: one product", "STOCK_STRATEGY", &stock, products(1, false));
    add(Scenario::OrderRush, "high, scarce: one product of 100", "STOCK_STRATEGY", &stock, units(100));
    add(Scenario::OrderRush, "low: 64 products", "STOCK_STRATEGY", &stock, products(64, false));
    let moving = "moving: 64 products, 3 in 4 orders for one, another each second";
    add(Scenario::OrderRush, moving, "STOCK_STRATEGY", &stock, products(64, true));
    let light = Load { connections: Some(LIGHT), ..products(64, false) };
    add(Scenario::OrderRush, "light: 64 products, 4 connections", "STOCK_STRATEGY", &stock, light);
    add(Scenario::Mixed, "defaults", "", &["defaults".to_owned()], Load::default());
    add(Scenario::Events, "defaults", "", &["defaults".to_owned()], Load::default());
    cases
}

/// The connections of a light load: a few requests at once, where a batch
/// has little to gather and a request alone waits for the one in flight.
const LIGHT: usize = 4;

/// Client counts pgbench updates the hot row with: one (no lock queue, the
/// row's best), the spawned instances' pool, and the load's connections.
const HOT_ROW_CLIENTS: [u32; 3] = [1, 10, 64];

/// Reference rates, on this machine, in this run.
#[derive(Serialize)]
struct Limits {
    /// The shop itself: `GET /health/live` on one spawned instance with
    /// the runs' connections, requests per second. No endpoint can beat it.
    ceiling: f64,
    /// pgbench: a single-row conditional UPDATE, (clients, rate).
    hot_row_by_clients: Vec<(u32, f64)>,
    /// The best of those: the single row's limit.
    hot_row: Option<f64>,
    /// redis-benchmark: the coupon gate script answering a sold-out campaign.
    gate_script: Option<f64>,
}

/// One case and its report from every round.
struct Measured {
    case: Case,
    rounds: Vec<Report>,
}

impl Measured {
    fn summary(&self) -> Summary {
        let rounds: Vec<Round> =
            self.rounds.iter().map(|r| Round { throughput: r.throughput, p99_ms: r.latency.p99_ms }).collect();
        rounds::summarize(&rounds).expect("every case runs in every round, and there is at least one")
    }

    /// The round the tables and latency charts show.
    fn shown(&self) -> &Report {
        &self.rounds[self.summary().shown_round]
    }
}

/// A part of the matrix to run, to settle a few cells with more rounds than
/// the whole would take time for. Empty lists keep everything.
#[derive(Default)]
pub struct Only {
    pub scenarios: Vec<Scenario>,
    pub strategies: Vec<String>,
}

impl Only {
    fn everything(&self) -> bool {
        self.scenarios.is_empty() && self.strategies.is_empty()
    }

    /// The filters as given on the command line, for the report to say
    /// what ran.
    fn arguments(&self) -> String {
        let mut arguments = String::new();
        if !self.scenarios.is_empty() {
            let names: Vec<String> = self.scenarios.iter().map(|&scenario| slug(scenario)).collect();
            arguments += &format!(" --scenarios {}", names.join(","));
        }
        if !self.strategies.is_empty() {
            arguments += &format!(" --strategies {}", self.strategies.join(","));
        }
        arguments
    }

    fn keeps(&self, case: &Case) -> bool {
        (self.scenarios.is_empty() || self.scenarios.contains(&case.scenario))
            && (self.strategies.is_empty() || self.strategies.contains(&case.strategy))
    }
}

pub async fn compare(base: &RunArgs, rounds: u32, only: &Only, out: &Path) -> anyhow::Result<()> {
    // The committed report is the whole matrix; a part of it must not take
    // its place, and a filter that keeps nothing is a typo.
    anyhow::ensure!(
        only.everything() || out != Path::new("docs"),
        "--scenarios and --strategies run a part of the matrix: give it an --out other than docs"
    );
    let matrix: Vec<Case> = matrix().into_iter().filter(|case| only.keeps(case)).collect();
    anyhow::ensure!(!matrix.is_empty(), "--scenarios and --strategies leave no case of the matrix to run");
    let limits = limits(base).await?;
    let mut results: Vec<Measured> = matrix.into_iter().map(|case| Measured { case, rounds: Vec::new() }).collect();
    // Round after round rather than case after case: a drift of the shared
    // machine (another job, a cache warming) then touches every case alike,
    // and shows in each case's noise instead of in one case's figures.
    for round in 1..=rounds {
        for measured in &mut results {
            let case = &measured.case;
            eprintln!(
                "round {round} of {rounds}: {} · {} · {} · {}×",
                slug(case.scenario),
                case.contention,
                case.strategy,
                case.instances
            );
            let report = run(args_of(base, case))
                .await
                .with_context(|| format!("round {round}: {:?} {} {}", case.scenario, case.contention, case.strategy))?;
            measured.rounds.push(report);
        }
    }
    std::fs::create_dir_all(out.join("benchmarks"))?;
    for (file, svg) in charts_of(&results) {
        std::fs::write(out.join("benchmarks").join(file), svg)?;
    }
    let machine = machine();
    std::fs::write(out.join("benchmarks.md"), markdown::markdown(base, rounds, only, &limits, &results, &machine)?)?;
    std::fs::write(out.join("benchmarks.json"), json(rounds, &limits, &results, machine)?)?;
    eprintln!("wrote {} and benchmarks.json", out.join("benchmarks.md").display());
    Ok(())
}

/// The ceiling first, then the engines alone.
async fn limits(base: &RunArgs) -> anyhow::Result<Limits> {
    let mut health = base.clone();
    health.scenario = Scenario::Health;
    health.spawn = Some(1);
    let ceiling = run(health).await.context("the /health/live ceiling")?.throughput;
    let hot_row_by_clients = pgbench(&base.postgres, &HOT_ROW_CLIENTS, base.seconds.ceil() as u64)?;
    let hot_row = hot_row_by_clients.iter().map(|(_, rate)| *rate).reduce(f64::max);
    Ok(Limits { ceiling, hot_row_by_clients, hot_row, gate_script: redis_gate_script(base).await? })
}

fn args_of(base: &RunArgs, case: &Case) -> RunArgs {
    let mut args = base.clone();
    args.scenario = case.scenario;
    args.spawn = Some(case.instances);
    args.stock = case.load.stock;
    args.wallets = case.load.wallets;
    args.products = case.load.products;
    args.moving_hot_spot = case.load.moving_hot_spot;
    args.connections = case.load.connections.unwrap_or(base.connections);
    args.points_strategy = None;
    args.stock_strategy = None;
    args.coupon_strategy = None;
    let strategy = Some(case.strategy.clone());
    match case.variable {
        "POINTS_STRATEGY" => args.points_strategy = strategy,
        "STOCK_STRATEGY" => args.stock_strategy = strategy,
        "COUPON_STRATEGY" => args.coupon_strategy = strategy,
        _ => {}
    }
    args
}

/// The scenarios of `results`, in the matrix's order.
fn scenarios_in(results: &[Measured]) -> Vec<Scenario> {
    let mut scenarios = Vec::new();
    for measured in results {
        if !scenarios.contains(&measured.case.scenario) {
            scenarios.push(measured.case.scenario);
        }
    }
    scenarios
}

fn rows_of(results: &[Measured], scenario: Scenario) -> Vec<&Measured> {
    results.iter().filter(|measured| measured.case.scenario == scenario).collect()
}

/// The contention levels of `rows`, in order.
fn contentions_in(rows: &[&Measured]) -> Vec<&'static str> {
    let mut contentions = Vec::new();
    for measured in rows {
        if !contentions.contains(&measured.case.contention) {
            contentions.push(measured.case.contention);
        }
    }
    contentions
}

/// The scenario's name on the command line.
fn slug(scenario: Scenario) -> String {
    scenario.to_possible_value().map_or_else(String::new, |value| value.get_name().to_owned())
}

fn bar_chart_file(scenario: Scenario) -> String {
    format!("{}.svg", slug(scenario))
}

/// `coupon-rush-high-2000-users-100-coupons-latency.svg`: the scenario and
/// the contention's words, without the thousands' commas.
fn latency_chart_file(scenario: Scenario, contention: &str) -> String {
    let words = contention.replace(',', "");
    let words = words.split(|c: char| !c.is_alphanumeric()).filter(|word| !word.is_empty());
    let mut file = slug(scenario);
    for word in words {
        file.push('-');
        file.push_str(&word.to_lowercase());
    }
    file + "-latency.svg"
}

/// Each scenario's throughput bars, then the latency by percentile at each
/// of its contention levels (of each case's round shown): (file, SVG).
fn charts_of(results: &[Measured]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for scenario in scenarios_in(results) {
        let rows = rows_of(results, scenario);
        let bars: Vec<charts::Bar> = rows.iter().map(|measured| bar_of(measured)).collect();
        files.push((bar_chart_file(scenario), charts::bar_chart(&bars)));
        for contention in contentions_in(&rows) {
            let lines: Vec<charts::Line> = rows
                .iter()
                .filter(|measured| measured.case.contention == contention)
                .map(|measured| charts::Line {
                    strategy: measured.case.strategy.clone(),
                    instances: measured.case.instances,
                    points: measured.shown().distribution.clone(),
                })
                .collect();
            let title = format!("{} · {contention}: latency by percentile", slug(scenario));
            files.push((latency_chart_file(scenario, contention), charts::latency_chart(&title, &lines)));
        }
    }
    files
}

fn bar_of(measured: &Measured) -> charts::Bar {
    let case = &measured.case;
    let throughputs = || measured.rounds.iter().map(|report| report.throughput);
    charts::Bar {
        label: format!("{} · {} · {}×", case.contention, case.strategy, case.instances),
        instances: case.instances,
        mean: measured.summary().throughput,
        min: throughputs().fold(f64::INFINITY, f64::min),
        max: throughputs().fold(0.0, f64::max),
    }
}

/// pgbench's rate of a single-row conditional UPDATE at each client count,
/// `seconds` each, on the PostgreSQL server at `postgres`.
pub(crate) fn pgbench(postgres: &str, clients: &[u32], seconds: u64) -> anyhow::Result<Vec<(u32, f64)>> {
    let psql =
        |database: &str, sql: &str| Command::new("psql").args([&format!("{postgres}/{database}"), "-qc", sql]).status();
    if Command::new("pgbench").arg("--version").output().is_err() {
        eprintln!("pgbench is not installed: no PostgreSQL reference line");
        return Ok(Vec::new());
    }
    let database = format!("shop_bench_engine_{}", uuid::Uuid::new_v4().simple());
    psql("postgres", &format!("CREATE DATABASE {database}"))?;
    psql(
        &database,
        "CREATE TABLE hot (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0)); INSERT INTO hot VALUES (1, 0)",
    )?;
    let script = std::env::temp_dir().join(format!("{database}.sql"));
    std::fs::write(&script, "UPDATE hot SET balance = balance + 1000 WHERE id = 1 AND balance >= 0;\n")?;
    let mut rates = Vec::new();
    for &clients in clients {
        let output = Command::new("pgbench")
            .args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", "2"])
            .args(["-T", &seconds.to_string(), "-f"])
            .arg(&script)
            .arg(format!("{postgres}/{database}"))
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let tps = text
            .lines()
            .find_map(|line| line.strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|tps| tps.parse().ok());
        rates.extend(tps.map(|tps| (clients, tps)));
    }
    psql("postgres", &format!("DROP DATABASE {database} WITH (FORCE)"))?;
    std::fs::remove_file(&script).ok();
    Ok(rates)
}

async fn redis_gate_script(base: &RunArgs) -> anyhow::Result<Option<f64>> {
    if Command::new("redis-benchmark").arg("--version").output().is_err() {
        eprintln!("redis-benchmark is not installed: no Redis reference line");
        return Ok(None);
    }
    let client = redis::Client::open(base.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let prefix = format!("bench-engine:{}:", uuid::Uuid::new_v4().simple());
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(shop::GRANT_LUA).query_async(&mut redis).await?;
    // A sold-out campaign: the path most of a rush takes.
    let state = format!("{prefix}state");
    redis::cmd("HSET").arg(&state).arg("left").arg(0).query_async::<()>(&mut redis).await?;
    let requests = (base.seconds * 40_000.0) as u64;
    let output = Command::new("redis-benchmark")
        .args(["-c", "64", "-n", &requests.to_string(), "-r", "1000000", "-q", "EVALSHA", &sha, "3"])
        .args([state.as_str(), &format!("{prefix}holders"), &format!("{prefix}pending"), "__rand_int__"])
        .output()?;
    redis::cmd("DEL").arg(&state).query_async::<()>(&mut redis).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .split(['\r', '\n'])
        .filter_map(|line| line.split(": ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|rate| rate.parse().ok())
        .next_back())
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or("unknown".into(), |kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "- {cores} cores ({cpu}), {memory} memory, {}\n- {}; {}; {}\n- the load generator runs on the same machine as the shop, PostgreSQL and Redis\n",
        command_output("uname", &["-sr"]),
        command_output("rustc", &["--version"]),
        command_output("postgres", &["--version"]).replace("postgres (PostgreSQL)", "PostgreSQL"),
        command_output("redis-server", &["--version"]).split(" sha=").next().unwrap_or("Redis").to_owned(),
    )
}

/// The engine limit a scenario's throughput is a share of.
fn limit_of(scenario: Scenario, limits: &Limits) -> Option<f64> {
    match scenario {
        Scenario::CouponRush | Scenario::CouponRushAsync => limits.gate_script,
        Scenario::ChargeStorm | Scenario::OrderRush => limits.hot_row,
        Scenario::Mixed | Scenario::Events | Scenario::Health => None,
    }
}

/// The same results for machines and `shop-bench diff`: the limits, then
/// each case with its summary over the rounds and every round's report
/// (`shop-bench run --json`'s).
fn json(rounds: u32, limits: &Limits, results: &[Measured], machine: String) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Run<'a> {
        case: &'a Case,
        summary: Summary,
        rounds: &'a [Report],
    }
    #[derive(Serialize)]
    struct Benchmarks<'a> {
        date: String,
        machine: String,
        rounds: u32,
        limits: &'a Limits,
        runs: Vec<Run<'a>>,
    }
    let runs = results
        .iter()
        .map(|measured| Run { case: &measured.case, summary: measured.summary(), rounds: &measured.rounds })
        .collect();
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    Ok(serde_json::to_string_pretty(&Benchmarks { date, machine, rounds, limits, runs })? + "\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cpu::PerRequest;
    use crate::load::{Latency, Point};

    fn report(scenario: Scenario, throughput: f64, p99_ms: f64) -> Report {
        let distribution = [(50.0, 0.25), (90.0, 0.5), (99.0, 1.0), (99.9, 2.0), (99.99, 3.0), (100.0, 4.0)]
            .map(|(percentile, share)| Point { percentile, ms: p99_ms * share })
            .to_vec();
        Report {
            scenario,
            instances: 1,
            strategies: Vec::new(),
            connections: 64,
            rate: None,
            requests: (throughput * 2.0) as u64,
            seconds: 2.0,
            throughput,
            single_row: None,
            cpu: PerRequest { shop_us: Some(120.0), postgres_us: 80.0, load_generator_us: 30.0 },
            latency: Latency {
                p50_ms: p99_ms * 0.25,
                p90_ms: p99_ms * 0.5,
                p99_ms,
                p999_ms: p99_ms * 2.0,
                p9999_ms: p99_ms * 3.0,
                max_ms: p99_ms * 4.0,
            },
            distribution,
            answers: BTreeMap::from([("201".to_owned(), 100), ("409 COUPON_SOLD_OUT".to_owned(), 900)]),
            scrapes: Default::default(),
            settlement: None,
            delivery: None,
            broken_invariants: Vec::new(),
        }
    }

    /// A case of `scenario` with a report per round: (throughput, p99 ms).
    fn measured(
        scenario: Scenario,
        contention: &'static str,
        strategy: &str,
        instances: usize,
        rounds: &[(f64, f64)],
    ) -> Measured {
        let case = Case {
            scenario,
            contention,
            variable: "COUPON_STRATEGY",
            strategy: strategy.to_owned(),
            instances,
            load: Load { stock: Some(100), ..Load::default() },
        };
        let rounds = rounds.iter().map(|&(throughput, p99)| report(scenario, throughput, p99)).collect();
        Measured { case, rounds }
    }

    fn limits() -> Limits {
        Limits {
            ceiling: 20_000.0,
            hot_row_by_clients: vec![(1, 4000.0)],
            hot_row: Some(4000.0),
            gate_script: Some(100_000.0),
        }
    }

    fn results() -> Vec<Measured> {
        let high = "high: 2,000 users, 100 coupons";
        let low = "low: 2,000 users, 1,000,000 coupons";
        let mut results = Vec::new();
        for instances in [1, 3] {
            for strategy in ["atomic", "redis-gate"] {
                for contention in [high, low] {
                    results.push(measured(
                        Scenario::CouponRush,
                        contention,
                        strategy,
                        instances,
                        &[(11_000.0, 8.0), (9_000.0, 12.0)],
                    ));
                }
            }
        }
        results.push(measured(Scenario::Mixed, "defaults", "defaults", 1, &[(6_000.0, 20.0), (6_000.0, 20.0)]));
        results
    }

    fn base() -> RunArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: RunArgs,
        }
        Wrapper::parse_from(["shop-bench", "mixed", "--seconds", "2"]).args
    }

    #[test]
    fn latency_chart_files_are_named_by_scenario_and_contention() {
        assert_eq!(
            latency_chart_file(Scenario::CouponRush, "high: 2,000 users, 100 coupons"),
            "coupon-rush-high-2000-users-100-coupons-latency.svg"
        );
        assert_eq!(
            latency_chart_file(Scenario::OrderRush, "high, scarce: one product of 100"),
            "order-rush-high-scarce-one-product-of-100-latency.svg"
        );
        assert_eq!(bar_chart_file(Scenario::CouponRushAsync), "coupon-rush-async.svg");
    }

    #[test]
    fn every_chart_the_markdown_shows_is_written() {
        let results = results();
        let files: Vec<String> = charts_of(&results).into_iter().map(|(file, _)| file).collect();
        assert_eq!(
            files,
            [
                "coupon-rush.svg",
                "coupon-rush-high-2000-users-100-coupons-latency.svg",
                "coupon-rush-low-2000-users-1000000-coupons-latency.svg",
                "mixed.svg",
                "mixed-defaults-latency.svg",
            ]
        );
        let md =
            markdown::markdown(&base(), 2, &Only::default(), &limits(), &results, "- a machine\n").expect("markdown");
        let shown: Vec<&str> = md.split("](benchmarks/").skip(1).filter_map(|rest| rest.split(')').next()).collect();
        assert_eq!(shown, files);
    }

    #[test]
    fn a_latency_chart_has_a_line_per_strategy_and_instance_count() {
        let results = results();
        let (_, svg) = charts_of(&results).into_iter().nth(1).expect("a latency chart");
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("coupon-rush · high: 2,000 users, 100 coupons: latency by percentile"));
    }

    #[test]
    fn tables_show_the_mean_the_noise_and_the_shares() {
        let mut results = results();
        results[0].rounds[1].broken_invariants.push("101 coupons issued".to_owned());
        let md =
            markdown::markdown(&base(), 2, &Only::default(), &limits(), &results, "- a machine\n").expect("markdown");
        assert!(md.contains(
            "| req/s | noise: req/s, p99 | of limit | of ceiling | p50 ms | p99 ms | p99.9 ms | p99.99 ms |"
        ));
        // Mean 10,000/s, spread 20 % and 40 %; 10 % of the gate script and
        // 50 % of the ceiling; the slower round's p99 (12 ms) and p99.99 (36 ms).
        let row = "| high: 2,000 users, 100 coupons | atomic | 1 | 10000 | 20 %, 40 % | 10 % | 50 % | 3.00 | 12.00 | 24.00 | 36.00 | 120, 80 |";
        assert!(md.contains(row), "{md}");
        assert!(md.contains("| round 2: 101 coupons issued |"), "{md}");
        // Mixed has no engine limit, but a share of the ceiling.
        assert!(md.contains("| defaults | defaults | 1 | 6000 | 0 %, 0 % | – | 30 % |"), "{md}");
        assert!(md.contains("ceiling, `GET /health/live` on one spawned instance, 64 connections: **20000 /s**"));
        assert!(md.contains("The whole matrix ran 2 times"));
    }

    #[test]
    fn a_part_of_the_matrix_keeps_the_cases_named_and_only_them() {
        let only = Only { scenarios: vec![Scenario::ChargeStorm], strategies: vec!["batch".into(), "adaptive".into()] };
        let kept: Vec<Case> = matrix().into_iter().filter(|case| only.keeps(case)).collect();
        // Four loads, two strategies, one and three instances.
        assert_eq!(kept.len(), 4 * 2 * 2);
        assert!(kept.iter().all(|case| case.scenario == Scenario::ChargeStorm));
        assert!(kept.iter().any(|case| case.strategy == "adaptive"));
        assert_eq!(only.arguments(), " --scenarios charge-storm --strategies batch,adaptive");
        let everything = Only::default();
        assert!(everything.everything());
        assert_eq!(everything.arguments(), "");
        assert_eq!(matrix().into_iter().filter(|case| everything.keeps(case)).count(), matrix().len());
    }

    #[test]
    fn one_round_says_no_noise_was_measured() {
        let results = vec![measured(Scenario::CouponRush, "high", "atomic", 1, &[(1_000.0, 5.0)])];
        let md =
            markdown::markdown(&base(), 1, &Only::default(), &limits(), &results, "- a machine\n").expect("markdown");
        assert!(md.contains("One round: no run-to-run noise was measured"));
        assert!(md.contains("| high | atomic | 1 | 1000 | – | 1 % | 5 % |"), "{md}");
    }
}
