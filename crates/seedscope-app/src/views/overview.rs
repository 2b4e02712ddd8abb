//! The overview: how many neurons are universal (overall and per layer) at a threshold the
//! user drags, the distributions of the paper's Fig. 2a, the max-vs-min scatter (2b), the
//! layer × layer best-match fractions (2c) and Fig. 3 in numbers. What the figures draw is
//! computed when the bundle, the anchor or the threshold changes, not every frame.

use std::sync::Arc;

use egui::{Color32, Pos2, Rect, Sense, Vec2};
use egui_plot::{Bar, BarChart, Legend, Plot, PlotPoints, Points, VLine};
use seedscope_analysis::NeuronRow;
use seedscope_analysis::bundle::{MutualCounts, mutual_counts, universal_medians};

use super::{Action, Shared};
use crate::AppError;
use crate::data::Explorer;
use crate::widgets::{OTHER, UNIVERSAL};

/// Fig. 2a's colour of the permutation null.
const NULL: Color32 = Color32::from_rgb(150, 120, 210);

/// The overview's state: where Fig. 2a was drawn (PNG export, tests) and what its figures draw.
#[derive(Default)]
pub struct OverviewView {
    /// Where Fig. 2a was last drawn.
    pub plot_rect: Option<Rect>,
    /// Fig. 2a's counts for a bundle and anchor (mean best r, baseline, excess, and the
    /// permutation null's when the bundle has it).
    histograms: Option<(usize, usize, Fig2a)>,
    /// Fig. 2b's points and Fig. 3's medians for a bundle, anchor and threshold.
    split: Option<(usize, usize, u64, Split)>,
}

/// Fig. 2a's counts: mean best r, baseline and excess, and the permutation null's when the
/// bundle has it.
struct Fig2a {
    series: [Vec<u32>; 3],
    null: Option<Vec<u32>>,
}

/// What depends on the threshold.
struct Split {
    /// Fig. 2b: (max, min) of the other and of the universal neurons.
    points: [Vec<[f64; 2]>; 2],
    /// Fig. 3: the universal neurons' median within-layer percentiles, and their number.
    medians: (Vec<(&'static str, Option<f64>)>, usize),
    /// How many universal neurons are mutual best matches in every other seed.
    mutual: Option<MutualCounts>,
    /// With the permutation null: how many neurons beat it by more than the threshold, and
    /// the median over neurons of their mean best correlation under it.
    null: Option<(usize, f64)>,
}

/// The anchor's rows.
fn anchor_rows(ex: &Explorer, anchor: usize) -> Vec<&NeuronRow> {
    ex.anchor(anchor)
        .map(|a| a.rows.iter().map(|&i| &ex.rows()[i]).collect())
        .unwrap_or_default()
}

impl OverviewView {
    /// The overview of `shared`'s bundle.
    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared<'_>) -> Option<Action> {
        let ex = shared.ex;
        let m = &ex.bundle.manifest;
        let anchor = shared.anchor;
        let mut action = None;
        let counts = ex.counts(anchor, shared.threshold);
        let (u, t) = counts.iter().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
        ui.horizontal_wrapped(|ui| {
            ui.heading(format!("{} seeds", ex.names.len()));
            ui.label(format!(
                "{} · {} tokens · {} · anchor {} · {}",
                ex.names.join(", "),
                m.n_tokens,
                m.shapes_in_words(),
                ex.names[anchor],
                m.device
            ));
        });
        ui.horizontal(|ui| {
            let mut threshold = shared.threshold;
            if ui
                .add(
                    egui::Slider::new(&mut threshold, 0.0..=1.0)
                        .step_by(0.01)
                        .text("threshold"),
                )
                .changed()
            {
                action = Some(Action::SetThreshold(threshold));
            }
            ui.label(
                egui::RichText::new(format!(
                    "universal: {u} of {t} ({:.2}%)",
                    100.0 * u as f64 / t.max(1) as f64
                ))
                .strong()
                .color(UNIVERSAL),
            );
            if (shared.threshold - m.options.threshold).abs() > 1e-9 {
                ui.label(format!("(the bundle used {:.2})", m.options.threshold));
                if ui.small_button("reset").clicked() {
                    action = Some(Action::SetThreshold(m.options.threshold));
                }
            }
        });
        ui.label(
            "A neuron is universal when its mean best correlation with the other seeds beats the \
             same for randomly rotated activations (the baseline) by more than the threshold.",
        );
        let key = Arc::as_ptr(ex) as usize;
        let (lo, hi, bins) = seedscope_report::FIG2A_BINS;
        if self
            .histograms
            .as_ref()
            .is_none_or(|h| (h.0, h.1) != (key, anchor))
        {
            let rows = anchor_rows(ex, anchor);
            let hist = |f: fn(&NeuronRow) -> f64| {
                let v: Vec<f64> = rows.iter().map(|r| f(r)).collect();
                seedscope_report::histogram(&v, lo, hi, bins)
            };
            let has_null = rows.iter().any(|r| !r.mean_null.is_nan());
            self.histograms = Some((
                key,
                anchor,
                Fig2a {
                    series: [
                        hist(|r| r.mean_corr),
                        hist(|r| r.mean_baseline),
                        hist(|r| r.excess_corr),
                    ],
                    null: has_null.then(|| hist(|r| r.mean_null)),
                },
            ));
        }
        let bits = shared.threshold.to_bits();
        if self
            .split
            .as_ref()
            .is_none_or(|s| (s.0, s.1, s.2) != (key, anchor, bits))
        {
            let rows = anchor_rows(ex, anchor);
            let mut points = [Vec::new(), Vec::new()];
            for r in &rows {
                points[usize::from(r.excess_corr > shared.threshold)]
                    .push([r.max_corr, r.min_corr]);
            }
            let medians = match ex.anchor(anchor) {
                Some(a) => universal_medians(&rows, &a.percentiles, shared.threshold),
                None => (Vec::new(), 0),
            };
            let mutual = mutual_counts(&rows, shared.threshold, ex.names.len().saturating_sub(1));
            let null = rows.iter().any(|r| !r.mean_null.is_nan()).then(|| {
                let over = rows
                    .iter()
                    .filter(|r| r.excess_over_null > shared.threshold)
                    .count();
                let means: Vec<f64> = rows.iter().map(|r| r.mean_null).collect();
                (over, seedscope_analysis::stats::median(&means))
            });
            self.split = Some((
                key,
                anchor,
                bits,
                Split {
                    points,
                    medians,
                    mutual,
                    null,
                },
            ));
        }
        let (Some((_, _, fig2a)), Some((_, _, _, split))) = (&self.histograms, &self.split) else {
            return action;
        };
        let (hists, null_hist) = (&fig2a.series, &fig2a.null);
        if let Some((over, median)) = split.null {
            ui.label(format!(
                "Permutation null: by chance alignment of tokens alone the mean best correlation \
                 is {median:.3} (median); {over} neurons beat it by more than the threshold \
                 (neurons.csv: mean_null, excess_over_null)."
            ));
        }
        if let Some(c) = split.mutual {
            ui.label(format!(
                "One-to-one: {} of the {} universal neurons ({} of all {}) are their best match's \
                 best match in every other seed (neurons.csv: mutual_best, assignment_corr).",
                c.universal_mutual, c.universal, c.mutual, c.neurons
            ));
        }
        let avail = ui.available_size();
        let w = ((avail.x - 24.0) / 2.0).max(200.0);
        let h = ((avail.y - 60.0) / 2.0).clamp(160.0, 420.0);
        let mut plot_rect = None;
        egui::Grid::new("overview-grid")
            .num_columns(2)
            .spacing([16.0, 8.0])
            .show(ui, |ui| {
                ui.vertical(|ui| per_layer_bars(ui, &counts, w, h));
                ui.vertical(|ui| {
                    ui.strong(
                        "Fig. 2a: best correlation, baseline and excess (drag to set the \
                         threshold)",
                    );
                    let bw = (hi - lo) / bins as f64;
                    let series = |name: &str, counts: &[u32], color: Color32| {
                        BarChart::new(
                            name,
                            counts
                                .iter()
                                .enumerate()
                                .map(|(i, &c)| {
                                    Bar::new(lo + (i as f64 + 0.5) * bw, c as f64)
                                        .width(bw)
                                        .fill(color.gamma_multiply(0.55))
                                })
                                .collect(),
                        )
                        .color(color)
                    };
                    let resp = Plot::new("fig2a")
                        .width(w)
                        .height(h)
                        .allow_drag(false)
                        .allow_zoom(false)
                        .allow_scroll(false)
                        .allow_boxed_zoom(false)
                        .legend(Legend::default())
                        .x_axis_label("correlation")
                        .y_axis_label("neurons")
                        .show(ui, |p| {
                            p.bar_chart(series("mean best r", &hists[0], OTHER));
                            p.bar_chart(series("baseline", &hists[1], Color32::GRAY));
                            if let Some(h) = null_hist {
                                p.bar_chart(series("permutation null", h, NULL));
                            }
                            p.bar_chart(series("excess", &hists[2], UNIVERSAL));
                            p.vline(
                                VLine::new("threshold", shared.threshold)
                                    .color(Color32::RED)
                                    .width(2.0),
                            );
                            p.pointer_coordinate()
                        });
                    if (resp.response.dragged() || resp.response.clicked())
                        && let Some(c) = resp.inner
                    {
                        action = Some(Action::SetThreshold(c.x.clamp(0.0, 1.0)));
                    }
                    plot_rect = Some(resp.response.rect);
                });
                ui.end_row();
                ui.vertical(|ui| {
                    ui.strong("Fig. 2b: best correlation, max vs min over the other seeds");
                    Plot::new("fig2b")
                        .width(w)
                        .height(h)
                        .data_aspect(1.0)
                        .legend(Legend::default())
                        .x_axis_label("max over seeds")
                        .y_axis_label("min over seeds")
                        .show(ui, |p| {
                            let pts = |v: &[[f64; 2]]| PlotPoints::new(v.to_vec());
                            p.points(
                                Points::new("not universal", pts(&split.points[0]))
                                    .color(OTHER)
                                    .radius(1.5),
                            );
                            p.points(
                                Points::new("universal", pts(&split.points[1]))
                                    .color(UNIVERSAL)
                                    .radius(2.5),
                            );
                        });
                });
                ui.vertical(|ui| {
                    ui.strong("Fig. 2c: layer of the best match (fraction of each anchor layer)");
                    if let Some(a) = ex.anchor(anchor) {
                        ui.horizontal_top(|ui| {
                            let rows = ex.shape(anchor).n_layers;
                            let cols = a.layer_match.len() / rows.max(1);
                            layer_grid(ui, &a.layer_match, (rows, cols), Vec2::new(w, h));
                            ui.vertical(|ui| universal_percentiles(ui, &split.medians));
                        });
                    }
                });
                ui.end_row();
            });
        self.plot_rect = plot_rect;
        action
    }

    /// The overview's four panels as SVG (the report's figure of the same data).
    pub fn svg(&self, shared: &Shared<'_>) -> Result<String, AppError> {
        let ex = shared.ex;
        let anchor = shared.anchor;
        let a = ex.anchor(anchor).ok_or("no anchor data")?;
        let rows = anchor_rows(ex, anchor);
        let col = |f: fn(&NeuronRow) -> f64| -> Vec<f64> { rows.iter().map(|r| f(r)).collect() };
        let m = &ex.bundle.manifest;
        let title = format!(
            "{} seeds ({}), anchor {}, {} tokens, {}",
            ex.names.len(),
            ex.names.join(", "),
            ex.names[anchor],
            m.n_tokens,
            m.shapes_in_words()
        );
        Ok(seedscope_report::overview_svg(
            &seedscope_report::Overview {
                title: &title,
                mean_corr: &col(|r| r.mean_corr),
                baseline: &col(|r| r.mean_baseline),
                excess: &col(|r| r.excess_corr),
                max_corr: &col(|r| r.max_corr),
                min_corr: &col(|r| r.min_corr),
                per_layer: &ex.counts(anchor, shared.threshold),
                layer_match: &a.layer_match,
                threshold: shared.threshold,
            },
            1200,
            900,
        )?)
    }
}

/// Universal neurons per layer, in percent.
fn per_layer_bars(ui: &mut egui::Ui, counts: &[(usize, usize)], w: f32, h: f32) {
    ui.strong("Universal neurons per layer (%)");
    let bars: Vec<Bar> = counts
        .iter()
        .enumerate()
        .map(|(l, (u, t))| {
            Bar::new(l as f64, 100.0 * *u as f64 / (*t).max(1) as f64)
                .name(format!("layer {l}: {u} of {t}"))
                .fill(UNIVERSAL)
        })
        .collect();
    Plot::new("per-layer")
        .width(w)
        .height(h)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .x_axis_label("layer")
        .y_axis_label("% universal")
        .include_y(0.0)
        .show(ui, |p| {
            p.bar_chart(BarChart::new("universal %", bars).width(0.7))
        });
}

/// The `[n, n]` fraction grid, rows = anchor layer, columns = layer of the best match. Cell
/// values are written when the cells are large enough to hold them (up to about 12 layers).
fn layer_grid(ui: &mut egui::Ui, f: &[f32], (rows, cols): (usize, usize), size: Vec2) {
    let side = (size.x.min(size.y) - 40.0).max(60.0);
    let (rect, resp) = ui.allocate_exact_size(Vec2::new(side + 40.0, side + 30.0), Sense::hover());
    let cell = side / rows.max(cols).max(1) as f32;
    let grid = Rect::from_min_size(
        rect.min + Vec2::new(36.0, 0.0),
        Vec2::new(cols as f32 * cell, rows as f32 * cell),
    );
    let painter = ui.painter_at(rect);
    let text = ui.visuals().text_color();
    // Label every layer when they fit, else every k-th.
    let label_every = (14.0 / cell).ceil().max(1.0) as usize;
    let label = |at: Pos2, align, l: usize| {
        painter.text(
            at,
            align,
            format!("L{l}"),
            egui::FontId::proportional(11.0),
            text,
        );
    };
    for a in 0..rows {
        for b in 0..cols {
            let v = f.get(a * cols + b).copied().unwrap_or(0.0);
            let r = Rect::from_min_size(
                grid.min + Vec2::new(b as f32 * cell, a as f32 * cell),
                Vec2::splat(cell),
            );
            let shade = (v.clamp(0.0, 1.0) * 255.0) as u8;
            painter.rect_filled(
                r.shrink(0.5),
                0.0,
                Color32::from_rgb(shade, (shade as f32 * 0.5) as u8, 40),
            );
            if cell > 28.0 {
                painter.text(
                    r.center(),
                    egui::Align2::CENTER_CENTER,
                    format!("{v:.2}"),
                    egui::FontId::proportional(11.0),
                    if v > 0.5 {
                        Color32::BLACK
                    } else {
                        Color32::WHITE
                    },
                );
            }
        }
        if a % label_every == 0 {
            let y = grid.min.y + (a as f32 + 0.5) * cell;
            label(
                Pos2::new(grid.min.x - 4.0, y),
                egui::Align2::RIGHT_CENTER,
                a,
            );
        }
    }
    for b in (0..cols).step_by(label_every) {
        let x = grid.min.x + (b as f32 + 0.5) * cell;
        label(Pos2::new(x, grid.max.y + 4.0), egui::Align2::CENTER_TOP, b);
    }
    if let Some(p) = resp.hover_pos()
        && grid.contains(p)
    {
        let b = ((p.x - grid.min.x) / cell) as usize;
        let a = ((p.y - grid.min.y) / cell) as usize;
        if a < rows && b < cols {
            resp.on_hover_text(format!(
                "{:.1}% of anchor layer {a} neurons have their best match in layer {b}",
                100.0 * f.get(a * cols + b).copied().unwrap_or(0.0)
            ));
        }
    }
}

/// Fig. 3 in numbers: the median within-layer percentile of each statistic among the universal
/// neurons (50 would mean "like any other neuron of its layer").
fn universal_percentiles(ui: &mut egui::Ui, medians: &(Vec<(&'static str, Option<f64>)>, usize)) {
    ui.strong("Fig. 3: universal neurons' median percentile");
    ui.label("within their layer (50 = typical)");
    let (medians, n) = medians;
    if *n == 0 {
        ui.label("no universal neurons at this threshold");
        return;
    }
    egui::Grid::new("fig3").striped(true).show(ui, |ui| {
        for (name, median) in medians {
            if let Some(m) = median {
                ui.label(*name);
                ui.label(format!("{m:.0}"));
                ui.end_row();
            }
        }
    });
    ui.label(format!("over {n} universal neurons"));
}
