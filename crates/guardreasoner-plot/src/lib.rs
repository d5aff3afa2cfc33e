//! The toolkit's charts, drawn through plotters, each written as SVG (for docs and diffs) and
//! PNG (for viewers that show no SVG). Two kinds cover every picture we draw:
//! - [`LineChart`]: training loss per step, precision-recall curves, reliability diagrams (with
//!   the diagonal of perfect calibration), F1 against generated tokens;
//! - [`BarChart`]: F1 per benchmark, this run beside the paper's models (horizontal bars, so
//!   benchmark names stay readable).
//!
//! Text is laid out and rasterised with an embedded DejaVu Sans (`fonts/`, its licence beside
//! it), so a machine without fonts draws the same PNG as a desktop.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Series colours, in order: this run first, then the comparisons.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x9e, 0xca, 0xe1),
    RGBColor(0x42, 0x92, 0xc6),
    RGBColor(0x08, 0x51, 0x9c),
    RGBColor(0x74, 0xc4, 0x76),
    RGBColor(0xfd, 0x8d, 0x3c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing the chart {title:?}: {message}")]
    Draw { title: String, message: String },
    #[error("the chart {title:?} has nothing to draw: {why}")]
    Empty { title: String, why: &'static str },
    #[error("encoding the PNG of {title:?}: {source}")]
    Png {
        title: String,
        #[source]
        source: png::EncodingError,
    },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a dot at every point (few points, each meaningful: reliability bins, bands).
    pub markers: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Axis ranges; `None` fits the data.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub lines: Vec<Line>,
    /// Draw the grey y = x reference (perfect calibration).
    pub diagonal: bool,
}

/// One series of a [`BarChart`]: a value per group (`None`: no bar).
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub value_label: String,
    /// One name per group, drawn top to bottom.
    pub groups: Vec<String>,
    pub series: Vec<Bars>,
    /// The value axis runs from 0 to this.
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    Line(LineChart),
    Bar(BarChart),
}

impl From<LineChart> for Chart {
    fn from(c: LineChart) -> Self {
        Chart::Line(c)
    }
}

impl From<BarChart> for Chart {
    fn from(c: BarChart) -> Self {
        Chart::Bar(c)
    }
}

impl Chart {
    pub fn title(&self) -> &str {
        match self {
            Chart::Line(c) => &c.title,
            Chart::Bar(c) => &c.title,
        }
    }

    /// Width and height in pixels.
    pub fn size(&self) -> (u32, u32) {
        match self {
            Chart::Line(_) => (800, 500),
            Chart::Bar(c) => {
                let rows = c.groups.len() * (c.series.len() + 1);
                (900, (120 + 14 * rows as u32).max(300))
            }
        }
    }

    pub fn svg(&self) -> Result<String, PlotError> {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, self.size()).into_drawing_area();
            self.draw(&root)?;
        }
        Ok(out)
    }

    pub fn png(&self) -> Result<Vec<u8>, PlotError> {
        let (w, h) = self.size();
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root)?;
        }
        let png_error = |source| PlotError::Png {
            title: self.title().to_string(),
            source,
        };
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Best);
        let mut writer = encoder.write_header().map_err(png_error)?;
        writer.write_image_data(&rgb).map_err(png_error)?;
        writer.finish().map_err(png_error)?;
        Ok(bytes)
    }

    /// Writes `<stem>.svg` and `<stem>.png`; returns both paths.
    pub fn write(&self, stem: &Path) -> Result<Vec<PathBuf>, PlotError> {
        let svg = stem.with_extension("svg");
        let png = stem.with_extension("png");
        for (path, bytes) in [(&svg, self.svg()?.into_bytes()), (&png, self.png()?)] {
            std::fs::write(path, bytes).map_err(|source| PlotError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(vec![svg, png])
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        register_font();
        let draw_error = |e: &dyn std::fmt::Display| PlotError::Draw {
            title: self.title().to_string(),
            message: e.to_string(),
        };
        let result = match self {
            Chart::Line(c) => draw_lines(c, root),
            Chart::Bar(c) => draw_bars(c, root),
        };
        match result {
            Ok(Ok(())) => root.present().map_err(|e| draw_error(&e)),
            Ok(Err(e)) => Err(draw_error(&e)),
            Err(e) => Err(e),
        }
    }
}

fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The font is compiled in and known to parse; a failure here is a build defect.
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
            .unwrap_or_else(|_| panic!("the embedded font does not parse"));
    });
}

type Drawn<DB> =
    Result<Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>, PlotError>;

fn empty(title: &str, why: &'static str) -> PlotError {
    PlotError::Empty {
        title: title.to_string(),
        why,
    }
}

/// A tick value as people write it: `20`, not `20.0`; `0.25`, not `0.250`; never `-0`.
fn tick_label(v: f64) -> String {
    let v = if v.abs() < 5e-4 { 0.0 } else { v };
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `(lo, hi)` of the values, widened where they are one point.
fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    Some((lo - pad, hi + pad))
}

fn draw_lines<DB: DrawingBackend>(c: &LineChart, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    let points = || c.lines.iter().flat_map(|l| l.points.iter());
    let x = c
        .x_range
        .or_else(|| span(points().map(|p| p.0)))
        .ok_or_else(|| empty(&c.title, "no finite points"))?;
    let y = c
        .y_range
        .or_else(|| span(points().map(|p| p.1)))
        .ok_or_else(|| empty(&c.title, "no finite points"))?;
    Ok((|| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(&c.title, (FONT, 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
        chart
            .configure_mesh()
            .x_desc(&c.x_label)
            .y_desc(&c.y_label)
            .x_label_formatter(&|v| tick_label(*v))
            .y_label_formatter(&|v| tick_label(*v))
            .label_style((FONT, 13))
            .max_light_lines(1)
            .draw()?;
        if c.diagonal {
            let (lo, hi) = (x.0.max(y.0), x.1.min(y.1));
            chart.draw_series(LineSeries::new(
                [(lo, lo), (hi, hi)],
                ShapeStyle::from(&RGBColor(0x99, 0x99, 0x99)).stroke_width(1),
            ))?;
        }
        for (i, line) in c.lines.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let finite = line
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite());
            chart
                .draw_series(LineSeries::new(finite.clone(), colour.stroke_width(2)))?
                .label(&line.name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            if line.markers {
                chart.draw_series(finite.map(|p| Circle::new(p, 4, colour.filled())))?;
            }
        }
        if c.lines.len() > 1 || c.diagonal {
            chart
                .configure_series_labels()
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(0xbb, 0xbb, 0xbb))
                .position(SeriesLabelPosition::LowerRight)
                .draw()?;
        }
        Ok(())
    })())
}

fn draw_bars<DB: DrawingBackend>(c: &BarChart, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    if c.groups.is_empty() || c.series.is_empty() {
        return Err(empty(&c.title, "no groups or no series"));
    }
    // Each group takes one row per series and a blank row; the first group's rows are at the
    // top (rows count from the bottom of the axis, so row r is drawn at `rows - 1 - r`).
    let per_group = c.series.len() as i32 + 1;
    let rows = c.groups.len() as i32 * per_group;
    Ok((|| {
        root.fill(&WHITE)?;
        // The legend gets a column of its own: over the bars it would hide the last group.
        let (plot, legend) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 210);
        let mut chart = ChartBuilder::on(&plot)
            .caption(&c.title, (FONT, 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(200)
            .build_cartesian_2d(0.0..c.max, 0..rows)?;
        // Label each group once, at the tick `half` bars below its top (a tick is a bar's
        // lower edge, so that is the group's middle).
        let half = (c.series.len() as i32 + 1) / 2;
        let name_of = |y: &i32| -> String {
            let top = rows - y - half;
            if top >= 0 && top % per_group == 0 {
                c.groups
                    .get((top / per_group) as usize)
                    .cloned()
                    .unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows as usize + 1)
            .y_label_formatter(&name_of)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc(&c.value_label)
            .label_style((FONT, 13))
            .x_max_light_lines(1)
            .draw()?;
        for (s, series) in c.series.iter().enumerate() {
            let colour = PALETTE[s % PALETTE.len()];
            let bars = series.values.iter().enumerate().filter_map(|(g, v)| {
                let v = (*v)?.clamp(0.0, c.max);
                let y = rows - 1 - (g as i32 * per_group + s as i32);
                Some(Rectangle::new([(0.0, y), (v, y + 1)], colour.filled()))
            });
            chart.draw_series(bars)?;
        }
        for (s, series) in c.series.iter().enumerate() {
            let colour = PALETTE[s % PALETTE.len()];
            let y = 60 + 22 * s as i32;
            legend.draw(&Rectangle::new([(8, y), (22, y + 12)], colour.filled()))?;
            legend.draw(&Text::new(series.name.as_str(), (30, y - 1), (FONT, 13)))?;
        }
        Ok(())
    })())
}

#[cfg(test)]
mod tests {
    use super::tick_label;

    #[test]
    fn tick_labels_drop_what_adds_nothing() {
        assert_eq!(tick_label(20.0), "20");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(0.1), "0.1");
        assert_eq!(tick_label(-0.0), "0");
        assert_eq!(tick_label(-0.0001), "0");
        assert_eq!(tick_label(-1.5), "-1.5");
        assert_eq!(tick_label(1200.0), "1200");
    }
}
