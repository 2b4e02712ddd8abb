//! The anatomy figures: box summaries of within-layer percentiles (Fig. 3), per-layer quantile
//! lines across seeds (Fig. 6a/b), scatters with universal neurons highlighted (Fig. 9, the
//! entropy-neuron candidates) and grouped bars (families). Each draws on any plotters backend.

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::prelude::*;

use crate::{BLUE, Draw, GREY, GRID, ORANGE, ReportError, err};
use seedscope_analysis::stats::quantile;

/// A chart's grid with one named segment per category on x (`labels[i]` under the i-th).
fn labelled_mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<SegmentedCoord<RangedCoordusize>, RangedCoordf64>>,
    labels: &[String],
    y_desc: &str,
) -> Result<(), ReportError> {
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(GRID)
        .x_labels(labels.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(y_desc)
        .draw()
        .map_err(err)
}

/// Fig. 3: for each statistic, the distribution of universal neurons' within-layer percentiles
/// as a box (25–75 %), whiskers (5–95 %), median line and the points themselves; the dashed
/// line at 50 is what neurons picked at random would give.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles<'a> {
    /// Title.
    pub title: &'a str,
    /// Per statistic, the universal neurons' percentiles.
    pub stats: &'a [(&'a str, Vec<f64>)],
}

impl Draw for Percentiles<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), ReportError> {
        let Self { title, stats } = *self;
        root.fill(&WHITE).map_err(err)?;
        let n = stats.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(48)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..100.0)
            .map_err(err)?;
        let names: Vec<String> = stats.iter().map(|s| s.0.to_string()).collect();
        labelled_mesh(&mut chart, &names, "percentile within the layer")?;
        chart
            .draw_series(DashedLineSeries::new(
                [
                    (SegmentValue::Exact(0), 50.0),
                    (SegmentValue::Exact(n), 50.0),
                ],
                6,
                4,
                GREY.stroke_width(1),
            ))
            .map_err(err)?;
        for (i, (_, v)) in stats.iter().enumerate() {
            let q = |p: f64| quantile(v, p);
            if !q(0.5).is_finite() {
                continue;
            }
            // Boxes in the middle 60 % of the segment, drawn in pixels.
            let c = chart.as_coord_spec().clone();
            let px = |f: f64, y: f64| {
                let a = c.translate(&(SegmentValue::Exact(i), y));
                let b = c.translate(&(SegmentValue::Exact(i + 1), y));
                (a.0 + ((b.0 - a.0) as f64 * f) as i32, a.1)
            };
            let area = chart.plotting_area().strip_coord_spec();
            let (off_x, off_y) = chart.plotting_area().get_base_pixel();
            let shift = |(x, y): (i32, i32)| (x - off_x, y - off_y);
            area.draw(&Rectangle::new(
                [shift(px(0.2, q(0.75))), shift(px(0.8, q(0.25)))],
                ORANGE.mix(0.35).filled(),
            ))
            .map_err(err)?;
            area.draw(&Rectangle::new(
                [shift(px(0.2, q(0.75))), shift(px(0.8, q(0.25)))],
                ORANGE.stroke_width(1),
            ))
            .map_err(err)?;
            for (a, b) in [(q(0.05), q(0.25)), (q(0.75), q(0.95))] {
                area.draw(&PathElement::new(
                    vec![shift(px(0.5, a)), shift(px(0.5, b))],
                    BLACK.stroke_width(1),
                ))
                .map_err(err)?;
            }
            area.draw(&PathElement::new(
                vec![shift(px(0.2, q(0.5))), shift(px(0.8, q(0.5)))],
                BLACK.stroke_width(2),
            ))
            .map_err(err)?;
            for (j, y) in v.iter().enumerate().filter(|(_, y)| y.is_finite()) {
                // Spread the points a little across the box so that ties stay visible.
                let f = 0.3 + 0.4 * ((j * 7919) % 97) as f64 / 96.0;
                area.draw(&Circle::new(shift(px(f, *y)), 2, BLUE.mix(0.7).filled()))
                    .map_err(err)?;
            }
            area.draw(&Text::new(
                format!("n={}", v.iter().filter(|y| y.is_finite()).count()),
                shift(px(0.3, 4.0)),
                ("sans-serif", 11).into_font().color(&BLACK),
            ))
            .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

/// Fig. 6a/b: per layer, the quantiles {5, 10, 50, 90, 95 %} of a statistic; each line is the
/// mean over seeds, the band spans the seeds' minimum to maximum. `per_seed[s][layer]` holds the
/// values of seed `s`'s neurons in that layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerQuantiles<'a> {
    /// Title.
    pub title: &'a str,
    /// The statistic's name on the y axis.
    pub y_desc: &'a str,
    /// `per_seed[s][layer]`: seed `s`'s values in that layer.
    pub per_seed: &'a [Vec<Vec<f64>>],
    /// A logarithmic y axis.
    pub log_y: bool,
}

impl Draw for LayerQuantiles<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), ReportError> {
        let Self {
            title,
            y_desc,
            per_seed,
            log_y,
        } = *self;
        root.fill(&WHITE).map_err(err)?;
        let n_layers = per_seed.iter().map(Vec::len).max().unwrap_or(0);
        const QS: [(f64, RGBColor); 5] = [
            (0.05, RGBColor(60, 90, 170)),
            (0.10, RGBColor(90, 150, 220)),
            (0.50, RGBColor(40, 40, 40)),
            (0.90, RGBColor(230, 120, 60)),
            (0.95, RGBColor(190, 60, 40)),
        ];
        // quantile -> layer -> (mean, min, max) over seeds
        let lines: Vec<Vec<(f64, f64, f64)>> = QS
            .iter()
            .map(|(q, _)| {
                (0..n_layers)
                    .map(|l| {
                        let v: Vec<f64> = per_seed
                            .iter()
                            .filter_map(|s| s.get(l))
                            .map(|x| quantile(x, *q))
                            .filter(|x| x.is_finite())
                            .collect();
                        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
                        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        (mean, lo, hi)
                    })
                    .collect()
            })
            .collect();
        let all: Vec<f64> = lines
            .iter()
            .flatten()
            .flat_map(|t| [t.1, t.2])
            .filter(|x| x.is_finite())
            .collect();
        let (mut lo, mut hi) = (
            all.iter().copied().fold(f64::INFINITY, f64::min),
            all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        let pad = (hi - lo).abs().max(1e-9) * 0.08;
        let x_range = -0.3..(n_layers.max(1) as f64 - 0.7);
        let caption = format!(
            "{title} ({} seed{})",
            per_seed.len(),
            if per_seed.len() == 1 { "" } else { "s" }
        );
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .light_line_style(WHITE)
                    .bold_line_style(GRID)
                    .x_labels(n_layers.max(1))
                    .x_label_formatter(&|v| format!("L{:.0}", v))
                    .x_desc("layer")
                    .y_desc(y_desc)
                    .y_label_formatter(&|v| format!("{v:.2}"))
                    .draw()
                    .map_err(err)?;
                for ((q, color), line) in QS.iter().zip(&lines) {
                    if per_seed.len() > 1 {
                        let mut band: Vec<(f64, f64)> = line
                            .iter()
                            .enumerate()
                            .map(|(l, t)| (l as f64, t.2))
                            .collect();
                        band.extend(line.iter().enumerate().rev().map(|(l, t)| (l as f64, t.1)));
                        chart
                            .draw_series(std::iter::once(Polygon::new(
                                band,
                                color.mix(0.2).filled(),
                            )))
                            .map_err(err)?;
                    }
                    chart
                        .draw_series(LineSeries::new(
                            line.iter().enumerate().map(|(l, t)| (l as f64, t.0)),
                            color.stroke_width(2),
                        ))
                        .map_err(err)?
                        .label(format!("{:.0} %", q * 100.0))
                        .legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                        });
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(err)?;
            }};
        }
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56);
        // A log axis only where the values span decades (kurtosis in real models: 3 to hundreds).
        if log_y && lo > 0.0 && hi / lo > 20.0 {
            body!(
                builder
                    .build_cartesian_2d(x_range, (lo / 1.3..hi * 1.3).log_scale())
                    .map_err(err)?
            );
        } else {
            body!(
                builder
                    .build_cartesian_2d(x_range, lo - pad..hi + pad)
                    .map_err(err)?
            );
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

/// One point of a scatter: `(x, y, highlighted)`.
pub type Point = (f64, f64, bool);

/// What the points of a scatter are: their plural (`"neurons"`) and, for a legend, the names of
/// the plain and the highlighted points.
#[derive(Debug, Clone, Copy)]
pub struct ScatterLabels<'a> {
    /// The points' plural, in the title's count.
    pub unit: &'a str,
    /// Legend names of plain and highlighted points (no legend: `None`).
    pub legend: Option<(&'a str, &'a str)>,
}

impl ScatterLabels<'_> {
    /// Neurons, universal ones highlighted.
    pub const NEURONS: ScatterLabels<'static> = ScatterLabels {
        unit: "neurons",
        legend: Some(("other neurons", "universal")),
    };
}

/// A scatter of all points (small blue) with the highlighted ones (large orange) on top;
/// non-finite points are left out. The title gets the Pearson correlation and the count.
#[derive(Debug, Clone, Copy)]
pub struct Scatter<'a> {
    /// Title (the Pearson correlation and the count are added).
    pub title: &'a str,
    /// x axis.
    pub x_desc: &'a str,
    /// y axis.
    pub y_desc: &'a str,
    /// The points.
    pub points: &'a [Point],
    /// What the points are.
    pub labels: ScatterLabels<'a>,
}

impl Draw for Scatter<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), ReportError> {
        let Self {
            title,
            x_desc,
            y_desc,
            points,
            labels,
        } = *self;
        root.fill(&WHITE).map_err(err)?;
        let pts: Vec<Point> = points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        let range = |f: fn(&Point) -> f64| padded_range(pts.iter().map(f), 0.05);
        let r = pearson(&pts);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{title} (r = {r:.2}, {} {})", pts.len(), labels.unit),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(range(|p| p.0), range(|p| p.1))
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| !p.2)
                    .map(|p| Circle::new((p.0, p.1), 2, BLUE.mix(0.5).filled())),
            )
            .map_err(err)?
            .label(labels.legend.map_or("", |l| l.0))
            .legend(|(x, y)| Circle::new((x + 5, y), 3, BLUE.filled()));
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| p.2)
                    .map(|p| Circle::new((p.0, p.1), 4, ORANGE.filled())),
            )
            .map_err(err)?
            .label(labels.legend.map_or("", |l| l.1))
            .legend(|(x, y)| Circle::new((x + 5, y), 4, ORANGE.filled()));
        if labels.legend.is_some() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

/// Pearson correlation of the points' coordinates (NaN with fewer than two).
fn pearson(p: &[Point]) -> f64 {
    let (x, y): (Vec<f64>, Vec<f64>) = p.iter().map(|q| (q.0, q.1)).unzip();
    seedscope_analysis::stats::pearson(&x, &y)
}

/// Grouped bars: for each label, one bar per series (`values[label][series]`).
#[derive(Debug, Clone, Copy)]
pub struct Bars<'a> {
    /// Title.
    pub title: &'a str,
    /// y axis.
    pub y_desc: &'a str,
    /// One group of bars per label.
    pub labels: &'a [String],
    /// The bars of a group.
    pub series: &'a [&'a str],
    /// `values[label][series]`.
    pub values: &'a [Vec<f64>],
}

impl Draw for Bars<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), ReportError> {
        let Self {
            title,
            y_desc,
            labels,
            series,
            values,
        } = *self;
        root.fill(&WHITE).map_err(err)?;
        let n = labels.len().max(1);
        // Head room above the tallest bar: 15 %, or more where the legend (top right, one line
        // per series) would reach it.
        let legend = (18 * series.len() + 4) as f64 / (root.dim_in_pixel().1 as f64 - 90.0);
        let ymax = values
            .iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * (1.0 / (1.0 - legend.min(0.6))).max(1.15);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..ymax)
            .map_err(err)?;
        labelled_mesh(&mut chart, labels, y_desc)?;
        let colors = [
            BLUE,
            ORANGE,
            GREY,
            RGBColor(40, 150, 80),
            RGBColor(170, 60, 160),
            RGBColor(200, 170, 40),
            RGBColor(60, 60, 60),
            RGBColor(40, 170, 180),
        ];
        let k = series.len().max(1);
        let c = chart.as_coord_spec().clone();
        let (off_x, off_y) = chart.plotting_area().get_base_pixel();
        let area = chart.plotting_area().strip_coord_spec();
        for (i, row) in values.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let a = c.translate(&(SegmentValue::Exact(i), 0.0));
                let b = c.translate(&(SegmentValue::Exact(i + 1), v));
                let w = (b.0 - a.0) as f64 * 0.8 / k as f64;
                let x0 = a.0 as f64 + (b.0 - a.0) as f64 * 0.1 + w * j as f64;
                area.draw(&Rectangle::new(
                    [
                        (x0 as i32 - off_x, b.1 - off_y),
                        ((x0 + w) as i32 - 1 - off_x, a.1 - off_y),
                    ],
                    colors[j % colors.len()].filled(),
                ))
                .map_err(err)?;
            }
        }
        let lx = area.dim_in_pixel().0 as i32 - 170;
        for (j, name) in series.iter().enumerate() {
            area.draw(&Rectangle::new(
                [(lx, 10 + 18 * j as i32), (lx + 12, 22 + 18 * j as i32)],
                colors[j % colors.len()].filled(),
            ))
            .map_err(err)?;
            area.draw(&Text::new(
                name.to_string(),
                (lx + 18, 10 + 18 * j as i32),
                ("sans-serif", 13).into_font().color(&BLACK),
            ))
            .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

/// One line of a panel of [`Curves`].
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend label (empty: no legend entry).
    pub label: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// A baseline line (thin grey) rather than a target (coloured).
    pub baseline: bool,
}

/// Panels side by side (2 per row): in each, the targets' curves in colour, the baselines in
/// grey and the nominal value as a dashed line; `panels[i] = (title, y label, nominal, curves)`.
#[derive(Debug, Clone, Copy)]
pub struct Curves<'a> {
    /// Title.
    pub title: &'a str,
    /// x axis.
    pub x_desc: &'a str,
    /// Names of the x positions 0, 1, 2, … (the steps of a series) printed in place of numbers;
    /// empty: a numeric axis.
    pub x_ticks: &'a [String],
    /// `(title, y label, nominal, curves)` per panel.
    pub panels: &'a [(String, String, f64, Vec<Curve>)],
    /// The legend of the nominal value's dashed line.
    pub nominal_label: &'a str,
    /// The legend of the grey (baseline) curves.
    pub baseline_label: &'a str,
}

impl Draw for Curves<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), ReportError> {
        let Self {
            title,
            x_desc,
            x_ticks,
            panels,
            nominal_label,
            baseline_label,
        } = *self;
        // Named positions: a name at each whole number, nothing between.
        let tick = |v: &f64| {
            let k = v.round();
            match (k >= 0.0 && (v - k).abs() < 1e-6).then(|| x_ticks.get(k as usize)) {
                Some(Some(name)) => name.clone(),
                _ => String::new(),
            }
        };
        root.fill(&WHITE).map_err(err)?;
        let (top, body) = root.split_vertically(30);
        top.titled(title, ("sans-serif", 16)).map_err(err)?;
        let rows = panels.len().div_ceil(2).max(1);
        let areas = body.split_evenly((rows, 2));
        const COLORS: [RGBColor; 4] = [
            RGBColor(230, 120, 60),
            RGBColor(60, 110, 200),
            RGBColor(40, 150, 80),
            RGBColor(170, 60, 160),
        ];
        for ((name, y_desc, nominal, curves), area) in panels.iter().zip(&areas) {
            let pts = curves.iter().flat_map(|c| c.points.iter());
            let xs: Vec<f64> = pts.clone().map(|p| p.0).filter(|v| v.is_finite()).collect();
            let ys: Vec<f64> = pts
                .map(|p| p.1)
                .chain(std::iter::once(*nominal))
                .filter(|v| v.is_finite())
                .collect();
            let span = |v: &[f64]| padded_range(v.iter().copied(), 0.06);
            let xr = span(&xs);
            // A flat panel (nothing changes) gets a unit range around its value.
            let yr = span(&ys);
            let yr = if yr.end - yr.start < 1e-6 {
                yr.start - 1.0..yr.end + 1.0
            } else {
                yr
            };
            let mut chart = ChartBuilder::on(area)
                .caption(name, ("sans-serif", 14))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(xr.clone(), yr)
                .map_err(err)?;
            let mut mesh = chart.configure_mesh();
            mesh.light_line_style(WHITE)
                .bold_line_style(GRID)
                .x_desc(x_desc)
                .y_desc(y_desc.as_str())
                .y_label_formatter(&|v| format!("{v:.3}"));
            if !x_ticks.is_empty() {
                mesh.x_labels(4 * x_ticks.len()).x_label_formatter(&tick);
            }
            mesh.draw().map_err(err)?;
            for c in curves.iter().filter(|c| c.baseline) {
                chart
                    .draw_series(LineSeries::new(
                        c.points.clone(),
                        GREY.mix(0.6).stroke_width(1),
                    ))
                    .map_err(err)?;
            }
            if nominal.is_finite() {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(xr.start, *nominal), (xr.end, *nominal)],
                        6,
                        4,
                        BLACK.stroke_width(1),
                    ))
                    .map_err(err)?
                    .label(nominal_label)
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK));
            }
            if curves.iter().any(|c| c.baseline) {
                // A legend entry for the grey lines.
                chart
                    .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                    .map_err(err)?
                    .label(baseline_label)
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], GREY));
            }
            for (k, c) in curves.iter().filter(|c| !c.baseline).enumerate() {
                let color = COLORS[k % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(c.points.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(c.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(c.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

/// The span of the finite `values` widened by `frac` of its width at each end (`0..1` when
/// there are none), for a chart axis.
fn padded_range(values: impl Iterator<Item = f64>, frac: f64) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo.is_finite() {
        let pad = (hi - lo).max(1e-9) * frac;
        lo - pad..hi + pad
    } else {
        0.0..1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_renders_to_svg_and_png() {
        let stats = vec![("kurt", vec![10.0, 90.0, 95.0]), ("skew", vec![50.0])];
        let fig3 = Percentiles {
            title: "Fig. 3",
            stats: &stats,
        };
        let svg = crate::svg(&fig3, 600, 400).expect("svg");
        assert!(svg.contains("Fig. 3") && svg.contains("kurt") && svg.contains("n=3"));
        let png = crate::png(&fig3, 600, 400).expect("png");
        let img = image::load_from_memory(&png).expect("png").to_rgb8();
        assert_eq!(img.dimensions(), (600, 400));
        // Something besides white was drawn (text, boxes).
        assert!(img.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);
        let seeds = vec![vec![vec![1.0, 2.0, 30.0], vec![3.0, 4.0, 5.0]]; 2];
        let fig6 = LayerQuantiles {
            title: "Fig. 6a",
            y_desc: "vocab_kurt",
            per_seed: &seeds,
            log_y: true,
        };
        let svg = crate::svg(&fig6, 600, 400).expect("svg");
        assert!(svg.contains("2 seeds") && svg.contains("95 %"));
        let pts = [(0.0, 0.0, false), (1.0, 1.0, true), (f64::NAN, 0.0, false)];
        let fig9 = Scatter {
            title: "Fig. 9",
            x_desc: "x",
            y_desc: "y",
            points: &pts,
            labels: ScatterLabels::NEURONS,
        };
        let svg = crate::svg(&fig9, 600, 400).expect("svg");
        assert!(svg.contains("r = 1.00, 2 neurons"));
        let bars = Bars {
            title: "families",
            y_desc: "%",
            labels: &["unigram".into()],
            series: &["all", "universal"],
            values: &[vec![1.0, 2.0]],
        };
        let svg = crate::svg(&bars, 600, 400).expect("svg");
        assert!(svg.contains("unigram") && svg.contains("universal"));
        let curves = vec![
            Curve {
                label: "L1.5".into(),
                points: vec![(0.0, 1.0), (3.0, 2.0)],
                baseline: false,
            },
            Curve {
                label: String::new(),
                points: vec![(0.0, 1.1), (3.0, 1.2)],
                baseline: true,
            },
        ];
        let panels = vec![("scale".to_string(), "ln scale".to_string(), 1.05, curves)];
        let fig7 = Curves {
            title: "Fig. 7",
            x_desc: "value",
            x_ticks: &[],
            panels: &panels,
            nominal_label: "no intervention",
            baseline_label: "random baseline neurons",
        };
        let svg = crate::svg(&fig7, 600, 400).expect("svg");
        assert!(
            svg.contains("L1.5") && svg.contains("no intervention") && svg.contains("baseline")
        );
        // Named x positions (a series' steps) replace the numbers there, and only there.
        let steps = ["200".to_string(), "800".into(), "final".into()];
        let series = Curves {
            x_ticks: &steps,
            ..fig7
        };
        let svg = crate::svg(&series, 600, 400).expect("svg");
        let texts: Vec<&str> = svg
            .split("</text>")
            .filter_map(|t| t.rsplit('>').next())
            .map(str::trim)
            .collect();
        let text = |t: &str| texts.contains(&t);
        assert!(text("200") && text("800") && text("final"), "{svg}");
        assert!(
            !text("0.5") && !text("1.0"),
            "numbers between the steps: {svg}"
        );
    }
}
