//! `benchmarks.md`: how the figures were made, the reference lines, then a
//! section per scenario with its charts and a table of its cases.

use std::fmt::Write as _;

use super::{
    Limits, Measured, Only, bar_chart_file, contentions_in, latency_chart_file, limit_of, rows_of, scenarios_in, slug,
};
use crate::RunArgs;

pub fn markdown(
    base: &RunArgs,
    rounds: u32,
    only: &Only,
    limits: &Limits,
    results: &[Measured],
    machine: &str,
) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo run --release -p shop-bench -- compare --rounds {rounds}{}` on {} ({} s per run, closed loop, \
         {} connections, fresh database and spawned instances per run, {} database connections shared by the \
         instances (at least 4 each); every run's invariants were checked). As deployed: the instances ran their \
         background upkeep, and a scraper fetched each one's `/metrics` every second during the load.\n",
        only.arguments(),
        chrono::Utc::now().format("%Y-%m-%d"),
        base.seconds,
        base.connections,
        crate::TOTAL_POOL
    )?;
    writeln!(md, "{}\n", how_rounds_are_shown(rounds, only))?;
    writeln!(md, "## Machine\n\n{machine}")?;
    engine_limits(&mut md, base, limits)?;
    for scenario in scenarios_in(results) {
        let rows = rows_of(results, scenario);
        writeln!(md, "## {}\n", slug(scenario))?;
        writeln!(md, "![{} throughput]({})\n", slug(scenario), chart_path(&bar_chart_file(scenario)))?;
        table(&mut md, limits, &rows)?;
        writeln!(md, "Latency by percentile (of each case's round shown):\n")?;
        for contention in contentions_in(&rows) {
            let file = latency_chart_file(scenario, contention);
            writeln!(md, "![{}, {contention}: latency by percentile]({})\n", slug(scenario), chart_path(&file))?;
        }
    }
    Ok(md)
}

fn chart_path(file: &str) -> String {
    format!("benchmarks/{file}")
}

fn how_rounds_are_shown(rounds: u32, only: &Only) -> String {
    if rounds < 2 {
        return "One round: no run-to-run noise was measured; on a shared 2-core machine, read differences under \
                ~15 % as noise."
            .to_owned();
    }
    format!(
        "{} ran {rounds} times, round after round, so that a drift of the machine touches every case \
         alike. req/s is the mean of a case's rounds; *noise* is how far its rounds spread, (max − min) / mean, \
         of req/s and of p99: read a difference smaller than it as noise (`shop-bench diff OLD.json NEW.json` \
         flags those beyond it). The other columns and the latency charts are of the round of median throughput \
         (of an even number, the slower middle one); invariants were checked in every round.",
        if only.everything() { "The whole matrix" } else { "This part of the matrix" }
    )
}

fn engine_limits(md: &mut String, base: &RunArgs, limits: &Limits) -> anyhow::Result<()> {
    writeln!(md, "## Engine limits, measured in the same run\n")?;
    let show = |rate: Option<f64>| rate.map_or("not measured (tool missing)".into(), |r| format!("{r:.0} /s"));
    writeln!(
        md,
        "- The shop's ceiling, `GET /health/live` on one spawned instance, {} connections: **{:.0} /s** — HTTP, \
         routing and middleware with no database or Redis; no endpoint can go faster here",
        base.connections, limits.ceiling
    )?;
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
        "*of ceiling* is a result's share of the ceiling. *of limit*: coupon-rush's share of the gate script's rate; \
         charge-storm's and order-rush's of the single-row update. CPU µs/req: the CPU time of the spawned \
         instances and of PostgreSQL over the load (from `/proc`), per request. The same results, every round's \
         report with its latency distribution, for machines: `benchmarks.json`.\n"
    )?;
    Ok(())
}

fn table(md: &mut String, limits: &Limits, rows: &[&Measured]) -> anyhow::Result<()> {
    writeln!(
        md,
        "| contention | strategy | instances | req/s | noise: req/s, p99 | of limit | of ceiling | p50 ms | p99 ms | p99.9 ms | p99.99 ms | CPU µs/req: shop, PostgreSQL | answers | invariants |"
    )?;
    writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")?;
    for measured in rows {
        let (case, summary, shown) = (&measured.case, measured.summary(), measured.shown());
        let share = |of: f64| format!("{:.0} %", 100.0 * summary.throughput / of);
        let noise = summary.noise.map_or("–".into(), |noise| {
            format!("{:.0} %, {:.0} %", 100.0 * noise.throughput_spread, 100.0 * noise.p99_spread)
        });
        let answers: Vec<String> = shown.answers.iter().map(|(answer, count)| format!("{answer}: {count}")).collect();
        let (latency, cpu) = (&shown.latency, &shown.cpu);
        writeln!(
            md,
            "| {} | {} | {} | {:.0} | {noise} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}, {:.0} | {} | {} |",
            case.contention,
            case.strategy,
            case.instances,
            summary.throughput,
            limit_of(case.scenario, limits).map_or("–".into(), share),
            share(limits.ceiling),
            latency.p50_ms,
            latency.p99_ms,
            latency.p999_ms,
            latency.p9999_ms,
            cpu.shop_us.unwrap_or(f64::NAN),
            cpu.postgres_us,
            answers.join(", "),
            invariants(measured)
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// "hold" when they held in every round, else what broke in which; then
/// the round shown's delivery and settlement.
fn invariants(measured: &Measured) -> String {
    let broken: Vec<String> = measured
        .rounds
        .iter()
        .enumerate()
        .flat_map(|(i, report)| report.broken_invariants.iter().map(move |broken| format!("round {}: {broken}", i + 1)))
        .collect();
    let mut invariants = if broken.is_empty() { "hold".into() } else { broken.join("; ") };
    let shown = measured.shown();
    if let Some(delivery) = &shown.delivery {
        invariants += &format!("; delivered {:.0} events/s", delivery.per_second);
    }
    if let Some(settled) = &shown.settlement {
        invariants += &format!(
            "; settled p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            settled.p50_ms, settled.p99_ms, settled.max_ms
        );
    }
    invariants
}
