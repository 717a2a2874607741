//! The latency-versus-load curve: one point per bench setting (achieved
//! throughput, created → finished and submit percentiles), saved as JSON
//! and drawn as an SVG with both axes on a log scale. The SVG is written by
//! hand: a few lines and points need no plotting crate, no fonts and no
//! system libraries, and the output is plain text that diffs well.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::Report;

/// One setting's figures on the curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub label: String,
    /// Open-loop submits/s asked for; 0 for the closed-loop point.
    pub rate: f64,
    /// Executions/s end to end (terminal / span).
    pub exec_per_sec: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub submit_p50_ms: f64,
    pub submit_p99_ms: f64,
}

impl Point {
    pub fn from_report(r: &Report) -> Self {
        Self {
            label: r.label.clone(),
            rate: r.rate,
            exec_per_sec: r.e2e.exec_per_sec,
            e2e_p50_ms: r.e2e.p50_ms,
            e2e_p99_ms: r.e2e.p99_ms,
            submit_p50_ms: r.submit.p50_ms,
            submit_p99_ms: r.submit.p99_ms,
        }
    }
}

/// The points in throughput order, open-loop ones first by rate and the
/// closed-loop (saturated) one last.
pub fn points(reports: &[Report]) -> Vec<Point> {
    let mut points: Vec<Point> = reports.iter().map(Point::from_report).collect();
    points.sort_by(|a, b| {
        let key = |p: &Point| if p.rate > 0.0 { p.rate } else { f64::INFINITY };
        key(a).total_cmp(&key(b))
    });
    points
}

/// A Markdown table of the points (the README shows it).
pub fn render_table(points: &[Point]) -> String {
    let mut s = String::from(
        "| load | executions/s | created → finished p50 / p99 | submit p50 / p99 |\n\
         |---|---|---|---|\n",
    );
    for p in points {
        let load = if p.rate > 0.0 {
            format!("paced {:.0}/s", p.rate)
        } else {
            "closed loop (saturated)".into()
        };
        let _ = writeln!(
            s,
            "| {load} | {:.0} | {:.1} / {:.1} ms | {:.2} / {:.2} ms |",
            p.exec_per_sec, p.e2e_p50_ms, p.e2e_p99_ms, p.submit_p50_ms, p.submit_p99_ms
        );
    }
    s
}

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// A log-scale axis over whole decades covering `values`.
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    fn covering(values: impl Iterator<Item = f64>) -> Self {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            (lo, hi) = (1.0, 10.0);
        }
        let lo = lo.log10().floor();
        let hi = hi.log10().ceil().max(lo + 1.0);
        Self { lo, hi }
    }

    /// Position of `v` in 0..=1 along the axis.
    fn frac(&self, v: f64) -> f64 {
        ((v.max(1e-9).log10() - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
    }

    /// Gridlines at 1, 2 and 5 of every decade, with their labels.
    fn ticks(&self) -> Vec<(f64, String)> {
        let mut ticks = Vec::new();
        for d in self.lo as i32..=self.hi as i32 {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powi(d);
                if v.log10() <= self.hi + 1e-9 {
                    ticks.push((v, trim(v)));
                }
            }
        }
        ticks
    }
}

fn trim(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// The series drawn: name, colour, dashed, and the figure they take.
type Series = (&'static str, &'static str, bool, fn(&Point) -> f64);
const SERIES: [Series; 4] = [
    ("e2e p99", "#c0392b", false, |p| p.e2e_p99_ms),
    ("e2e p50", "#e67e22", false, |p| p.e2e_p50_ms),
    ("submit p99", "#2c3e99", true, |p| p.submit_p99_ms),
    ("submit p50", "#3498db", true, |p| p.submit_p50_ms),
];

/// The curve as an SVG: executions/s across, latency (ms) up, both log.
pub fn render_svg(points: &[Point], title: &str) -> String {
    let x = LogAxis::covering(points.iter().map(|p| p.exec_per_sec));
    let y = LogAxis::covering(
        points
            .iter()
            .flat_map(|p| SERIES.iter().map(move |(_, _, _, f)| f(p))),
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |v: f64| LEFT + x.frac(v) * pw;
    let py = |v: f64| TOP + (1.0 - y.frac(v)) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        LEFT + pw / 2.0,
        escape(title)
    );
    for (v, label) in x.ticks() {
        let gx = px(v);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            TOP + ph + 16.0
        );
    }
    for (v, label) in y.ticks() {
        let gy = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            gy + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">executions/s end to end (log)</text>"#,
        LEFT + pw / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency, ms (log)</text>"#,
        TOP + ph / 2.0
    );
    for (i, (name, colour, dashed, f)) in SERIES.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.exec_per_sec), py(f(p))))
            .collect();
        let dash = if *dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for p in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{}: {:.0} exec/s, {name} {:.2} ms</title></circle>"#,
                px(p.exec_per_sec),
                py(f(p)),
                escape(&p.label),
                p.exec_per_sec,
                f(p)
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{name}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
    // Each point's load, under the e2e p99 mark.
    for p in points {
        let load = if p.rate > 0.0 {
            format!("{:.0}/s", p.rate)
        } else {
            "closed".into()
        };
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#555">{load}</text>"##,
            px(p.exec_per_sec),
            py(p.e2e_p99_ms) - 8.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(label: &str, rate: f64, exec_per_sec: f64, p50: f64, p99: f64) -> Report {
        let mut r = Report {
            label: label.into(),
            rate,
            ..Default::default()
        };
        r.e2e.exec_per_sec = exec_per_sec;
        r.e2e.p50_ms = p50;
        r.e2e.p99_ms = p99;
        r.submit.p50_ms = p50 / 4.0;
        r.submit.p99_ms = p99 / 4.0;
        r
    }

    #[test]
    fn points_run_from_the_lowest_rate_to_the_saturated_point() {
        let reports = [
            report("closed", 0.0, 5200.0, 12.0, 30.0),
            report("r1000", 1000.0, 990.0, 2.5, 6.0),
            report("r100", 100.0, 99.0, 2.0, 5.0),
        ];
        let labels: Vec<_> = points(&reports).into_iter().map(|p| p.label).collect();
        assert_eq!(labels, ["r100", "r1000", "closed"]);
        let table = render_table(&points(&reports));
        assert!(
            table.contains("| paced 100/s | 99 | 2.0 / 5.0 ms |"),
            "{table}"
        );
        assert!(
            table.lines().last().unwrap().contains("closed loop"),
            "{table}"
        );
    }

    #[test]
    fn the_svg_places_points_on_log_axes() {
        let reports = [
            report("r100", 100.0, 100.0, 1.0, 10.0),
            report("closed", 0.0, 10_000.0, 100.0, 1000.0),
        ];
        let svg = render_svg(&points(&reports), "a <test>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;test&gt;"));
        // x spans 10^2..10^4 and y 10^-1..10^3 (submit p50 is 0.25 ms):
        // 100 exec/s sits on the left edge, 10,000 on the right one.
        let pw = W - LEFT - RIGHT;
        assert!(svg.contains(&format!(r#"cx="{LEFT:.1}""#)), "{svg}");
        assert!(svg.contains(&format!(r#"cx="{:.1}""#, LEFT + pw)), "{svg}");
        // e2e p99 of 1000 ms is the top of the y axis.
        assert!(svg.contains(&format!(r#"cy="{TOP:.1}""#)), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), SERIES.len());
    }
}
