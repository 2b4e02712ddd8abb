//! Universality over training, from the bundle's `trajectory.json` (the last step of a series
//! made by `seedscope analyze --steps`): the fraction of universal anchor neurons per layer
//! against the training step, and one neuron's excess correlation against the step with the
//! step at which it crosses the threshold. The x axis is the step's position in the series,
//! labelled with the step (`final` included).

use egui_plot::{Legend, Line, Plot, PlotPoints, Points, VLine};
use seedscope_analysis::bundle::Trajectory;

use super::{Action, Shared};
use crate::data::NeuronId;
use crate::widgets::UNIVERSAL;

/// The training view's state: the anchor neuron whose trajectory it shows.
#[derive(Default)]
pub struct TrainingView {
    /// Where the fraction plot was last drawn.
    pub plot_rect: Option<egui::Rect>,
    /// The neuron shown (`layer * d_mlp + index`); none yet: the one with the largest excess
    /// at the last step.
    pub shown: Option<usize>,
}

/// How many of the neurons with the largest excess at the last step the view lists.
const LISTED: usize = 8;

/// The x axis: step positions labelled with the steps.
fn step_axis(
    t: &Trajectory,
) -> impl Fn(egui_plot::GridMark, &std::ops::RangeInclusive<f64>) -> String + '_ {
    move |mark, _| {
        let i = mark.value.round();
        if (mark.value - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        t.steps
            .get(i as usize)
            .map_or(String::new(), |s| s.label.clone())
    }
}

/// A fixed plot (no drag, zoom or scroll) with a legend, `y = 0` in view and the steps on
/// its x axis.
fn step_plot<'a>(id: impl egui::AsIdSalt, t: &'a Trajectory, size: egui::Vec2) -> Plot<'a> {
    Plot::new(id)
        .width(size.x)
        .height(size.y)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .legend(Legend::default())
        .include_y(0.0)
        .x_axis_formatter(step_axis(t))
        .x_axis_label("training step")
}

/// A neuron's excess correlation against the step, with the threshold and the crossing.
pub fn excess_plot(
    ui: &mut egui::Ui,
    t: &Trajectory,
    neuron: usize,
    threshold: f64,
    size: egui::Vec2,
) {
    // The neuron's value at every step, of `[step][neuron]` arrays.
    let over_steps = |steps: &[Vec<f32>]| -> Vec<[f64; 2]> {
        steps
            .iter()
            .enumerate()
            .map(|(k, s)| [k as f64, s.get(neuron).copied().unwrap_or(f32::NAN) as f64])
            .collect()
    };
    let points = over_steps(&t.excess_corr);
    let mean = over_steps(&t.mean_corr);
    let crossing = t.crossing(neuron, threshold);
    step_plot(("excess-over-training", neuron), t, size)
        .include_y(1.0)
        .show(ui, |p| {
            p.line(Line::new("mean best r", PlotPoints::from(mean)).color(egui::Color32::GRAY));
            p.line(Line::new("excess", PlotPoints::from(points.clone())).color(UNIVERSAL));
            p.points(
                Points::new("", PlotPoints::from(points))
                    .radius(3.0)
                    .color(UNIVERSAL),
            );
            p.hline(
                egui_plot::HLine::new("threshold", threshold)
                    .color(egui::Color32::RED)
                    .width(1.5),
            );
            if let Some(k) = crossing {
                p.vline(VLine::new("crosses", k as f64).color(egui::Color32::LIGHT_GREEN));
            }
        });
}

/// The step at which neuron `neuron` first crosses the threshold, or `-`.
fn crossing_step(t: &Trajectory, neuron: usize, threshold: f64) -> String {
    t.crossing(neuron, threshold)
        .map_or("-".to_string(), |k| format!("from {}", t.steps[k].label))
}

/// In words: when neuron `neuron` crosses the threshold.
pub fn crossing_text(t: &Trajectory, neuron: usize, threshold: f64) -> String {
    match t.crossing(neuron, threshold) {
        Some(k) => {
            let stays = t.excess_corr[k..]
                .iter()
                .all(|s| s.get(neuron).is_some_and(|&e| e as f64 > threshold));
            format!(
                "crosses {threshold:.2} at step {}{}",
                t.steps[k].label,
                if stays {
                    " and stays above"
                } else {
                    ", not for good"
                }
            )
        }
        None => format!("never above {threshold:.2} in these steps"),
    }
}

impl TrainingView {
    /// The view of `shared`'s bundle.
    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared<'_>) -> Option<Action> {
        let ex = shared.ex;
        let Some(t) = ex.trajectory.as_ref() else {
            ui.heading("Universality over training");
            ui.label(
                "This bundle has no trajectory. Analyse a series of training checkpoints of the \
                 same seeds, e.g. `seedscope analyze --models preset-or-dirs --steps \
                 1000,10000,final` (model directories: their checkpoint-N subdirectories, as \
                 `seedscope train --save-steps` writes them), and open the last step's bundle.",
            );
            return None;
        };
        let threshold = shared.threshold;
        let mut action = None;
        ui.horizontal_wrapped(|ui| {
            ui.heading("Universality over training");
            ui.label(format!(
                "anchor {} · {} steps ({}) · threshold {threshold:.2}",
                t.anchor,
                t.steps.len(),
                t.steps
                    .iter()
                    .map(|s| s.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        });
        // The neurons with the largest excess at the last step; the first is shown until
        // another is picked.
        let width = t.n_layers * t.d_mlp;
        let mut top: Vec<usize> = (0..width).collect();
        if let Some(last) = t.excess_corr.last() {
            top.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        }
        top.truncate(LISTED);
        let neuron = self.shown.filter(|&i| i < width).or(top.first().copied());
        let fractions = t.fractions(threshold);
        let avail = ui.available_size();
        let w = ((avail.x - 24.0) / 2.0).max(240.0);
        let h = (avail.y - 140.0).clamp(180.0, 480.0);
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                ui.strong("Universal neurons per layer (%) against the step");
                let resp = step_plot("fraction-over-training", t, egui::vec2(w, h))
                    .include_y(1.0)
                    .y_axis_label("% universal")
                    .show(ui, |p| {
                        for l in 0..t.n_layers {
                            let pts: Vec<[f64; 2]> = fractions
                                .iter()
                                .enumerate()
                                .map(|(k, f)| [k as f64, 100.0 * f.1[l]])
                                .collect();
                            p.line(Line::new(format!("layer {l}"), PlotPoints::from(pts)));
                        }
                        let all: Vec<[f64; 2]> = fractions
                            .iter()
                            .enumerate()
                            .map(|(k, f)| [k as f64, 100.0 * f.0])
                            .collect();
                        p.line(
                            Line::new("all layers", PlotPoints::from(all))
                                .color(UNIVERSAL)
                                .width(3.0),
                        );
                    });
                self.plot_rect = Some(resp.response.rect);
            });
            ui.vertical(|ui| {
                let Some(i) = neuron else {
                    return;
                };
                let id = NeuronId {
                    model: 0,
                    layer: i / t.d_mlp,
                    neuron: i % t.d_mlp,
                };
                ui.horizontal(|ui| {
                    ui.strong(format!("{} {}: excess over training", t.anchor, id.short()));
                    if ui.small_button("open").clicked() {
                        action = Some(Action::OpenNeuron(id));
                    }
                });
                excess_plot(ui, t, i, threshold, egui::vec2(w, h));
                ui.label(crossing_text(t, i, threshold));
            });
        });
        ui.separator();
        ui.horizontal_wrapped(|ui| {
            ui.label("Largest excess at the last step:");
            for &i in &top {
                let id = NeuronId {
                    model: 0,
                    layer: i / t.d_mlp,
                    neuron: i % t.d_mlp,
                };
                let text = format!("{} ({})", id.short(), crossing_step(t, i, threshold));
                if ui.selectable_label(neuron == Some(i), text).clicked() {
                    self.shown = Some(i);
                }
            }
        });
        ui.label(format!(
            "Fraction universal at {threshold:.2}: {}",
            t.steps
                .iter()
                .zip(&fractions)
                .map(|(s, f)| format!("{} {:.2}%", s.label, 100.0 * f.0))
                .collect::<Vec<_>>()
                .join(" · ")
        ));
        action
    }
}
