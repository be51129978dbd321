//! `diff OLD.json NEW.json`: two `compare` results (`benchmarks.json`)
//! case by case — throughput and p99, old → new — flagging each figure that
//! moved by more than the run-to-run noise measured for its case. A report,
//! not a gate, unless asked to fail on a regression.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::rounds::{self, Round, Summary};

/// The noise taken for a file with one round per case, which measured
/// none: single runs on the shared 2-core machine were seen to vary by up
/// to this much.
const DEFAULT_NOISE: f64 = 0.15;

/// What `diff` reads of `benchmarks.json`; the rest is ignored, so files
/// with fields added later still compare.
#[derive(Deserialize)]
struct Benchmarks {
    runs: Vec<Run>,
}

#[derive(Deserialize)]
struct Run {
    case: CaseKey,
    rounds: Vec<Report>,
}

/// What makes a case the same case in two files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
struct CaseKey {
    scenario: String,
    contention: String,
    strategy: String,
    instances: usize,
}

#[derive(Deserialize)]
struct Report {
    throughput: f64,
    latency: Latency,
}

#[derive(Deserialize)]
struct Latency {
    p99_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    WithinNoise,
    Faster,
    Slower,
}

/// One figure of one case, in both files.
#[derive(Debug)]
struct Movement {
    old: f64,
    new: f64,
    /// The larger of the two files' spread for the case.
    noise: f64,
    /// One of the files measured no noise: [`DEFAULT_NOISE`] stood in.
    noise_assumed: bool,
    verdict: Verdict,
}

#[derive(Debug)]
struct Matched {
    case: CaseKey,
    throughput: Movement,
    p99: Movement,
}

#[derive(Debug, Default)]
struct Diff {
    matched: Vec<Matched>,
    added: Vec<CaseKey>,
    removed: Vec<CaseKey>,
}

/// Prints the diff of two `benchmarks.json`; false if `fail_on_regression`
/// and a figure got slower beyond its noise.
pub fn diff(old: &Path, new: &Path, fail_on_regression: bool) -> anyhow::Result<bool> {
    let diff = diff_of(&read(old)?, &read(new)?);
    print!("{}", render(&diff, old, new));
    let slower = diff.matched.iter().any(|m| [&m.throughput, &m.p99].iter().any(|f| f.verdict == Verdict::Slower));
    Ok(!(fail_on_regression && slower))
}

fn read(path: &Path) -> anyhow::Result<Benchmarks> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a shop-bench compare result", path.display()))
}

fn summaries(benchmarks: &Benchmarks) -> BTreeMap<CaseKey, Summary> {
    benchmarks
        .runs
        .iter()
        .filter_map(|run| {
            let rounds: Vec<Round> =
                run.rounds.iter().map(|r| Round { throughput: r.throughput, p99_ms: r.latency.p99_ms }).collect();
            Some((run.case.clone(), rounds::summarize(&rounds)?))
        })
        .collect()
}

fn diff_of(old: &Benchmarks, new: &Benchmarks) -> Diff {
    let (old, mut new) = (summaries(old), summaries(new));
    let mut diff = Diff::default();
    for (case, before) in old {
        let Some(after) = new.remove(&case) else {
            diff.removed.push(case);
            continue;
        };
        let noise = |spread: fn(&rounds::Noise) -> f64| {
            let of = |summary: &Summary| summary.noise.as_ref().map(spread);
            let assumed = of(&before).is_none() || of(&after).is_none();
            (of(&before).unwrap_or(DEFAULT_NOISE).max(of(&after).unwrap_or(DEFAULT_NOISE)), assumed)
        };
        let throughput = movement(before.throughput, after.throughput, noise(|n| n.throughput_spread), true);
        let p99 = movement(before.p99_ms, after.p99_ms, noise(|n| n.p99_spread), false);
        diff.matched.push(Matched { case, throughput, p99 });
    }
    diff.added = new.into_keys().collect();
    diff
}

fn movement(old: f64, new: f64, (noise, noise_assumed): (f64, bool), higher_is_faster: bool) -> Movement {
    let change = change(old, new);
    let verdict = if change.abs() <= noise {
        Verdict::WithinNoise
    } else if (change > 0.0) == higher_is_faster {
        Verdict::Faster
    } else {
        Verdict::Slower
    };
    Movement { old, new, noise, noise_assumed, verdict }
}

/// (new − old) / old; a figure that was zero has moved without bound.
fn change(old: f64, new: f64) -> f64 {
    if old == new {
        0.0
    } else if old == 0.0 {
        f64::INFINITY.copysign(new)
    } else {
        (new - old) / old
    }
}

fn render(diff: &Diff, old: &Path, new: &Path) -> String {
    let mut text = format!("shop-bench diff {} → {}\n", old.display(), new.display());
    text += "A figure is flagged when it moved by more than its case's noise: the larger of the two files' \
             run-to-run spread ((max − min) / mean over the rounds).\n";
    if diff.matched.iter().any(|m| m.throughput.noise_assumed) {
        let _ = writeln!(
            text,
            "* a file with one round measured no noise: {:.0} % is assumed for it.",
            DEFAULT_NOISE * 100.0
        );
    }
    for matched in &diff.matched {
        let case = &matched.case;
        let _ = writeln!(text, "\n{} · {} · {} · {}×", case.scenario, case.contention, case.strategy, case.instances);
        line(&mut text, "req/s", &matched.throughput, 0);
        line(&mut text, "p99 ms", &matched.p99, 2);
    }
    for (heading, cases) in
        [("only in the new file (added)", &diff.added), ("only in the old file (removed)", &diff.removed)]
    {
        if !cases.is_empty() {
            let _ = writeln!(text, "\n{heading}:");
            for case in cases {
                let _ = writeln!(
                    text,
                    "  {} · {} · {} · {}×",
                    case.scenario, case.contention, case.strategy, case.instances
                );
            }
        }
    }
    let count =
        |verdict| diff.matched.iter().flat_map(|m| [&m.throughput, &m.p99]).filter(|f| f.verdict == verdict).count();
    let _ = writeln!(
        text,
        "\nfigures: {} faster, {} slower, {} within noise; cases: {} added, {} removed",
        count(Verdict::Faster),
        count(Verdict::Slower),
        count(Verdict::WithinNoise),
        diff.added.len(),
        diff.removed.len()
    );
    text
}

fn line(text: &mut String, figure: &str, movement: &Movement, decimals: usize) {
    let flag = match movement.verdict {
        Verdict::WithinNoise => "",
        Verdict::Faster => "▲ faster",
        Verdict::Slower => "▼ slower",
    };
    let line = format!(
        "  {figure:<7} {:>10.decimals$} → {:<10.decimals$} {:>+8.1} %   noise {:>5.1} %{:<1}   {flag}",
        movement.old,
        movement.new,
        change(movement.old, movement.new) * 100.0,
        movement.noise * 100.0,
        if movement.noise_assumed { "*" } else { "" },
    );
    text.push_str(line.trim_end());
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (strategy, instances, [(throughput, p99 ms) of each round]).
    type Case<'a> = (&'a str, usize, &'a [(f64, f64)]);

    /// A `benchmarks.json` of coupon-rush cases.
    fn file(cases: &[Case]) -> Benchmarks {
        let runs: Vec<serde_json::Value> = cases
            .iter()
            .map(|(strategy, instances, rounds)| {
                serde_json::json!({
                    "case": {"scenario": "coupon-rush", "contention": "high", "variable": "COUPON_STRATEGY",
                             "strategy": strategy, "instances": instances},
                    "rounds": rounds.iter().map(|(throughput, p99)| serde_json::json!({
                        "throughput": throughput, "latency": {"p50_ms": 1.0, "p99_ms": p99}, "requests": 1000,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let json = serde_json::json!({"date": "2026-11-30", "limits": {"ceiling": 30000.0}, "runs": runs});
        serde_json::from_value(json).expect("a compare result")
    }

    fn matched<'a>(diff: &'a Diff, strategy: &str, instances: usize) -> &'a Matched {
        diff.matched.iter().find(|m| m.case.strategy == strategy && m.case.instances == instances).expect("matched")
    }

    #[test]
    fn a_move_beyond_the_noise_is_flagged_and_one_within_it_is_not() {
        // atomic: 5 % noise, +20 % throughput; 10 % noise, p99 1 % better: only throughput flagged.
        // redis-gate: 10 % noise, −30 % throughput; 5 % noise, p99 doubled: both slower.
        let old = file(&[
            ("atomic", 1, &[(1000.0, 11.0), (950.0, 10.0)]),
            ("redis-gate", 1, &[(2000.0, 5.0), (1800.0, 5.0)]),
        ]);
        let new = file(&[
            ("atomic", 1, &[(1175.0, 9.9), (1165.0, 9.9)]),
            ("redis-gate", 1, &[(1300.0, 10.0), (1360.0, 10.5)]),
        ]);
        let diff = diff_of(&old, &new);
        let atomic = matched(&diff, "atomic", 1);
        assert_eq!((atomic.throughput.verdict, atomic.p99.verdict), (Verdict::Faster, Verdict::WithinNoise));
        assert!((atomic.throughput.noise - 50.0 / 975.0).abs() < 1e-9, "{atomic:?}");
        let gate = matched(&diff, "redis-gate", 1);
        assert_eq!((gate.throughput.verdict, gate.p99.verdict), (Verdict::Slower, Verdict::Slower));
        assert!(!gate.throughput.noise_assumed);
    }

    #[test]
    fn the_larger_noise_of_the_two_files_counts() {
        // Old rounds agree; new ones spread 40 %: a 30 % drop is within that.
        let old = file(&[("atomic", 1, &[(1000.0, 10.0), (1000.0, 10.0)])]);
        let new = file(&[("atomic", 1, &[(840.0, 10.0), (560.0, 10.0)])]);
        let diff = diff_of(&old, &new);
        let atomic = matched(&diff, "atomic", 1);
        assert!((atomic.throughput.noise - 0.4).abs() < 1e-9, "{atomic:?}");
        assert_eq!(atomic.throughput.verdict, Verdict::WithinNoise);
    }

    #[test]
    fn one_round_assumes_the_default_noise_and_says_so() {
        let old = file(&[("atomic", 1, &[(1000.0, 10.0)])]);
        let new = file(&[("atomic", 1, &[(1100.0, 10.0), (1100.0, 10.0)]), ("atomic", 3, &[(900.0, 12.0)])]);
        let diff = diff_of(&old, &new);
        let atomic = matched(&diff, "atomic", 1);
        assert_eq!((atomic.throughput.noise, atomic.throughput.noise_assumed), (DEFAULT_NOISE, true));
        assert_eq!(atomic.throughput.verdict, Verdict::WithinNoise);
        let text = render(&diff, Path::new("old.json"), Path::new("new.json"));
        assert!(text.contains("15 % is assumed"), "{text}");
        assert!(text.contains("noise  15.0 %*"), "{text}");
    }

    #[test]
    fn cases_in_one_file_only_are_added_or_removed() {
        let old = file(&[("atomic", 1, &[(1000.0, 10.0)]), ("pessimistic", 1, &[(800.0, 12.0)])]);
        let new = file(&[("atomic", 1, &[(1000.0, 10.0)]), ("atomic", 3, &[(900.0, 12.0)])]);
        let diff = diff_of(&old, &new);
        assert_eq!(diff.matched.len(), 1);
        let names = |cases: &[CaseKey]| cases.iter().map(|c| (c.strategy.clone(), c.instances)).collect::<Vec<_>>();
        assert_eq!(names(&diff.added), [("atomic".to_owned(), 3)]);
        assert_eq!(names(&diff.removed), [("pessimistic".to_owned(), 1)]);
        let text = render(&diff, Path::new("old.json"), Path::new("new.json"));
        assert!(text.contains("only in the new file (added):\n  coupon-rush · high · atomic · 3×"), "{text}");
        assert!(text.contains("figures: 0 faster, 0 slower, 2 within noise; cases: 1 added, 1 removed"), "{text}");
    }

    #[test]
    fn the_flag_is_printed_beside_the_figure() {
        let old = file(&[("atomic", 1, &[(1000.0, 10.0), (1000.0, 10.0)])]);
        let new = file(&[("atomic", 1, &[(500.0, 10.0), (500.0, 10.0)])]);
        let text = render(&diff_of(&old, &new), Path::new("old.json"), Path::new("new.json"));
        let line = text.lines().find(|line| line.trim_start().starts_with("req/s")).expect("a throughput line");
        assert!(line.contains("1000 → 500") && line.contains("-50.0 %") && line.ends_with("▼ slower"), "{line}");
        assert!(!text.contains("assumed"), "{text}");
    }
}
