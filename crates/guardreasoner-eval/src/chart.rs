//! The F1 chart of a report: grouped bars per benchmark, this run beside the paper's
//! GuardReasoner models and strongest baselines, as a self-contained SVG.

use guardreasoner_core::report::PaperTables;
use guardreasoner_core::score::ScoreReport;
use guardreasoner_core::Task;
use std::fmt::Write as _;

/// The paper's own models, always drawn when the tables have them.
pub const GUARDREASONER_METHODS: [&str; 3] =
    ["GuardReasoner 1B", "GuardReasoner 3B", "GuardReasoner 8B"];

/// Series colours: this run first, then the paper's methods.
const PALETTE: [&str; 8] = [
    "#d62728", "#9ecae1", "#4292c6", "#08519c", "#74c476", "#fd8d3c", "#9467bd", "#8c564b",
];

/// The `count` strongest baselines (not GuardReasoner): highest mean of the three tasks'
/// weighted averages, among methods with all three. Ties go to the name that sorts first.
pub fn strongest_baselines(tables: &PaperTables, count: usize) -> Vec<String> {
    let mut methods: Vec<&String> = tables.tables.values().flat_map(|t| t.keys()).collect();
    methods.sort();
    methods.dedup();
    let mut scored: Vec<(f64, &String)> = methods
        .into_iter()
        .filter(|m| !m.starts_with("GuardReasoner"))
        .filter_map(|m| {
            let avgs: Option<Vec<f64>> = Task::ALL
                .iter()
                .map(|&t| tables.f1(t, m, "WeightedAvg"))
                .collect();
            avgs.map(|a| (a.iter().sum::<f64>() / a.len() as f64, m))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(count)
        .map(|(_, m)| m.clone())
        .collect()
}

/// One series of bars.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// One value per group (`None`: no bar).
    pub values: Vec<Option<f64>>,
}

/// The chart's data: groups (benchmark and task) and series.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartData {
    /// `(benchmark, task)` per group.
    pub groups: Vec<(String, Task)>,
    pub series: Vec<Series>,
}

/// The groups are the scored benchmarks of `report`; the series are this run (`label`), then
/// GuardReasoner 1B/3B/8B and the two strongest baselines from `tables`.
pub fn chart_data(report: &ScoreReport, label: &str, tables: Option<&PaperTables>) -> ChartData {
    let scored: Vec<_> = report.benchmarks.iter().filter_map(|e| e.score()).collect();
    let groups: Vec<(String, Task)> = scored
        .iter()
        .map(|s| (s.benchmark.clone(), s.task))
        .collect();
    let mut series = vec![Series {
        name: label.to_string(),
        values: scored.iter().map(|s| Some(s.f1)).collect(),
    }];
    if let Some(tables) = tables {
        let mut methods: Vec<String> = GUARDREASONER_METHODS
            .iter()
            .filter(|m| tables.has_method(m))
            .map(|m| m.to_string())
            .collect();
        methods.extend(strongest_baselines(tables, 2));
        for method in methods {
            series.push(Series {
                values: groups
                    .iter()
                    .map(|(name, task)| tables.f1(*task, &method, name))
                    .collect(),
                name: format!("{method} (paper)"),
            });
        }
    }
    ChartData { groups, series }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

// Layout, in SVG user units.
const BAR: f64 = 11.0;
const GROUP_GAP: f64 = 18.0;
const LEFT_MIN: f64 = 64.0;
/// Rough width of one character at the label font size, for margins.
const CHAR_WIDTH: f64 = 6.2;
const RIGHT: f64 = 24.0;
const TOP: f64 = 54.0;
const PLOT_HEIGHT: f64 = 300.0;
const BOTTOM: f64 = 120.0;
const LEGEND_ROW: f64 = 18.0;

/// Render grouped bars of F1 (0 to 100) with axes, grid, labels and a legend.
pub fn render_svg(data: &ChartData, title: &str) -> String {
    let groups = data.groups.len().max(1) as f64;
    let group_width = data.series.len().max(1) as f64 * BAR + GROUP_GAP;
    // The first rotated x label reaches left of its group: widen the margin to fit it.
    let first_label = data.groups.first().map_or(0, |(name, task)| {
        name.chars().count() + task.to_string().len() + 3
    });
    let reach = first_label as f64 * CHAR_WIDTH * 35f64.to_radians().cos();
    let left = LEFT_MIN.max(reach - group_width / 2.0 + 8.0);
    let plot_width = (groups * group_width).max(320.0);
    // Legend: one row per series under the title.
    let top = TOP + data.series.len() as f64 * LEGEND_ROW;
    let width = left + plot_width + RIGHT;
    let height = top + PLOT_HEIGHT + BOTTOM;
    let y = |v: f64| top + PLOT_HEIGHT * (1.0 - v.clamp(0.0, 100.0) / 100.0);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="Helvetica, Arial, sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="22" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    // Legend.
    for (i, series) in data.series.iter().enumerate() {
        let ly = TOP - 14.0 + i as f64 * LEGEND_ROW;
        let _ = writeln!(
            svg,
            r#"<rect x="{left:.1}" y="{ly:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            PALETTE[i % PALETTE.len()],
            left + 17.0,
            ly + 10.0,
            escape(&series.name)
        );
    }
    // Grid and y axis.
    for tick in (0..=100).step_by(20) {
        let ty = y(tick as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{left:.1}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick}</text>"##,
            left + plot_width,
            left - 6.0,
            ty + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" font-size="12">F1 (%)</text>"#,
        top + PLOT_HEIGHT / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{left:.1}" y1="{top:.1}" x2="{left:.1}" y2="{:.1}" stroke="black"/><line x1="{left:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        top + PLOT_HEIGHT,
        top + PLOT_HEIGHT,
        left + plot_width,
        top + PLOT_HEIGHT
    );
    // Bars and x labels.
    for (g, (name, task)) in data.groups.iter().enumerate() {
        let x0 = left + g as f64 * group_width + GROUP_GAP / 2.0;
        for (i, s) in data.series.iter().enumerate() {
            let Some(v) = s.values.get(g).copied().flatten() else {
                continue;
            };
            let top_y = y(v);
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{top_y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {} ({task}) F1 {v:.2}</title></rect>"#,
                x0 + i as f64 * BAR,
                BAR - 1.0,
                (y(0.0) - top_y).max(0.0),
                PALETTE[i % PALETTE.len()],
                escape(&s.name),
                escape(name)
            );
            if i == 0 {
                // This run's value in figures: a bar of height 0 would show nothing.
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{v:.0}</text>"#,
                    x0 + BAR / 2.0,
                    top_y - 3.0
                );
            }
        }
        let cx = x0 + data.series.len() as f64 * BAR / 2.0;
        let ly = top + PLOT_HEIGHT + 14.0;
        let _ = writeln!(
            svg,
            r#"<text transform="translate({cx:.1} {ly:.1}) rotate(-35)" text-anchor="end">{} ({task})</text>"#,
            escape(name)
        );
    }
    if data.groups.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no benchmark was scored</text>"#,
            left + plot_width / 2.0,
            top + PLOT_HEIGHT / 2.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_scaled_and_text_escaped() {
        let data = ChartData {
            groups: vec![("A&B".into(), Task::Prompt), ("C".into(), Task::Refusal)],
            series: vec![
                Series {
                    name: "run <1>".into(),
                    values: vec![Some(50.0), Some(100.0)],
                },
                Series {
                    name: "paper".into(),
                    values: vec![None, Some(0.0)],
                },
            ],
        };
        let svg = render_svg(&data, "F1");
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("A&amp;B") && svg.contains("run &lt;1&gt;"));
        assert!(!svg.contains("A&B"));
        // Three bars (one value is missing), each with its value in a tooltip.
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("F1 50.00") && svg.contains("F1 100.00"));
        // A 50 bar is half the plot height; a 100 bar the full height.
        assert!(svg.contains(&format!(r#"height="{:.1}""#, PLOT_HEIGHT / 2.0)));
        assert!(svg.contains(&format!(r#"height="{PLOT_HEIGHT:.1}""#)));
    }
}
