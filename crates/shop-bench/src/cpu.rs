//! The CPU a run costs, read from `/proc` before and after the load: the
//! shop's spawned instances, PostgreSQL (every `postgres` process on this
//! machine, with the backends that ended meanwhile), and this load
//! generator. Per request, it shows what a result costs, not only how fast
//! it came — on a machine whose cores all three share.

use std::time::Duration;

use serde::Serialize;

/// The unit of `/proc/<pid>/stat`'s times (`USER_HZ`), which the kernel
/// fixes at 100 for user space on x86-64 and AArch64.
const TICKS_PER_SECOND: u64 = 100;

/// CPU time used so far.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    shop: Duration,
    postgres: Duration,
    load_generator: Duration,
}

/// CPU time per request over a run, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct PerRequest {
    /// Absent when the shop runs elsewhere (`--target`).
    pub shop_us: Option<f64>,
    pub postgres_us: f64,
    pub load_generator_us: f64,
}

impl Sample {
    /// Now, for the shop processes `shop`.
    pub fn take(shop: &[u32]) -> Self {
        let postgres = processes_named("postgres").map(|pid| time_of(pid, true)).sum();
        Self {
            shop: shop.iter().map(|pid| time_of(*pid, false)).sum(),
            postgres,
            load_generator: time_of(std::process::id(), false),
        }
    }

    /// What was used from `self` to `later`, per request.
    pub fn per_request(&self, later: &Sample, requests: u64, shop_known: bool) -> PerRequest {
        let per = |before: Duration, after: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e6 / requests.max(1) as f64
        };
        PerRequest {
            shop_us: shop_known.then(|| per(self.shop, later.shop)),
            postgres_us: per(self.postgres, later.postgres),
            load_generator_us: per(self.load_generator, later.load_generator),
        }
    }
}

/// User and system time of `pid`, with its reaped children's when
/// `with_children` (PostgreSQL's postmaster reaps its ended backends); zero
/// for a process gone.
fn time_of(pid: u32, with_children: bool) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Duration::ZERO };
    // The name, in parentheses, may hold spaces: fields are counted after it.
    let Some((_, fields)) = stat.rsplit_once(')') else { return Duration::ZERO };
    // Fields 14–17 of the man page (utime, stime, cutime, cstime) are the
    // 12th to 15th after the name.
    let times: Vec<u64> = fields.split_whitespace().skip(11).take(4).filter_map(|field| field.parse().ok()).collect();
    let counted = if with_children { &times[..] } else { &times[..times.len().min(2)] };
    Duration::from_millis(counted.iter().sum::<u64>() * 1000 / TICKS_PER_SECOND)
}

fn processes_named(name: &str) -> impl Iterator<Item = u32> + '_ {
    std::fs::read_dir("/proc").into_iter().flatten().filter_map(Result::ok).filter_map(move |entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim_end() == name).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_some_cpu_and_counts_it() {
        // Spins until 200 ms of CPU are counted: on a loaded machine that
        // takes longer than 200 ms, so the wall clock bounds it loosely.
        let before = Sample::take(&[std::process::id()]);
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        let used = loop {
            for _ in 0..1_000_000 {
                spin = spin.wrapping_add(1);
            }
            std::hint::black_box(spin);
            let used = before.per_request(&Sample::take(&[std::process::id()]), 1, true);
            if used.load_generator_us >= 200_000.0 || started.elapsed() > Duration::from_secs(60) {
                break used;
            }
        };
        assert!(used.load_generator_us >= 200_000.0, "{used:?}");
        // Never more CPU than wall time on every core (other tests may run
        // in this process), give or take a tick of 10 ms: a wrong unit
        // would count far more.
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let wall_us = started.elapsed().as_secs_f64() * 1e6;
        assert!(used.load_generator_us <= wall_us * cores + 10_000.0, "{used:?} in {wall_us} µs");
        assert_eq!(used.shop_us, Some(used.load_generator_us));
    }
}
