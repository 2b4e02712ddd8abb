//! The neuron page: a neuron's statistics with within-layer percentiles, its best match in
//! every other seed, their max-activating examples side by side, and live text. Examples and
//! live text run the bundle's models in background tasks this view owns; where there are no
//! models (the browser) the examples the bundle stores are shown.

use std::collections::HashMap;

use egui::{Color32, RichText};

use super::{Action, Shared};
use crate::data::{Example, Examples};
use crate::data::{Explorer, NEURON_STATS, NeuronId};
use crate::inspect::LiveText;
use crate::jobs::{Poll, Task};
use crate::widgets::{UNIVERSAL, display_token, token_job};

/// The neuron page's state: examples and live text for the neurons shown.
#[derive(Default)]
pub struct NeuronView {
    /// Examples per neuron.
    pub examples: HashMap<NeuronId, Examples>,
    /// Running example scan.
    pub examples_task: Option<Task<Vec<Examples>>>,
    /// Live text result and the text it was for.
    pub live: Option<(String, LiveText)>,
    /// Running live-text task and what it was asked.
    pub live_task: Option<(Task<LiveText>, String, Vec<NeuronId>)>,
    /// Show whole rows instead of windows.
    pub expand: bool,
    /// The text and neurons whose live run failed (not retried until they change).
    pub live_failed: Option<(String, Vec<NeuronId>)>,
    /// Give the live text field the keyboard on the next frame (the T key).
    pub focus_live: bool,
    /// Find the examples on the next frame, as the button does (the E key).
    pub find_examples: bool,
}

/// The neurons shown side by side: `selected` and its best match in each other seed.
pub fn page_neurons(ex: &Explorer, selected: Option<NeuronId>) -> Vec<NeuronId> {
    let Some(id) = selected else {
        return Vec::new();
    };
    std::iter::once(id)
        .chain(ex.matches(id).into_iter().map(|m| m.id))
        .collect()
}

impl NeuronView {
    /// Take finished example scans and live-text runs; a finished one is also a line for the
    /// platform's log (`names`: the bundle's models).
    fn poll(&mut self, names: &[String]) -> Option<Action> {
        let mut action = None;
        if let Some(t) = &mut self.examples_task
            && let Poll::Done(r) = t.poll()
        {
            self.examples_task = None;
            match r {
                Ok(list) => {
                    action = Some(Action::Log(examples_line(names, &list)));
                    self.examples.extend(list.into_iter().map(|e| (e.id, e)));
                }
                Err(e) => action = Some(Action::Error(format!("examples: {e}"))),
            }
        }
        if let Some((t, text, neurons)) = &mut self.live_task
            && let Poll::Done(r) = t.poll()
        {
            let (text, neurons) = (std::mem::take(text), std::mem::take(neurons));
            self.live_task = None;
            match r {
                Ok(l) => {
                    action = Some(Action::Log(live_line(names, &text, &l)));
                    self.live = Some((text, l));
                }
                Err(e) => {
                    self.live_failed = Some((text, neurons));
                    action = Some(Action::Error(format!("live text: {e}")));
                }
            }
        }
        action
    }

    /// Find examples of `neurons`: a scan by the models, or the bundle's stored examples where
    /// there are no models.
    fn request_examples(
        &mut self,
        shared: &Shared<'_>,
        neurons: Vec<NeuronId>,
        ctx: &egui::Context,
    ) -> Option<Action> {
        if self.examples_task.is_some() {
            return None;
        }
        let models = match shared.models {
            Ok(m) if m.has_data() => m.clone(),
            _ => {
                return match shared.ex.stored_examples(&neurons) {
                    Ok(list) => {
                        self.examples.extend(list.into_iter().map(|e| (e.id, e)));
                        None
                    }
                    Err(e) => Some(Action::Error(e.to_string())),
                };
            }
        };
        let (k, rows) = (shared.settings.examples_k, shared.settings.examples_rows);
        self.examples_task = Some(Task::spawn_async(
            "examples",
            Some(ctx.clone()),
            move |rep| async move { models.examples(&neurons, k, rows, &rep).await },
        ));
        None
    }

    /// Run the live text for `neurons` (one run at a time: when it finishes, a stale result
    /// asks again).
    fn request_live(&mut self, shared: &Shared<'_>, neurons: Vec<NeuronId>, ctx: &egui::Context) {
        if self.live_task.is_some() {
            return;
        }
        let Ok(models) = shared.models else { return };
        let models = models.clone();
        let text = shared.settings.live_text.clone();
        let (t2, n2) = (text.clone(), neurons.clone());
        self.live_task = Some((
            Task::spawn_async("live text", Some(ctx.clone()), move |_| async move {
                models.live_text(&t2, &n2).await
            }),
            text,
            neurons,
        ));
    }

    /// The neuron page.
    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared<'_>) -> Option<Action> {
        let mut action = self.poll(&shared.ex.names);
        let ex = shared.ex.clone();
        let Some(id) = shared.selected else {
            ui.label("Choose a neuron in the table or the correlation map.");
            return action;
        };
        let neurons = page_neurons(&ex, Some(id));
        let row = ex.row(id).cloned();
        let mut act = |a: Option<Action>| {
            if a.is_some() {
                action = a;
            }
        };
        ui.horizontal(|ui| {
            if ui
                .button("<")
                .on_hover_text("previous neuron in the table (Left arrow)")
                .clicked()
            {
                act(Some(Action::Step(-1)));
            }
            if ui
                .button(">")
                .on_hover_text("next neuron in the table (Right arrow)")
                .clicked()
            {
                act(Some(Action::Step(1)));
            }
            ui.heading(format!("{} {}", ex.names[id.model], id.short()));
            if let Some(r) = &row {
                if r.excess_corr > shared.threshold {
                    ui.label(RichText::new("universal").strong().color(UNIVERSAL));
                } else {
                    ui.label("not universal");
                }
                ui.label(format!("excess correlation {:.3}", r.excess_corr));
            }
            if ui.button("show in correlation map").clicked()
                && let Some(m) = ex.matches(id).first()
            {
                act(Some(Action::ShowInMap {
                    anchor: id,
                    other: m.id,
                }));
            }
        });
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.columns(2, |cols| {
                statistics(&mut cols[0], &ex, id, row.as_ref());
                act(facts(&mut cols[1], &ex, id, row.as_ref()));
            });
            // Its own trajectory, when the bundle ends a series of training checkpoints.
            if let Some(t) = ex.trajectory.as_ref().filter(|_| id.model == 0) {
                ui.separator();
                let i = id.layer * t.d_mlp + id.neuron;
                ui.strong(format!(
                    "Over training: {}",
                    super::training::crossing_text(t, i, shared.threshold)
                ));
                let w = ui.available_width().min(640.0);
                super::training::excess_plot(ui, t, i, shared.threshold, egui::vec2(w, 180.0));
            }
            ui.separator();
            act(self.live_ui(ui, shared, &neurons));
            ui.separator();
            act(self.examples_ui(ui, shared, &neurons));
        });
        action
    }

    /// Live text: the neuron and its matches on every token of the text, all seeds at once.
    fn live_ui(
        &mut self,
        ui: &mut egui::Ui,
        shared: &mut Shared<'_>,
        neurons: &[NeuronId],
    ) -> Option<Action> {
        ui.horizontal(|ui| {
            let label = ui
                .strong("Live text")
                .on_hover_text("the neuron and its matches on every token (T: type here)");
            let edit = ui.add(
                egui::TextEdit::singleline(&mut shared.settings.live_text)
                    .desired_width(ui.available_width() - 20.0),
            );
            if std::mem::take(&mut self.focus_live) {
                edit.request_focus();
            }
            if self.live_task.is_some() {
                ui.spinner();
            }
            edit.labelled_by(label.id);
        });
        if let Err(why) = shared.models {
            ui.weak(why.as_str());
            return None;
        }
        let text = &shared.settings.live_text;
        let fresh = self.live.as_ref().is_some_and(|(t, l)| {
            t == text && l.traces.iter().map(|t| t.id).eq(neurons.iter().copied())
        });
        let failed = self
            .live_failed
            .as_ref()
            .is_some_and(|(t, n)| t == text && n == neurons);
        if !fresh && !failed {
            self.request_live(shared, neurons.to_vec(), ui.ctx());
        }
        if let Some((_, live)) = &self.live {
            live_rows(ui, shared.ex, live);
        }
        None
    }

    /// Max-activating examples of the neuron and its matches, side by side.
    fn examples_ui(
        &mut self,
        ui: &mut egui::Ui,
        shared: &Shared<'_>,
        neurons: &[NeuronId],
    ) -> Option<Action> {
        let mut action = None;
        ui.horizontal(|ui| {
            ui.strong("Max-activating examples");
            let missing: Vec<NeuronId> = neurons
                .iter()
                .copied()
                .filter(|n| !self.examples.contains_key(n))
                .collect();
            if let Some(t) = &self.examples_task {
                ui.spinner();
                if let Some(p) = &t.progress {
                    ui.add(
                        egui::ProgressBar::new(p.fraction())
                            .desired_width(160.0)
                            .show_percentage(),
                    );
                }
                if ui.button("Cancel").clicked() {
                    t.cancel();
                }
            } else if !missing.is_empty()
                && (std::mem::take(&mut self.find_examples)
                    || ui
                        .button(match shared.models {
                            Ok(m) if m.has_data() => format!(
                                "Find them (first {} rows of the bundle's data, all {} seeds)",
                                shared.settings.examples_rows,
                                neurons.len()
                            ),
                            _ => "Show the examples the bundle stores (the anchor's top 20)".into(),
                        })
                        .on_hover_text("E")
                        .clicked())
            {
                action = self.request_examples(shared, missing, ui.ctx());
            }
            ui.checkbox(&mut self.expand, "whole rows");
        });
        let settings = &shared.settings;
        ui.columns(neurons.len().max(1), |cols| {
            for (ui, n) in cols.iter_mut().zip(neurons) {
                ui.push_id(n, |ui| {
                    ui.strong(format!("{} {}", shared.ex.names[n.model], n.short()));
                    let Some(e) = self.examples.get(n) else {
                        return;
                    };
                    if e.top.is_empty() && e.scanned == 0 {
                        ui.weak(shared.ex.why_no_stored_examples(n.model));
                        return;
                    }
                    let toks: Vec<String> = e
                        .top_tokens
                        .iter()
                        .take(5)
                        .map(|(t, m, _)| format!("{t:?} {m:.2}"))
                        .collect();
                    if !toks.is_empty() {
                        ui.label(format!("top tokens: {}", toks.join(", ")))
                            .on_hover_text(
                                "tokens with the highest mean activation (seen at least 3 \
                                 times; positive and at least 1 % of the highest)",
                            );
                    }
                    let scale = e.top.first().map_or(1.0, |x| x.value.abs().max(1e-6));
                    for x in &e.top {
                        let range = if self.expand {
                            0..x.tokens.len()
                        } else {
                            x.pos.saturating_sub(settings.window_before)
                                ..(x.pos + 1 + settings.window_after).min(x.tokens.len())
                        };
                        example_row(ui, x, scale, range);
                    }
                });
            }
        });
        action
    }
}

/// The neuron's statistics with their within-layer percentiles (ranked when the bundle opened).
fn statistics(
    ui: &mut egui::Ui,
    ex: &Explorer,
    id: NeuronId,
    row: Option<&seedscope_analysis::NeuronRow>,
) {
    ui.strong("Statistics (percentile within the layer)");
    let Some(r) = row else {
        ui.label(
            "This seed was not an anchor of the analysis (run with --all-anchors for its \
             statistics).",
        );
        return;
    };
    egui::Grid::new("stats").striped(true).show(ui, |ui| {
        for (k, (name, f)) in NEURON_STATS.iter().enumerate() {
            if f(r).is_nan() {
                continue;
            }
            ui.label(*name);
            ui.label(format!("{:.4}", f(r)));
            ui.label(format!("{:.0}%", ex.percentile(id, k).unwrap_or(f64::NAN)));
            ui.end_row();
        }
    });
}

/// What the bundle says the neuron responds to: family, best features, top tokens, vocabulary
/// role and projection, pre-activation histogram, and its best match in every other seed.
fn facts(
    ui: &mut egui::Ui,
    ex: &Explorer,
    id: NeuronId,
    row: Option<&seedscope_analysis::NeuronRow>,
) -> Option<Action> {
    if let Some(r) = row
        && !r.family.is_empty()
    {
        ui.label(format!(
            "family: {} (best token feature {}, variance explained {:.3}; mutual information \
             with position {:.3} nats)",
            r.family,
            display_token(&r.best_feature),
            r.best_vr,
            r.pos_mi
        ));
    }
    let best = ex.best_features(id);
    if !best.is_empty() {
        let text: Vec<String> = best
            .iter()
            .map(|(f, vr)| format!("{} {vr:.3}", display_token(f)))
            .collect();
        ui.label(format!(
            "token features by variance explained: {}",
            text.join(", ")
        ));
    }
    let means = ex.mean_top_tokens(id);
    if let (false, Some(tok)) = (means.is_empty(), ex.tokenizer()) {
        let text: Vec<String> = means
            .iter()
            .map(|(t, m)| {
                let s = tok.decode(&[*t]).unwrap_or_default();
                format!("\"{}\" {m:.2}", display_token(&s))
            })
            .collect();
        ui.label(format!(
            "highest mean activation over the analysed data: {}",
            text.join(" ")
        ));
    }
    if let Some(r) = row
        && let Some(role) =
            seedscope_analysis::weights::vocab_role(r.vocab_kurt, r.vocab_skew, r.vocab_var)
    {
        ui.label(format!(
            "role from the vocabulary projection: {role} (kurtosis {:.1}, skew {:.2}, variance \
             {:.4})",
            r.vocab_kurt, r.vocab_skew, r.vocab_var
        ));
    }
    if let (Some((top, bottom)), Some(tok)) = (ex.vocab_ends(id), ex.tokenizer()) {
        let show = |ids: &[i32]| -> String {
            ids.iter()
                .map(|&t| {
                    let s = u32::try_from(t)
                        .ok()
                        .and_then(|t| tok.decode(&[t]).ok())
                        .unwrap_or_else(|| format!("<{t}>"));
                    format!("{:?}", display_token(&s))
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        ui.strong("Vocabulary projection cos(W_U, w_out)");
        ui.label(format!("promotes: {}", show(top)));
        ui.label(format!("suppresses: {}", show(bottom)));
        ui.add_space(6.0);
    }
    if let Some(h) = ex.histogram(id) {
        histogram_plot(ui, h);
    }
    ui.strong("Best match in each other seed");
    let mut open = None;
    egui::Grid::new("matches").striped(true).show(ui, |ui| {
        ui.label("seed");
        ui.label("neuron");
        ui.label("r");
        ui.label("most negative r");
        ui.label("baseline r");
        ui.end_row();
        for m in ex.matches(id) {
            ui.label(&ex.names[m.id.model]);
            if ui.link(m.id.short()).clicked() {
                open = Some(m.id);
            }
            ui.label(format!("{:.3}", m.corr));
            ui.label(format!("{:.3}", m.min_corr));
            ui.label(format!("{:.3}", m.baseline));
            ui.end_row();
        }
    });
    open.map(Action::OpenNeuron)
}

fn example_row(ui: &mut egui::Ui, e: &Example, scale: f32, range: std::ops::Range<usize>) {
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new(format!("{:.2}", e.value)).monospace().small());
        ui.label(token_job(&e.tokens, &e.acts, scale, Some(e.pos), range, ui));
    });
}

fn live_rows(ui: &mut egui::Ui, ex: &Explorer, live: &LiveText) {
    egui::Grid::new("live").num_columns(2).show(ui, |ui| {
        for t in &live.traces {
            // The scale skips BOS, whose activation is often far from the rest.
            let scale = t
                .acts
                .iter()
                .skip(1)
                .fold(0.0f32, |a, v| a.max(v.abs()))
                .max(1e-6);
            ui.label(format!("{} {}", ex.names[t.id.model], t.id.short()))
                .on_hover_text(format!("max |activation| {scale:.3}"));
            ui.label(token_job(
                &live.tokens,
                &t.acts,
                scale,
                None,
                0..live.tokens.len(),
                ui,
            ));
            ui.end_row();
        }
    });
}

/// The pre-activation histogram on the paper's edges, over the bins that hold counts.
fn histogram_plot(ui: &mut egui::Ui, counts: &[u32]) {
    use egui_plot::{Bar, BarChart, Plot, VLine};
    let centres = seedscope_analysis::hist::centres();
    let edges = seedscope_analysis::hist::edges();
    let step = edges[1] - edges[0];
    let used: Vec<usize> = (0..counts.len()).filter(|&b| counts[b] > 0).collect();
    let (Some(&lo), Some(&hi)) = (used.first(), used.last()) else {
        return;
    };
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    let bars: Vec<Bar> = (lo..=hi)
        .map(|b| Bar::new(centres[b], counts[b] as f64 / total).width(step))
        .collect();
    ui.strong("Pre-activation histogram (share of tokens; the line at 0)");
    Plot::new("pre-hist")
        .height(120.0)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .show(ui, |p| {
            p.bar_chart(BarChart::new("pre-activation", bars).color(UNIVERSAL));
            p.vline(VLine::new("0", 0.0).color(Color32::GRAY));
        });
}

/// A finished live text as one line for the platform's log: `seedscope-live` and JSON with
/// the text, its tokens and each neuron's trace (model name, layer, neuron, activations).
fn live_line(names: &[String], text: &str, live: &LiveText) -> String {
    let traces: Vec<serde_json::Value> = live
        .traces
        .iter()
        .map(|t| {
            serde_json::json!({
                "model": names.get(t.id.model),
                "layer": t.id.layer,
                "neuron": t.id.neuron,
                "acts": t.acts,
            })
        })
        .collect();
    let json = serde_json::json!({ "text": text, "tokens": live.tokens, "traces": traces });
    format!("seedscope-live {json}")
}

/// Finished example scans as one line for the platform's log: `seedscope-examples` and JSON
/// with each neuron's tokens scanned and its top activations.
fn examples_line(names: &[String], list: &[Examples]) -> String {
    let neurons: Vec<serde_json::Value> = list
        .iter()
        .map(|e| {
            serde_json::json!({
                "model": names.get(e.id.model),
                "layer": e.id.layer,
                "neuron": e.id.neuron,
                "scanned": e.scanned,
                "top": e.top.iter().map(|x| x.value).collect::<Vec<_>>(),
            })
        })
        .collect();
    format!("seedscope-examples {}", serde_json::json!(neurons))
}
