//! The paper's figures as SVG and PNG, from plain per-neuron arrays (so any bundle reader can
//! feed them): the overview (universal fraction per layer, Fig. 2a distributions with the
//! threshold, Fig. 2b max vs min, Fig. 2c layer of the best match), correlation heatmaps, and the
//! anatomy figures (Fig. 3 percentiles, Fig. 6 vocabulary quantiles by layer, scatters such as
//! Fig. 9, bar charts, curves). Every figure is a value that can [`Draw`] itself on any plotters
//! backend, rendered by [`svg`] or [`png`]. The app's "Export plot as SVG" and `seedscope
//! report` ([`write_report`], which reads nothing but a bundle) use them.

use std::io::Cursor;

use base64::Engine;
use plotters::coord::Shift;
use plotters::prelude::*;

mod cost;
mod figures;
mod report;
pub use cost::{CostRow, PARTS, cost_table, write_cost_figures};
pub use figures::*;
pub use report::{ReportSummary, write_report};

/// Errors of the report: reading the bundle, drawing, encoding, writing.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the bundle (or putting the report in place) failed.
    #[error(transparent)]
    Analysis(#[from] seedscope_analysis::AnalysisError),
    /// The bundle's tokenizer could not be read.
    #[error(transparent)]
    Tokenizer(#[from] seedscope_data::DataError),
    /// A file or directory could not be made.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Drawing a figure failed.
    #[error("drawing the figure: {0}")]
    Draw(String),
    /// Encoding an image failed.
    #[error("encoding an image: {0}")]
    Encode(#[from] image::ImageError),
    /// Inputs that cannot make a figure.
    #[error("{0}")]
    Invalid(String),
}

/// A figure: drawn the same way on any plotters backend, so it renders to [`svg`] and [`png`].
pub trait Draw {
    /// Draw on `root`.
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), ReportError>;
}

/// What the overview figure shows, per anchor neuron.
#[derive(Debug, Clone, Copy)]
pub struct Overview<'a> {
    /// Title line (models, tokens).
    pub title: &'a str,
    /// Mean over other seeds of the best correlation.
    pub mean_corr: &'a [f64],
    /// Mean over other seeds of the best baseline correlation.
    pub baseline: &'a [f64],
    /// `mean_corr - baseline`.
    pub excess: &'a [f64],
    /// Max over other seeds of the best correlation.
    pub max_corr: &'a [f64],
    /// Min over other seeds of the best correlation.
    pub min_corr: &'a [f64],
    /// Per layer `(universal, total)` at `threshold`.
    pub per_layer: &'a [(usize, usize)],
    /// `[anchor layers, other layers]` fraction of anchor-layer neurons whose best match lies in
    /// each layer of the other models (their depth: the deepest one's).
    pub layer_match: &'a [f32],
    /// The universality threshold on the excess correlation.
    pub threshold: f64,
}

const BLUE: RGBColor = RGBColor(90, 150, 220);
const ORANGE: RGBColor = RGBColor(230, 120, 60);
const GREY: RGBColor = RGBColor(150, 150, 150);
/// Grid lines: an opaque light grey (some SVG renderers ignore stroke opacity).
const GRID: RGBColor = RGBColor(225, 225, 225);

fn layer_label(v: &SegmentValue<usize>) -> String {
    match v {
        SegmentValue::CenterOf(l) => format!("L{l}"),
        _ => String::new(),
    }
}

fn err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Draw(e.to_string())
}

/// Fig. 2a's bins: `(lo, hi, bins)` over the correlation axis.
pub const FIG2A_BINS: (f64, f64, usize) = (-0.4, 1.0, 70);

/// Counts of `values` in `bins` equal bins over `[lo, hi)`, values outside clamped to the ends.
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<u32> {
    let w = (hi - lo) / bins as f64;
    let mut c = vec![0u32; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        let b = (((v - lo) / w).floor().max(0.0) as usize).min(bins - 1);
        c[b] += 1;
    }
    c
}

/// The overview as one SVG document (2 × 2 panels), `width` × `height` pixels.
pub fn overview_svg(d: &Overview<'_>, width: u32, height: u32) -> Result<String, ReportError> {
    svg(d, width, height)
}

/// `figure` as an SVG document of `width` × `height` pixels.
pub fn svg(figure: &impl Draw, width: u32, height: u32) -> Result<String, ReportError> {
    register_fonts();
    let mut out = String::new();
    figure.draw(SVGBackend::with_string(&mut out, (width, height)).into_drawing_area())?;
    Ok(out)
}

/// Register the Ubuntu font that egui ships as plotters' "sans-serif" (text layout needs its
/// metrics on every backend; the PNG rasterises with it). In the browser plotters measures and
/// draws text with the page's canvas fonts instead.
#[cfg(target_arch = "wasm32")]
fn register_fonts() {}

#[cfg(not(target_arch = "wasm32"))]
fn register_fonts() {
    static FONT: std::sync::Once = std::sync::Once::new();
    FONT.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// `figure` as a PNG of `width` × `height` pixels (text in the Ubuntu font that egui ships).
pub fn png(figure: &impl Draw, width: u32, height: u32) -> Result<Vec<u8>, ReportError> {
    register_fonts();
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    figure.draw(BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area())?;
    let img = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| ReportError::Invalid("the bitmap has the wrong size".into()))?;
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)?;
    Ok(out)
}

/// The overview: 2 × 2 panels.
impl Draw for Overview<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), ReportError> {
        let d = self;
        root.fill(&WHITE).map_err(err)?;
        let (top, body) = root.split_vertically(30);
        top.titled(d.title, ("sans-serif", 16)).map_err(err)?;
        let panels = body.split_evenly((2, 2));
        // Per-layer fraction universal.
        {
            let n = d.per_layer.len().max(1);
            let pct: Vec<f64> = d
                .per_layer
                .iter()
                .map(|(u, t)| 100.0 * *u as f64 / (*t).max(1) as f64)
                .collect();
            let ymax = pct.iter().copied().fold(1.0f64, f64::max) * 1.15;
            let mut chart = ChartBuilder::on(&panels[0])
                .caption("Universal neurons per layer (%)", ("sans-serif", 14))
                .margin(10)
                .x_label_area_size(42)
                .y_label_area_size(40)
                // A segmented a..b range has b - a + 1 segments.
                .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..ymax)
                .map_err(err)?;
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .bold_line_style(GRID)
                .x_label_formatter(&layer_label)
                .y_label_formatter(&|v| format!("{v:.1}"))
                .x_desc("layer")
                .y_desc("% universal")
                .draw()
                .map_err(err)?;
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(ORANGE.filled())
                        .margin(8)
                        .data(pct.iter().enumerate().map(|(l, p)| (l, *p))),
                )
                .map_err(err)?;
        }
        // Fig. 2a.
        {
            let (lo, hi, bins) = FIG2A_BINS;
            let w = (hi - lo) / bins as f64;
            let series = [
                ("mean best r", d.mean_corr, BLUE),
                ("baseline", d.baseline, GREY),
                ("excess", d.excess, ORANGE),
            ];
            let counts: Vec<Vec<u32>> = series
                .iter()
                .map(|s| histogram(s.1, lo, hi, bins))
                .collect();
            let ymax = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
            let mut chart = ChartBuilder::on(&panels[1])
                .caption(
                    format!(
                        "Fig. 2a: best r, baseline, excess (threshold {:.2})",
                        d.threshold
                    ),
                    ("sans-serif", 14),
                )
                .margin(10)
                .x_label_area_size(42)
                .y_label_area_size(40)
                .build_cartesian_2d(lo..hi, 0.0..ymax)
                .map_err(err)?;
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .bold_line_style(GRID)
                .y_label_formatter(&|v| format!("{v:.0}"))
                .x_label_formatter(&|v| format!("{v:.1}"))
                .x_desc("correlation")
                .y_desc("neurons")
                .draw()
                .map_err(err)?;
            for ((name, _, color), c) in series.iter().zip(&counts) {
                chart
                    .draw_series(c.iter().enumerate().map(|(i, &n)| {
                        let x0 = lo + i as f64 * w;
                        Rectangle::new([(x0, 0.0), (x0 + w, n as f64)], color.mix(0.5).filled())
                    }))
                    .map_err(err)?
                    .label(*name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                    });
            }
            chart
                .draw_series(LineSeries::new(
                    [(d.threshold, 0.0), (d.threshold, ymax)],
                    RED.stroke_width(2),
                ))
                .map_err(err)?
                .label("threshold")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 10, y)], RED));
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        // Fig. 2b.
        {
            let mut chart = ChartBuilder::on(&panels[2])
                .caption(
                    "Fig. 2b: best r, max vs min over the other seeds",
                    ("sans-serif", 14),
                )
                .margin(10)
                .x_label_area_size(42)
                .y_label_area_size(40)
                .build_cartesian_2d(0.0..1.0, 0.0..1.0)
                .map_err(err)?;
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .bold_line_style(GRID)
                .x_label_formatter(&|v| format!("{v:.1}"))
                .y_label_formatter(&|v| format!("{v:.1}"))
                .x_desc("max over seeds")
                .y_desc("min over seeds")
                .draw()
                .map_err(err)?;
            let pts = |universal: bool| {
                d.max_corr
                    .iter()
                    .zip(d.min_corr)
                    .zip(d.excess)
                    .filter(move |(_, e)| (**e > d.threshold) == universal)
                    .map(|((x, y), _)| (*x, *y))
                    .collect::<Vec<_>>()
            };
            chart
                .draw_series(
                    pts(false)
                        .into_iter()
                        .map(|p| Circle::new(p, 1, BLUE.filled())),
                )
                .map_err(err)?;
            chart
                .draw_series(
                    pts(true)
                        .into_iter()
                        .map(|p| Circle::new(p, 3, ORANGE.filled())),
                )
                .map_err(err)?;
        }
        // Fig. 2c.
        {
            let n = d.per_layer.len().max(1);
            let m = (d.layer_match.len() / n).max(1);
            let mut chart = ChartBuilder::on(&panels[3])
                .caption("Fig. 2c: layer of the best match", ("sans-serif", 14))
                .margin(10)
                .x_label_area_size(42)
                .y_label_area_size(40)
                .build_cartesian_2d((0..m - 1).into_segmented(), (0..n - 1).into_segmented())
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_label_formatter(&layer_label)
                .y_label_formatter(&|v| match v {
                    // Anchor layer 0 at the top.
                    SegmentValue::CenterOf(l) if *l < n => format!("L{}", n - 1 - l),
                    _ => String::new(),
                })
                .x_desc("layer of the best match")
                .y_desc("anchor layer")
                .draw()
                .map_err(err)?;
            chart
                .draw_series((0..n).flat_map(|a| {
                    (0..m).map(move |b| {
                        let v = d.layer_match.get(a * m + b).copied().unwrap_or(0.0);
                        // White (0) to orange (1), so black text reads on every cell.
                        let t = v.clamp(0.0, 1.0);
                        let mix = |c: u8| (255.0 + (c as f32 - 255.0) * t) as u8;
                        let y = n - 1 - a;
                        Rectangle::new(
                            [
                                (SegmentValue::Exact(b), SegmentValue::Exact(y)),
                                (SegmentValue::Exact(b + 1), SegmentValue::Exact(y + 1)),
                            ],
                            RGBColor(mix(ORANGE.0), mix(ORANGE.1), mix(ORANGE.2)).filled(),
                        )
                    })
                }))
                .map_err(err)?;
            chart
                .draw_series((0..n).flat_map(|a| {
                    (0..m).map(move |b| {
                        let v = d.layer_match.get(a * m + b).copied().unwrap_or(0.0);
                        Text::new(
                            format!("{v:.2}"),
                            (SegmentValue::CenterOf(b), SegmentValue::CenterOf(n - 1 - a)),
                            ("sans-serif", 12).into_font().color(&BLACK),
                        )
                    })
                }))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

/// The diverging colour of r in [-1, 1] (blue, white, red), as the app draws it.
pub fn diverging(v: f32) -> [u8; 3] {
    if v.is_nan() {
        return [128, 128, 128];
    }
    const STOPS: [[f32; 3]; 5] = [
        [0.020, 0.188, 0.380],
        [0.263, 0.576, 0.765],
        [0.969, 0.969, 0.969],
        [0.839, 0.376, 0.302],
        [0.404, 0.000, 0.122],
    ];
    let x = (v.clamp(-1.0, 1.0) + 1.0) * 2.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f32;
    let c = |k: usize| ((STOPS[i][k] + (STOPS[i + 1][k] - STOPS[i][k]) * f) * 255.0).round() as u8;
    [c(0), c(1), c(2)]
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A correlation map `[rows, cols]` as SVG: the cells as an embedded PNG (one pixel per cell),
/// axis titles and a colour bar from -1 to 1.
pub fn heatmap_svg(
    values: &[f32],
    rows: usize,
    cols: usize,
    title: &str,
    row_label: &str,
    col_label: &str,
) -> Result<String, ReportError> {
    if values.len() != rows * cols || rows == 0 || cols == 0 {
        return Err(ReportError::Invalid(format!(
            "a {rows} x {cols} map needs {} values, got {}",
            rows * cols,
            values.len()
        )));
    }
    let img = image::RgbImage::from_fn(cols as u32, rows as u32, |x, y| {
        image::Rgb(diverging(values[y as usize * cols + x as usize]))
    });
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let side = 640.0f64;
    let (w, h) = if cols >= rows {
        (side, side * rows as f64 / cols as f64)
    } else {
        (side * cols as f64 / rows as f64, side)
    };
    let (x0, y0) = (70.0, 40.0);
    let mut bar = String::new();
    for i in 0..100 {
        let t = i as f32 / 99.0;
        let [r, g, b] = diverging(t * 2.0 - 1.0);
        bar.push_str(&format!(
            r#"<rect x="{:.1}" y="{:.1}" width="2.2" height="12" fill="rgb({r},{g},{b})"/>"#,
            x0 + t as f64 * 200.0,
            y0 + h + 50.0
        ));
    }
    Ok(format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{tw:.0}" height="{th:.0}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{x0}" y="24" font-size="15">{title}</text>
<image x="{x0}" y="{y0}" width="{w:.1}" height="{h:.1}" preserveAspectRatio="none" style="image-rendering:pixelated" href="data:image/png;base64,{b64}"/>
<rect x="{x0}" y="{y0}" width="{w:.1}" height="{h:.1}" fill="none" stroke="black"/>
<text x="{cx:.1}" y="{ly:.1}" font-size="13" text-anchor="middle">{col_label} (columns, {cols})</text>
<text transform="translate(30,{cy:.1}) rotate(-90)" font-size="13" text-anchor="middle">{row_label} (rows, {rows})</text>
{bar}
<text x="{x0}" y="{by:.1}" font-size="11">-1</text>
<text x="{mx:.1}" y="{by:.1}" font-size="11" text-anchor="middle">0</text>
<text x="{ex:.1}" y="{by:.1}" font-size="11" text-anchor="end">+1  Pearson r</text>
</svg>
"#,
        tw = x0 + w + 30.0,
        th = y0 + h + 100.0,
        title = escape(title),
        row_label = escape(row_label),
        col_label = escape(col_label),
        cx = x0 + w / 2.0,
        ly = y0 + h + 30.0,
        cy = y0 + h / 2.0,
        by = y0 + h + 78.0,
        mx = x0 + 100.0,
        ex = x0 + 200.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_clamp_to_the_ends_and_skip_nan() {
        let c = histogram(&[-5.0, 0.05, 0.15, 0.95, 7.0, f64::NAN], 0.0, 1.0, 10);
        assert_eq!(c, vec![2, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn the_overview_draws_every_panel_with_its_text() {
        let n = 50;
        let mean: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();
        let base: Vec<f64> = mean.iter().map(|m| m * 0.5).collect();
        let excess: Vec<f64> = mean.iter().zip(&base).map(|(a, b)| a - b).collect();
        let svg = overview_svg(
            &Overview {
                title: "5 seeds, 4096 tokens",
                mean_corr: &mean,
                baseline: &base,
                excess: &excess,
                max_corr: &mean,
                min_corr: &base,
                per_layer: &[(0, 25), (3, 25)],
                layer_match: &[0.9, 0.1, 0.2, 0.8],
                threshold: 0.45,
            },
            1000,
            700,
        )
        .expect("svg");
        assert!(svg.starts_with("<svg"));
        for text in [
            "Fig. 2a",
            "Fig. 2b",
            "Fig. 2c",
            "per layer",
            "threshold",
            "5 seeds",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // Universal neurons (excess = i/100 > 0.45: i = 46..49) are the large orange points.
        assert_eq!(svg.matches(r#"r="3""#).count(), 4);
    }

    #[test]
    fn the_heatmap_embeds_one_pixel_per_cell() {
        let v: Vec<f32> = (0..12).map(|i| i as f32 / 6.0 - 1.0).collect();
        let svg = heatmap_svg(&v, 3, 4, "a <b>", "seed-a L0", "seed-b L1").expect("svg");
        assert!(svg.contains("a &lt;b&gt;"));
        let b64 = svg
            .split("base64,")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("png");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let img = image::load_from_memory(&png).expect("png").to_rgb8();
        assert_eq!(img.dimensions(), (4, 3));
        assert_eq!(img.get_pixel(0, 0).0, diverging(-1.0));
        assert!(heatmap_svg(&v, 2, 4, "", "", "").is_err());
    }
}
