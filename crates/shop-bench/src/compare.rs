//! `compare`: every scenario under every strategy, at high and low
//! contention, on one and three instances, beside the engine limits
//! measured in the same run; written to `docs/benchmarks.md` with SVG charts,
//! and to `docs/benchmarks.json` for machines.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use clap::ValueEnum;
use serde::Serialize;
use shop::config::{CouponStrategyKind, PointsStrategyKind, StockStrategyKind, value_names};

use crate::scenario::Scenario;
use crate::{Report, RunArgs, run};

/// One run of the matrix.
#[derive(Serialize)]
struct Case {
    scenario: Scenario,
    contention: &'static str,
    variable: &'static str,
    strategy: String,
    instances: usize,
    stock: Option<i64>,
    wallets: usize,
    products: usize,
}

fn matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |scenario, contention, variable, strategies: &[String], stock, wallets, products| {
        for instances in [1, 3] {
            for strategy in strategies {
                let strategy = strategy.clone();
                cases.push(Case { scenario, contention, variable, strategy, instances, stock, wallets, products });
            }
        }
    };
    let coupons = value_names::<CouponStrategyKind>();
    add(Scenario::CouponRush, "high: 2,000 users, 100 coupons", "COUPON_STRATEGY", &coupons, Some(100), 1, 1);
    add(Scenario::CouponRushAsync, "high: 2,000 users, 100 coupons", "COUPON_STRATEGY", &coupons, Some(100), 1, 1);
    add(
        Scenario::CouponRush,
        "low: 2,000 users, 1,000,000 coupons",
        "COUPON_STRATEGY",
        &coupons,
        Some(1_000_000),
        1,
        1,
    );
    let points = value_names::<PointsStrategyKind>();
    add(Scenario::ChargeStorm, "high: one wallet", "POINTS_STRATEGY", &points, None, 1, 1);
    add(Scenario::ChargeStorm, "low: 64 wallets", "POINTS_STRATEGY", &points, None, 64, 1);
    let stock = value_names::<StockStrategyKind>();
    add(Scenario::OrderRush, "high, ample: one product", "STOCK_STRATEGY", &stock, None, 1, 1);
    add(Scenario::OrderRush, "high, scarce: one product of 100", "STOCK_STRATEGY", &stock, Some(100), 1, 1);
    add(Scenario::OrderRush, "low: 64 products", "STOCK_STRATEGY", &stock, None, 1, 64);
    add(Scenario::Mixed, "defaults", "", &["defaults".to_owned()], None, 1, 1);
    add(Scenario::Events, "defaults", "", &["defaults".to_owned()], None, 1, 1);
    cases
}

/// Client counts pgbench updates the hot row with: one (no lock queue, the
/// row's best), the spawned instances' pool, and the load's connections.
const HOT_ROW_CLIENTS: [u32; 3] = [1, 10, 64];

/// Reference rates of the engines alone, on this machine, in this run.
#[derive(Serialize)]
struct Limits {
    /// pgbench: a single-row conditional UPDATE, (clients, rate).
    hot_row_by_clients: Vec<(u32, f64)>,
    /// The best of those: the single row's limit.
    hot_row: Option<f64>,
    /// redis-benchmark: the coupon gate script answering a sold-out campaign.
    gate_script: Option<f64>,
}

pub async fn compare(base: &RunArgs, out: &Path) -> anyhow::Result<()> {
    let hot_row_by_clients = pgbench(&base.postgres, &HOT_ROW_CLIENTS, base.seconds.ceil() as u64)?;
    let hot_row = hot_row_by_clients.iter().map(|(_, rate)| *rate).reduce(f64::max);
    let limits = Limits { hot_row_by_clients, hot_row, gate_script: redis_gate_script(base).await? };
    let mut results = Vec::new();
    for case in matrix() {
        let mut args = base.clone();
        args.scenario = case.scenario;
        args.spawn = Some(case.instances);
        args.stock = case.stock;
        args.wallets = case.wallets;
        args.products = case.products;
        args.points_strategy = None;
        args.stock_strategy = None;
        args.coupon_strategy = None;
        match case.variable {
            "POINTS_STRATEGY" => args.points_strategy = Some(case.strategy.clone()),
            "STOCK_STRATEGY" => args.stock_strategy = Some(case.strategy.clone()),
            "COUPON_STRATEGY" => args.coupon_strategy = Some(case.strategy.clone()),
            _ => {}
        }
        let report =
            run(args).await.with_context(|| format!("{:?} {} {}", case.scenario, case.contention, case.strategy))?;
        results.push((case, report));
    }
    std::fs::create_dir_all(out.join("benchmarks"))?;
    for &scenario in Scenario::value_variants() {
        let rows: Vec<_> = results.iter().filter(|(case, _)| case.scenario == scenario).collect();
        std::fs::write(out.join("benchmarks").join(format!("{}.svg", slug(scenario))), bar_chart(&rows))?;
    }
    std::fs::write(out.join("benchmarks.md"), markdown(base, &limits, &results)?)?;
    std::fs::write(out.join("benchmarks.json"), json(&limits, &results)?)?;
    eprintln!("wrote {} and benchmarks.json", out.join("benchmarks.md").display());
    Ok(())
}

fn slug(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::CouponRush => "coupon-rush",
        Scenario::CouponRushAsync => "coupon-rush-async",
        Scenario::ChargeStorm => "charge-storm",
        Scenario::OrderRush => "order-rush",
        Scenario::Mixed => "mixed",
        Scenario::Events => "events",
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

/// The reference line a scenario's throughput is a share of.
fn limit_of(scenario: Scenario, limits: &Limits) -> Option<f64> {
    match scenario {
        Scenario::CouponRush | Scenario::CouponRushAsync => limits.gate_script,
        Scenario::ChargeStorm | Scenario::OrderRush => limits.hot_row,
        Scenario::Mixed | Scenario::Events => None,
    }
}

/// The same results for machines: the limits, then each run's case and
/// report (`shop-bench run --json`'s).
fn json(limits: &Limits, results: &[(Case, Report)]) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Run<'a> {
        case: &'a Case,
        report: &'a Report,
    }
    #[derive(Serialize)]
    struct Benchmarks<'a> {
        date: String,
        machine: String,
        limits: &'a Limits,
        runs: Vec<Run<'a>>,
    }
    let runs = results.iter().map(|(case, report)| Run { case, report }).collect();
    let benchmarks =
        Benchmarks { date: chrono::Utc::now().format("%Y-%m-%d").to_string(), machine: machine(), limits, runs };
    Ok(serde_json::to_string_pretty(&benchmarks)? + "\n")
}

fn markdown(base: &RunArgs, limits: &Limits, results: &[(Case, Report)]) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo run --release -p shop-bench -- compare` on {} ({} s per run, closed loop, {} connections, \
         fresh database and spawned instances per run, {} database connections shared by the instances (at least 4 \
         each); every run's invariants were checked). One run each on a \
         shared 2-core machine: read differences under ~15 % as noise.\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        base.seconds,
        base.connections,
        crate::TOTAL_POOL
    )?;
    writeln!(md, "## Machine\n\n{}", machine())?;
    writeln!(md, "## Engine limits, measured in the same run\n")?;
    let show = |rate: Option<f64>| rate.map_or("not measured (tool missing)".into(), |r| format!("{r:.0} /s"));
    let by_clients: Vec<String> =
        limits.hot_row_by_clients.iter().map(|(clients, rate)| format!("{rate:.0} /s with {clients}")).collect();
    writeln!(
        md,
        "- PostgreSQL, `pgbench`: a single-row conditional `UPDATE` ({}); the best, **{}**, is the single row's limit",
        if by_clients.is_empty() { "not measured".into() } else { by_clients.join(", ") },
        show(limits.hot_row)
    )?;
    writeln!(
        md,
        "- Redis, `redis-benchmark`: the coupon gate's Lua script on a sold-out campaign, 64 clients: **{}**\n",
        show(limits.gate_script)
    )?;
    writeln!(
        md,
        "coupon-rush is shown as a share of the gate script's rate; charge-storm and order-rush of the single-row update. \
         CPU µs/req: the CPU time of the spawned instances and of PostgreSQL over the load (from `/proc`), per request. \
         The same results, for machines: `benchmarks.json`.\n"
    )?;
    for &scenario in Scenario::value_variants() {
        writeln!(md, "## {}\n", slug(scenario))?;
        writeln!(md, "![{0}](benchmarks/{0}.svg)\n", slug(scenario))?;
        writeln!(
            md,
            "| contention | strategy | instances | req/s | of limit | p50 ms | p99 ms | p99.9 ms | CPU µs/req: shop, PostgreSQL | answers | invariants |"
        )?;
        writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|")?;
        for (case, report) in results.iter().filter(|(case, _)| case.scenario == scenario) {
            let share = limit_of(scenario, limits)
                .map_or("–".into(), |limit| format!("{:.0} %", 100.0 * report.throughput / limit));
            let answers: Vec<String> =
                report.answers.iter().map(|(answer, count)| format!("{answer}: {count}")).collect();
            let mut invariants =
                if report.broken_invariants.is_empty() { "hold".into() } else { report.broken_invariants.join("; ") };
            if let Some(delivery) = &report.delivery {
                invariants += &format!("; delivered {:.0} events/s", delivery.per_second);
            }
            if let Some(settled) = &report.settlement {
                invariants += &format!(
                    "; settled p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                    settled.p50_ms, settled.p99_ms, settled.max_ms
                );
            }
            let cpu = &report.cpu;
            writeln!(
                md,
                "| {} | {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.0}, {:.0} | {} | {} |",
                case.contention,
                case.strategy,
                case.instances,
                report.throughput,
                share,
                report.latency.p50_ms,
                report.latency.p99_ms,
                report.latency.p999_ms,
                cpu.shop_us.unwrap_or(f64::NAN),
                cpu.postgres_us,
                answers.join(", "),
                invariants
            )?;
        }
        writeln!(md)?;
    }
    Ok(md)
}

/// A horizontal bar chart of throughput, one bar per run. Written by hand:
/// the charting crates need a font backend (and a font file at run time)
/// even to place SVG text, and one series of bars is a few lines of markup.
fn bar_chart(rows: &[&(Case, Report)]) -> String {
    let (bar_height, label_width, chart_width) = (18.0, 430.0, 360.0);
    let top = rows.iter().map(|(_, report)| report.throughput).fold(1.0, f64::max);
    let height = 20.0 + bar_height * rows.len() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
        label_width + chart_width + 70.0
    );
    for (i, (case, report)) in rows.iter().enumerate() {
        let y = 10.0 + bar_height * i as f64;
        let width = chart_width * report.throughput / top;
        let colour = if case.instances == 1 { "#4c78a8" } else { "#f58518" };
        let label = format!("{} · {} · {}×", case.contention, case.strategy, case.instances);
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{}" y="{}" width="{width:.1}" height="{}" fill="{colour}"/><text x="{}" y="{}">{:.0}/s</text>"#,
            label_width - 6.0,
            y + 12.0,
            label.replace('&', "&amp;").replace('<', "&lt;"),
            label_width,
            y + 2.0,
            bar_height - 4.0,
            label_width + width + 4.0,
            y + 12.0,
            report.throughput
        );
    }
    svg.push_str("</svg>\n");
    svg
}
