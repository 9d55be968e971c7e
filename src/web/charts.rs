//! Server-rendered SVG charts for the insights page: no script, no library,
//! readable in any browser and in a printout. Every mark carries a
//! `<title>` with its exact numbers (the browser shows it on hover).

use std::fmt::Write as _;

use crate::domain::fmt_duration_ms;
use crate::insights::{DayOutcomes, DurationSeries, QueueSampleView};
use crate::web::views::GanttBar;

const OK: &str = "#1f8a4c";
const BAD: &str = "#c0392b";
const MUTED: &str = "#9aa3ad";
const RUN: &str = "#1f6fd1";
const WAIT: &str = "#b7791f";

use crate::domain::escape_markup as esc;

/// A round axis maximum at or above `max` (1, 2, 5 × 10^n).
fn nice_max(max: i64) -> i64 {
    let mut step = 1;
    loop {
        for m in [1, 2, 5] {
            if m * step >= max.max(1) {
                return m * step;
            }
        }
        step *= 10;
    }
}

fn open(id: &str, w: u32, h: u32, label: &str) -> String {
    format!(
        r#"<svg id="{id}" class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="11">"#,
        esc(label)
    )
}

/// Scans per day, stacked by outcome.
pub fn outcomes_per_day(days: &[DayOutcomes]) -> String {
    let (w, h, left, bottom, top) = (760.0, 210.0, 40.0, 24.0, 10.0);
    let max = nice_max(
        days.iter()
            .map(|d| d.succeeded + d.failed + d.cancelled)
            .max()
            .unwrap_or(0),
    );
    let plot_h = h - bottom - top;
    let col = (w - left - 4.0) / days.len().max(1) as f64;
    let mut s = open(
        "chart-outcomes",
        w as u32,
        h as u32,
        "scans per day by outcome",
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="#ccd"/><line x1="{left}" y1="{y0}" x2="{w}" y2="{y0}" stroke="#ccd"/><text x="{tx}" y="{ty}" text-anchor="end">{max}</text><text x="{tx}" y="{y0}" text-anchor="end">0</text>"##,
        y0 = h - bottom,
        tx = left - 4.0,
        ty = top + 8.0
    );
    for (i, d) in days.iter().enumerate() {
        let x = left + 2.0 + i as f64 * col;
        let mut y = h - bottom;
        for (n, color, what) in [
            (d.succeeded, OK, "succeeded"),
            (d.failed, BAD, "failed"),
            (d.cancelled, MUTED, "cancelled"),
        ] {
            if n == 0 {
                continue;
            }
            let bh = plot_h * n as f64 / max as f64;
            y -= bh;
            let _ = write!(
                s,
                r#"<rect class="bar-{what}" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bh:.1}" fill="{color}"><title>{}: {n} {what}</title></rect>"#,
                d.date,
                bw = (col - 2.0).max(1.0)
            );
        }
        if i % 5 == 0 || i + 1 == days.len() {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + col / 2.0,
                h - 8.0,
                d.date.get(5..).unwrap_or(&d.date)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Horizontal bars, one per (label, count), most first as given.
pub fn bars(id: &str, label: &str, items: &[(String, i64)], color: &str) -> String {
    let (w, row, left) = (760.0, 22.0, 330.0);
    let h = row * items.len().max(1) as f64 + 6.0;
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let mut s = open(id, w as u32, h as u32, label);
    if items.is_empty() {
        let _ = write!(s, r##"<text x="4" y="16" fill="#6b7380">none</text>"##);
    }
    for (i, (name, n)) in items.iter().enumerate() {
        let y = 3.0 + i as f64 * row;
        let bw = (w - left - 60.0) * *n as f64 / max as f64;
        let shown: String = if name.chars().count() > 46 {
            format!("{}…", name.chars().take(45).collect::<String>())
        } else {
            name.clone()
        };
        let _ = write!(
            s,
            r#"<g><title>{}: {n}</title><text x="{tx}" y="{ty:.1}" text-anchor="end">{}</text><rect x="{left}" y="{y:.1}" width="{bw:.1}" height="{bh}" fill="{color}"/><text x="{nx:.1}" y="{ty:.1}">{n}</text></g>"#,
            esc(name),
            esc(&shown),
            tx = left - 6.0,
            ty = y + 14.0,
            bh = row - 6.0,
            nx = left + bw + 4.0
        );
    }
    s.push_str("</svg>");
    s
}

/// p50 (solid) and p95 (dashed) per week of one duration series.
pub fn sparkline(series: &DurationSeries) -> String {
    let (w, h, pad) = (180.0, 40.0, 3.0);
    let max = series
        .weeks
        .iter()
        .map(|p| p.p95_ms)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = series.weeks.len();
    let x = |i: usize| {
        if n <= 1 {
            w / 2.0
        } else {
            pad + (w - 2.0 * pad) * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: i64| h - pad - (h - 2.0 * pad) * v as f64 / max;
    let points = |f: &dyn Fn(usize) -> i64| {
        (0..n)
            .map(|i| format!("{:.1},{:.1}", x(i), y(f(i))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!(
        r#"<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{} p50 and p95 per week" xmlns="http://www.w3.org/2000/svg">"#,
        esc(&series.key)
    );
    let _ = write!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{RUN}" stroke-width="1.5" stroke-dasharray="3 2"/><polyline points="{}" fill="none" stroke="{OK}" stroke-width="2"/>"#,
        points(&|i| series.weeks[i].p95_ms),
        points(&|i| series.weeks[i].p50_ms)
    );
    for (i, p) in series.weeks.iter().enumerate() {
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{OK}"><title>week of {}: p50 {}, p95 {} ({} runs)</title></circle>"#,
            x(i),
            y(p.p50_ms),
            p.week_start,
            fmt_duration_ms(p.p50_ms),
            fmt_duration_ms(p.p95_ms),
            p.runs
        );
    }
    s.push_str("</svg>");
    s
}

fn state_colour(state: &str) -> &'static str {
    match state {
        "succeeded" => OK,
        "failed" | "interrupted" => BAD,
        "running" => RUN,
        "parked" => WAIT,
        _ => MUTED,
    }
}

/// The job page's timeline: one bar per stage run on the job's time axis
/// (SVG, as the page's CSP allows no inline styles).
pub fn gantt(bars: &[GanttBar], span: &str) -> String {
    let (w, row, left) = (1000.0, 20.0, 150.0);
    let h = row * bars.len() as f64 + 22.0;
    let track = w - left - 8.0;
    let mut s = open("timeline", w as u32, h as u32, "timeline of the stage runs");
    for (i, b) in bars.iter().enumerate() {
        let y = i as f64 * row;
        let label = if b.attempt > 1 {
            format!("{} #{}", b.stage, b.attempt)
        } else {
            b.stage.clone()
        };
        let _ = write!(
            s,
            r##"<g class="gbar state-{state}" data-stage="{stage}"><title>{title}</title><text x="{lx}" y="{ty:.1}" text-anchor="end" fill="#6b7380">{label}</text><rect x="{left}" y="{ry:.1}" width="{track}" height="12" rx="3" fill="#f0f2f5"/><rect x="{bx:.1}" y="{ry:.1}" width="{bw:.1}" height="12" rx="3" fill="{fill}"/></g>"##,
            state = esc(&b.state),
            stage = esc(&b.stage),
            title = esc(&b.label),
            label = esc(&label),
            lx = left - 8.0,
            ty = y + 14.0,
            ry = y + 4.0,
            bx = left + track * b.left_pct / 100.0,
            bw = (track * b.width_pct / 100.0).max(2.0),
            fill = state_colour(&b.state)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{left}" y="{ty:.1}" fill="#6b7380">0</text><text x="{end:.1}" y="{ty:.1}" text-anchor="end" fill="#6b7380">{}</text></svg>"##,
        esc(span),
        ty = h - 4.0,
        end = left + track
    );
    s
}

/// Queued, waiting and running jobs over the sampled span.
pub fn queue(samples: &[QueueSampleView]) -> String {
    let (w, h, left, bottom, top) = (760.0, 170.0, 40.0, 22.0, 10.0);
    let mut s = open(
        "chart-queue",
        w as u32,
        h as u32,
        "queued, waiting and running jobs over time",
    );
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        s.push_str(r##"<text x="4" y="16" fill="#6b7380">no samples yet (the reaper takes one every five minutes)</text></svg>"##);
        return s;
    };
    let max = nice_max(
        samples
            .iter()
            .map(|p| p.queued.max(p.waiting).max(p.running))
            .max()
            .unwrap_or(0),
    ) as f64;
    let span = (last.at_ms - first.at_ms).max(1) as f64;
    let x = |t: i64| left + (w - left - 6.0) * (t - first.at_ms) as f64 / span;
    let y = |v: i64| h - bottom - (h - bottom - top) * v as f64 / max;
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="#ccd"/><line x1="{left}" y1="{y0}" x2="{w}" y2="{y0}" stroke="#ccd"/><text x="{tx}" y="{ty}" text-anchor="end">{max}</text><text x="{tx}" y="{y0}" text-anchor="end">0</text><text x="{left}" y="{lb}">{}</text><text x="{w}" y="{lb}" text-anchor="end">{}</text>"##,
        esc(&first.at),
        esc(&last.at),
        y0 = h - bottom,
        tx = left - 4.0,
        ty = top + 8.0,
        lb = h - 6.0
    );
    for (name, color, f) in [
        (
            "queued",
            RUN,
            (|p: &QueueSampleView| p.queued) as fn(&QueueSampleView) -> i64,
        ),
        ("waiting", WAIT, |p| p.waiting),
        ("running", OK, |p| p.running),
    ] {
        let pts: Vec<String> = samples
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.at_ms), y(f(p))))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="line-{name}" points="{}" fill="none" stroke="{color}" stroke-width="1.5"><title>{name}</title></polyline>"#,
            pts.join(" ")
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(3), 5);
        assert_eq!(nice_max(11), 20);
        assert_eq!(nice_max(5000), 5000);
        assert_eq!(nice_max(5001), 10000);
    }

    #[test]
    fn labels_are_escaped() {
        let s = bars("x", "t", &[("<script>&".into(), 3)], OK);
        assert!(s.contains("&lt;script&gt;&amp;") && !s.contains("<script>"));
    }
}
