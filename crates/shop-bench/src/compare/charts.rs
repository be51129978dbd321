//! The SVG charts of `benchmarks.md`, written by hand: the charting crates
//! need a font backend (and a font file at run time) even to place SVG
//! text, and a few series of bars or lines are a few lines of markup.

use std::fmt::Write as _;

use crate::load::Point;

/// Strategy colours in order of appearance (Tableau 10: told apart in
/// print and by most colour-blind readers).
const PALETTE: [&str; 8] = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d"];
const ONE_INSTANCE: &str = "#4c78a8";
const THREE_INSTANCES: &str = "#f58518";

/// One case's throughput over its rounds.
pub struct Bar {
    pub label: String,
    pub instances: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// One case's latency distribution.
pub struct Line {
    pub strategy: String,
    pub instances: usize,
    /// Ends with percentile 100, the maximum.
    pub points: Vec<Point>,
}

/// Horizontal bars of mean throughput, one per case, with the range of its
/// rounds as a whisker.
pub fn bar_chart(bars: &[Bar]) -> String {
    let (bar_height, label_width, chart_width, legend_height) = (18.0, 430.0, 360.0, 24.0);
    let top = bars.iter().map(|bar| bar.max.max(bar.mean)).fold(1.0, f64::max);
    let x = |value: f64| label_width + chart_width * value / top;
    let mut svg = open(label_width + chart_width + 70.0, legend_height + 20.0 + bar_height * bars.len() as f64);
    let legend = [(ONE_INSTANCE, "1 instance"), (THREE_INSTANCES, "3 instances")];
    for (i, (colour, name)) in legend.into_iter().enumerate() {
        let left = label_width + 110.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{left}" y="6" width="12" height="12" fill="{colour}"/><text x="{}" y="16">{name}</text>"#,
            left + 16.0
        );
    }
    let left = label_width + 220.0;
    let _ = write!(
        svg,
        r##"<path d="M{left} 12h18M{left} 7v10M{} 7v10" stroke="#333"/><text x="{}" y="16">range of the rounds</text>"##,
        left + 18.0,
        left + 24.0
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = legend_height + 10.0 + bar_height * i as f64;
        let colour = if bar.instances == 1 { ONE_INSTANCE } else { THREE_INSTANCES };
        let (middle, low, high) = (y + bar_height / 2.0 - 1.0, x(bar.min), x(bar.max));
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{label_width}" y="{}" width="{:.1}" height="{}" fill="{colour}"/><path d="M{low:.1} {middle}H{high:.1}M{low:.1} {}v8M{high:.1} {}v8" stroke="#333"/><text x="{:.1}" y="{}">{:.0}/s</text>"##,
            label_width - 6.0,
            y + 12.0,
            escape(&bar.label),
            y + 2.0,
            x(bar.mean) - label_width,
            bar_height - 4.0,
            middle - 4.0,
            middle - 4.0,
            x(bar.mean).max(high) + 4.0,
            y + 12.0,
            bar.mean
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Where the x axis ends: the percentiles run to 99.99 (4 nines), and the
/// maximum stands apart half a step to the right of them.
const MAX_COLUMN: f64 = 4.5;

/// Latency by percentile, both on log scales, one line per case: a colour
/// per strategy, solid on one instance and dashed on three, the maximum a
/// dot of its own.
pub fn latency_chart(title: &str, lines: &[Line]) -> String {
    let (left, right, top, bottom) = (70.0, 500.0, 40.0, 290.0);
    // The "nines" scale: 90 is one step, 99 two, 99.9 three.
    let nines = |percentile: f64| {
        if percentile >= 100.0 { MAX_COLUMN } else { (100.0 / (100.0 - percentile)).log10() }
    };
    let first = nines(50.0);
    let x = |percentile: f64| left + (nines(percentile) - first) / (MAX_COLUMN - first) * (right - left);
    let all_ms = || lines.iter().flat_map(|line| &line.points).map(|point| point.ms.max(MIN_MS));
    let low = all_ms().fold(f64::INFINITY, f64::min).log10().floor() as i32;
    let high = (all_ms().fold(0.0, f64::max).log10().ceil() as i32).max(low + 1);
    let y = |ms: f64| bottom - (ms.max(MIN_MS).log10() - f64::from(low)) / f64::from(high - low) * (bottom - top);
    let mut svg = open(660.0, 345.0);
    let _ = write!(svg, r#"<text x="{left}" y="22" font-size="13" font-weight="bold">{}</text>"#, escape(title));
    for decade in low..=high {
        let ms = 10f64.powi(decade);
        if decade < high {
            for step in 2..10 {
                let _ = write!(svg, r##"<path d="M{left} {:.1}H{right}" stroke="#eee"/>"##, y(ms * f64::from(step)));
            }
        }
        let _ = write!(
            svg,
            r##"<path d="M{left} {0:.1}H{right}" stroke="#bbb"/><text x="{1}" y="{2:.1}" text-anchor="end">{3}</text>"##,
            y(ms),
            left - 6.0,
            y(ms) + 4.0,
            decade_label(decade)
        );
    }
    for (percentile, label) in
        [(50.0, "50"), (90.0, "90"), (99.0, "99"), (99.9, "99.9"), (99.99, "99.99"), (100.0, "max")]
    {
        let _ = write!(
            svg,
            r##"<path d="M{0:.1} {top}V{bottom}" stroke="#bbb"{1}/><text x="{0:.1}" y="{2}" text-anchor="middle">{label}</text>"##,
            x(percentile),
            if percentile >= 100.0 { r#" stroke-dasharray="2 3""# } else { "" },
            bottom + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile (log scale: each step ten times rarer)</text><text transform="translate(18 {}) rotate(-90)" text-anchor="middle">latency, ms (log scale)</text>"#,
        (left + right) / 2.0,
        bottom + 40.0,
        (top + bottom) / 2.0
    );
    let strategies = strategies_in(lines);
    for line in lines {
        let colour = PALETTE[strategies.iter().position(|s| *s == line.strategy).unwrap_or(0) % PALETTE.len()];
        let (tail, max) = line.points.split_at(line.points.len().saturating_sub(1));
        let path: Vec<String> =
            tail.iter().map(|point| format!("{:.1},{:.1}", x(point.percentile), y(point.ms))).collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{}/>"#,
            path.join(" "),
            if line.instances == 1 { "" } else { r#" stroke-dasharray="6 4""# }
        );
        for point in max {
            let fill = if line.instances == 1 { colour } else { "white" };
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{colour}" stroke-width="2"/>"#,
                x(point.percentile),
                y(point.ms)
            );
        }
    }
    legend(&mut svg, &strategies, right + 24.0, top);
    svg.push_str("</svg>\n");
    svg
}

/// The floor of the latency axis: the histogram records from 1 µs.
const MIN_MS: f64 = 0.001;

/// The strategies of `lines`, in order of appearance.
fn strategies_in(lines: &[Line]) -> Vec<&str> {
    let mut strategies: Vec<&str> = Vec::new();
    for line in lines {
        if !strategies.contains(&line.strategy.as_str()) {
            strategies.push(&line.strategy);
        }
    }
    strategies
}

/// A swatch per strategy, then what solid, dashed and the dot mean.
fn legend(svg: &mut String, strategies: &[&str], left: f64, top: f64) {
    let row = |i: usize| top + 8.0 + 18.0 * i as f64;
    for (i, strategy) in strategies.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<path d="M{left} {0}h24" stroke="{1}" stroke-width="3"/><text x="{2}" y="{3}">{4}</text>"#,
            row(i),
            PALETTE[i % PALETTE.len()],
            left + 30.0,
            row(i) + 4.0,
            escape(strategy)
        );
    }
    let key = strategies.len() + 1;
    let _ = write!(
        svg,
        r##"<path d="M{left} {0}h24" stroke="#333" stroke-width="2"/><text x="{1}" y="{2}">1 instance</text><path d="M{left} {3}h24" stroke="#333" stroke-width="2" stroke-dasharray="6 4"/><text x="{1}" y="{4}">3 instances</text><circle cx="{5}" cy="{6}" r="3.5" fill="#333"/><text x="{1}" y="{7}">maximum</text>"##,
        row(key),
        left + 30.0,
        row(key) + 4.0,
        row(key + 1),
        row(key + 1) + 4.0,
        left + 12.0,
        row(key + 2),
        row(key + 2) + 4.0
    );
}

fn open(width: f64, height: f64) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#
    )
}

/// 10^decade as an axis label: `0.01`, `1`, `1000`.
fn decade_label(decade: i32) -> String {
    if decade >= 0 {
        10u64.pow(decade.unsigned_abs()).to_string()
    } else {
        format!("{:.*}", decade.unsigned_abs() as usize, 10f64.powi(decade))
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(strategy: &str, instances: usize, scale: f64) -> Line {
        let percentiles = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0];
        let points = percentiles
            .iter()
            .enumerate()
            .map(|(i, &percentile)| Point { percentile, ms: scale * 1.6f64.powi(i as i32) })
            .collect();
        Line { strategy: strategy.to_owned(), instances, points }
    }

    #[test]
    fn the_latency_chart_spans_the_decades_of_its_lines() {
        // 0.5 ms at p50 to 0.5 × 1.6⁹ ≈ 34 ms at the maximum: 0.1 to 100 ms.
        let svg = latency_chart("coupon-rush · high <& low>", &[line("atomic", 1, 0.5), line("atomic", 3, 0.6)]);
        for label in [">0.1<", ">1<", ">10<", ">100<", ">99.99<", ">max<", ">atomic<", ">3 instances<"] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(!svg.contains(">1000<") && !svg.contains(">0.01<"));
        assert!(svg.contains("coupon-rush · high &lt;&amp; low>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches(r#"stroke-dasharray="6 4""#).count(), 2, "the 3-instance line and its legend");
        assert_eq!(svg.matches("<circle").count(), 3, "two maxima and the legend's");
    }

    #[test]
    fn each_strategy_keeps_its_colour_on_both_instance_counts() {
        let svg = latency_chart("t", &[line("atomic", 1, 1.0), line("batch", 1, 1.0), line("atomic", 3, 1.0)]);
        let polylines: Vec<&str> = svg.split("<polyline").skip(1).collect();
        let colour = |i: usize| polylines[i].split("stroke=\"").nth(1).and_then(|rest| rest.split('"').next());
        assert_eq!(colour(0), Some(PALETTE[0]));
        assert_eq!(colour(1), Some(PALETTE[1]));
        assert_eq!(colour(2), Some(PALETTE[0]));
    }

    #[test]
    fn the_maximum_is_right_of_the_last_percentile_and_lines_rise_upwards() {
        let svg = latency_chart("t", &[line("atomic", 1, 1.0)]);
        let points = svg.split(r#"points=""#).nth(1).and_then(|rest| rest.split('"').next()).expect("a polyline");
        let xy: Vec<(f64, f64)> = points
            .split(' ')
            .map(|pair| pair.split_once(',').map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap())).unwrap())
            .collect();
        assert!(xy.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 > pair[1].1), "{xy:?}");
        let circle_x: f64 =
            svg.split(r#"<circle cx=""#).nth(1).and_then(|r| r.split('"').next()).unwrap().parse().unwrap();
        assert!(circle_x > xy.last().unwrap().0);
    }

    #[test]
    fn decades_are_labelled_plainly() {
        let labels: Vec<String> = (-3..=3).map(decade_label).collect();
        assert_eq!(labels, ["0.001", "0.01", "0.1", "1", "10", "100", "1000"]);
    }

    #[test]
    fn bars_have_a_legend_and_a_whisker_each() {
        let bar = |instances, mean| Bar {
            label: format!("high · atomic · {instances}×"),
            instances,
            mean,
            min: mean * 0.9,
            max: mean * 1.1,
        };
        let svg = bar_chart(&[bar(1, 1000.0), bar(3, 2000.0)]);
        assert!(svg.contains(">1 instance<") && svg.contains(">range of the rounds<"));
        assert!(svg.contains(">1000/s<") && svg.contains(">2000/s<"));
        assert_eq!(svg.matches(r##"stroke="#333""##).count(), 3, "the legend's whisker and one per bar");
    }
}
