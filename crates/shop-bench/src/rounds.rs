//! How the rounds of one case become the figures shown, and the noise
//! they carry. `compare` writes these figures and `diff` compares them, so
//! both go through [`summarize`].

use serde::Serialize;

/// The figures of one round that the summary reads.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub throughput: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    /// Mean over the rounds, requests per second.
    pub throughput: f64,
    /// The p99 of the round shown.
    pub p99_ms: f64,
    /// Which round (from 0) the tables show: the one of median throughput,
    /// of an even number the slower middle one (the cautious pick).
    pub shown_round: usize,
    /// Absent with a single round.
    pub noise: Option<Noise>,
}

/// How far the rounds of a case spread: (max − min) / mean, a fraction.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Noise {
    pub throughput_spread: f64,
    pub p99_spread: f64,
}

/// The summary of `rounds`; none without any.
pub fn summarize(rounds: &[Round]) -> Option<Summary> {
    let mut by_throughput: Vec<usize> = (0..rounds.len()).collect();
    by_throughput.sort_by(|&a, &b| rounds[a].throughput.total_cmp(&rounds[b].throughput));
    let shown_round = *by_throughput.get(rounds.len().checked_sub(1)? / 2)?;
    let throughputs: Vec<f64> = rounds.iter().map(|round| round.throughput).collect();
    let p99s: Vec<f64> = rounds.iter().map(|round| round.p99_ms).collect();
    let noise =
        (rounds.len() > 1).then(|| Noise { throughput_spread: spread(&throughputs), p99_spread: spread(&p99s) });
    Some(Summary { throughput: mean(&throughputs), p99_ms: rounds[shown_round].p99_ms, shown_round, noise })
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn spread(values: &[f64]) -> f64 {
    let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), &v| (min.min(v), max.max(v)));
    let mean = mean(values);
    if mean > 0.0 { (max - min) / mean } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(figures: &[(f64, f64)]) -> Vec<Round> {
        figures.iter().map(|&(throughput, p99_ms)| Round { throughput, p99_ms }).collect()
    }

    #[test]
    fn two_rounds_show_the_slower_and_their_mean() {
        let summary = summarize(&rounds(&[(1100.0, 8.0), (900.0, 12.0)])).expect("rounds");
        assert_eq!(summary.throughput, 1000.0);
        assert_eq!((summary.shown_round, summary.p99_ms), (1, 12.0));
        let noise = summary.noise.expect("two rounds");
        assert!((noise.throughput_spread - 0.2).abs() < 1e-9);
        assert!((noise.p99_spread - 0.4).abs() < 1e-9);
    }

    #[test]
    fn three_rounds_show_the_median() {
        let summary = summarize(&rounds(&[(1200.0, 5.0), (900.0, 9.0), (1000.0, 7.0)])).expect("rounds");
        assert_eq!((summary.shown_round, summary.p99_ms), (2, 7.0));
    }

    #[test]
    fn one_round_measures_no_noise_and_none_no_summary() {
        let summary = summarize(&rounds(&[(500.0, 3.0)])).expect("a round");
        assert_eq!((summary.throughput, summary.shown_round), (500.0, 0));
        assert!(summary.noise.is_none());
        assert!(summarize(&[]).is_none());
    }
}
