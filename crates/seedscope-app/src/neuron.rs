//! The neuron page: a neuron's statistics with within-layer percentiles, its best match in
//! every other seed, their max-activating examples side by side, and live text.

use egui::text::{LayoutJob, TextFormat};
use egui::{Color32, FontId, RichText};

use crate::app::SeedscopeApp;
use crate::data::{Explorer, NeuronId};
use crate::inspect::{Example, LiveText};
use crate::jobs::Task;
use crate::overview::UNIVERSAL;

pub use seedscope_analysis::bundle::percentile_of_score as percentile;

/// Background colour for an activation `v` when the neuron's scale is `scale` (its max).
fn act_color(v: f32, scale: f32, dark: bool) -> Color32 {
    let t = if scale > 0.0 {
        (v / scale).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    if t >= 0.0 {
        let a = (t * 220.0) as u8;
        Color32::from_rgba_unmultiplied(240, 130, 40, a)
    } else {
        let a = (-t * 160.0) as u8;
        if dark {
            Color32::from_rgba_unmultiplied(80, 140, 240, a)
        } else {
            Color32::from_rgba_unmultiplied(40, 90, 220, a)
        }
    }
}

/// A token as the default fonts can draw it: newlines and tabs as escapes, characters outside
/// Latin, Greek, Cyrillic and common punctuation as `<U+XXXX>`.
pub fn display_token(t: &str) -> String {
    let mut out = String::new();
    for c in t.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (' '..='\u{04ff}').contains(&c) || ('\u{2010}'..='\u{2027}').contains(&c) => {
                out.push(c)
            }
            c => out.push_str(&format!("<U+{:04X}>", c as u32)),
        }
    }
    out
}

/// Tokens as one wrapped text with each token's background showing its activation.
pub fn token_job(
    tokens: &[String],
    acts: &[f32],
    scale: f32,
    mark: Option<usize>,
    range: std::ops::Range<usize>,
    ui: &egui::Ui,
) -> LayoutJob {
    let mut job = LayoutJob::default();
    let dark = ui.visuals().dark_mode;
    let text_color = ui.visuals().text_color();
    for i in range {
        let (Some(t), Some(&v)) = (tokens.get(i), acts.get(i)) else {
            continue;
        };
        let shown = display_token(t);
        job.append(
            &shown,
            0.0,
            TextFormat {
                font_id: FontId::monospace(13.0),
                color: text_color,
                background: act_color(v, scale, dark),
                underline: if Some(i) == mark {
                    egui::Stroke::new(1.5, UNIVERSAL)
                } else {
                    egui::Stroke::NONE
                },
                ..Default::default()
            },
        );
    }
    job
}

impl SeedscopeApp {
    /// The neurons shown side by side: the selected one and its best match in each other seed.
    pub fn page_neurons(&self, ex: &Explorer) -> Vec<NeuronId> {
        let Some(id) = self.selected else {
            return Vec::new();
        };
        std::iter::once(id)
            .chain(ex.matches(id).into_iter().map(|m| m.id))
            .collect()
    }

    fn request_examples(&mut self, neurons: Vec<NeuronId>) {
        if self.page.examples_task.is_some() {
            return;
        }
        if cfg!(target_arch = "wasm32") {
            // The browser does not run the models: the examples the bundle stores.
            if let Some(ex) = self.ex.clone() {
                match ex.stored_examples(&neurons) {
                    Ok(list) => {
                        for e in list {
                            self.page.examples.insert(e.id, e);
                        }
                    }
                    Err(e) => self.error(e),
                }
            }
            return;
        }
        let Some(models) = self.models() else { return };
        let (k, rows) = (self.settings.examples_k, self.settings.examples_rows);
        let ctx = self.ctx_clone();
        self.page.examples_task = Some(Task::spawn("examples", ctx, move |rep| {
            models.examples(&neurons, k, rows, rep)
        }));
    }

    fn request_live(&mut self, neurons: Vec<NeuronId>) {
        // One at a time: when it finishes, a stale result asks again.
        if self.page.live_task.is_some() {
            return;
        }
        let text = self.settings.live_text.clone();
        let Some(models) = self.models() else { return };
        let ctx = self.ctx_clone();
        let (t2, n2) = (text.clone(), neurons.clone());
        self.page.live_task = Some((
            Task::spawn("live text", ctx, move |_| models.live_text(&t2, &n2)),
            text,
            neurons,
        ));
    }

    /// The neuron page.
    pub(crate) fn neuron_view(&mut self, ui: &mut egui::Ui, ex: &Explorer) {
        let Some(id) = self.selected else {
            ui.label("Choose a neuron in the table or the correlation map.");
            return;
        };
        let neurons = self.page_neurons(ex);
        let row = ex.row(id).cloned();
        ui.horizontal(|ui| {
            if ui
                .button("<")
                .on_hover_text("previous neuron in the table (Left arrow)")
                .clicked()
            {
                self.step(-1);
            }
            if ui
                .button(">")
                .on_hover_text("next neuron in the table (Right arrow)")
                .clicked()
            {
                self.step(1);
            }
            ui.heading(format!("{} {}", ex.names[id.model], id.short()));
            if let Some(r) = &row {
                if r.excess_corr > self.threshold {
                    ui.label(RichText::new("universal").strong().color(UNIVERSAL));
                } else {
                    ui.label("not universal");
                }
                ui.label(format!("excess correlation {:.3}", r.excess_corr));
            }
            if ui.button("show in correlation map").clicked()
                && let Some(m) = ex.matches(id).first()
            {
                self.map.anchor = id.model;
                self.map.layer_a = id.layer;
                self.map.other = m.id.model;
                self.map.layer_b = m.id.layer;
                self.load_map();
                if let Some(d) = &self.map.data {
                    let (r, c) = (id.neuron as f32, m.id.neuron as f32);
                    let half = (d.rows as f32 / 16.0).max(8.0);
                    self.map.view.min = [c - half, r - half];
                    self.map.view.max = [c + half, r + half];
                }
                self.tab = crate::app::Tab::Map;
            }
        });
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.columns(2, |cols| {
                // Statistics with within-layer percentiles.
                let ui = &mut cols[0];
                ui.strong("Statistics (percentile within the layer)");
                match (&row, ex.anchor(id.model)) {
                    (Some(r), Some(a)) => {
                        let layer_rows: Vec<&seedscope_analysis::NeuronRow> = a
                            .rows
                            .iter()
                            .map(|&i| &ex.rows()[i])
                            .filter(|x| x.layer == id.layer)
                            .collect();
                        type Stat = (&'static str, fn(&seedscope_analysis::NeuronRow) -> f64);
                        let stats: [Stat; 21] = [
                            ("mean best r over seeds", |r| r.mean_corr),
                            ("max best r", |r| r.max_corr),
                            ("min best r", |r| r.min_corr),
                            ("baseline (mean)", |r| r.mean_baseline),
                            ("excess correlation", |r| r.excess_corr),
                            ("activation mean", |r| r.act_mean),
                            ("activation variance", |r| r.act_var),
                            ("pre-activation mean", |r| r.mean),
                            ("pre-activation variance", |r| r.var),
                            ("pre-activation skew", |r| r.skew),
                            ("pre-activation kurtosis", |r| r.kurt),
                            ("activation frequency", |r| r.sparsity),
                            ("w_in norm", |r| r.w_in_norm),
                            ("input bias", |r| r.input_bias),
                            ("w_out norm", |r| r.w_out_norm),
                            ("cos(w_in, w_out)", |r| r.in_out_sim),
                            ("l2 penalty", |r| r.l2_penalty),
                            ("vocab mean", |r| r.vocab_mean),
                            ("vocab var", |r| r.vocab_var),
                            ("vocab skew", |r| r.vocab_skew),
                            ("vocab kurt", |r| r.vocab_kurt),
                        ];
                        egui::Grid::new("stats").striped(true).show(ui, |ui| {
                            for (name, f) in stats {
                                if f(r).is_nan() {
                                    continue;
                                }
                                let vals: Vec<f64> = layer_rows.iter().map(|x| f(x)).collect();
                                ui.label(name);
                                ui.label(format!("{:.4}", f(r)));
                                ui.label(format!("{:.0}%", percentile(&vals, f(r))));
                                ui.end_row();
                            }
                        });
                    }
                    _ => {
                        ui.label("This seed was not an anchor of the analysis (run with --all-anchors for its statistics).");
                    }
                }
                let ui = &mut cols[1];
                if let Some(r) = &row
                    && !r.family.is_empty()
                {
                    ui.label(format!(
                        "family: {} (best token feature {}, variance explained {:.3}; mutual \
                         information with position {:.3} nats)",
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
                if let Some(r) = &row
                    && let Some(role) = seedscope_analysis::weights::vocab_role(
                        r.vocab_kurt,
                        r.vocab_skew,
                        r.vocab_var,
                    )
                {
                    ui.label(format!(
                        "role from the vocabulary projection: {role} (kurtosis {:.1}, skew {:.2}, \
                         variance {:.4})",
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
                let matches = ex.matches(id);
                let mut open = None;
                egui::Grid::new("matches").striped(true).show(ui, |ui| {
                    ui.label("seed");
                    ui.label("neuron");
                    ui.label("r");
                    ui.label("most negative r");
                    ui.label("baseline r");
                    ui.end_row();
                    for m in &matches {
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
                if let Some(o) = open {
                    self.open_neuron(o);
                }
            });
            ui.separator();
            // Live text.
            ui.horizontal(|ui| {
                let label = ui.strong("Live text");
                let edit = ui.add(
                    egui::TextEdit::singleline(&mut self.settings.live_text)
                        .desired_width(ui.available_width() - 20.0),
                );
                if self.page.live_task.is_some() {
                    ui.spinner();
                }
                edit.labelled_by(label.id);
            });
            let fresh = self.page.live.as_ref().is_some_and(|(text, l)| {
                *text == self.settings.live_text
                    && l.traces.iter().map(|t| t.id).eq(neurons.iter().copied())
            });
            let failed = self.page.live_failed.as_ref().is_some_and(|(t, n)| {
                *t == self.settings.live_text && *n == neurons
            });
            if !fresh && !failed {
                self.request_live(neurons.clone());
            }
            if let Some((_, live)) = self.page.live.clone() {
                self.live_rows(ui, ex, &live);
            }
            ui.separator();
            // Examples side by side.
            ui.horizontal(|ui| {
                ui.strong("Max-activating examples");
                let missing: Vec<NeuronId> = neurons
                    .iter()
                    .copied()
                    .filter(|n| !self.page.examples.contains_key(n))
                    .collect();
                if let Some(t) = &self.page.examples_task {
                    ui.spinner();
                    if let Some(p) = &t.progress {
                        ui.add(egui::ProgressBar::new(p.fraction()).desired_width(160.0).show_percentage());
                    }
                    if ui.button("Cancel").clicked() {
                        t.cancel();
                    }
                } else if !missing.is_empty()
                    && ui
                        .button(if cfg!(target_arch = "wasm32") {
                            "Show the examples the bundle stores (the anchor's top 20)".to_string()
                        } else {
                            format!(
                                "Find them (first {} rows of the bundle's data, all {} seeds)",
                                self.settings.examples_rows,
                                neurons.len()
                            )
                        })
                        .clicked()
                {
                    self.request_examples(missing);
                }
                ui.checkbox(&mut self.page.expand, "whole rows");
            });
            let cols = neurons.len().max(1);
            ui.columns(cols, |cols| {
                for (ui, n) in cols.iter_mut().zip(&neurons) {
                    ui.push_id(n, |ui| {
                        ui.strong(format!("{} {}", ex.names[n.model], n.short()));
                        if let Some(e) = self.page.examples.get(n)
                            && e.top.is_empty()
                            && e.scanned == 0
                        {
                            ui.weak("none stored: bundles keep examples for their anchors' neurons");
                        } else if let Some(e) = self.page.examples.get(n) {
                            let toks: Vec<String> = e
                                .top_tokens
                                .iter()
                                .take(5)
                                .map(|(t, m, _)| format!("{:?} {m:.2}", t))
                                .collect();
                            if !toks.is_empty() {
                                ui.label(format!("top tokens: {}", toks.join(", ")))
                                .on_hover_text("tokens with the highest mean activation (seen at least 3 times; positive and at least 1 % of the highest)");
                            }
                            let scale = e.top.first().map_or(1.0, |x| x.value.abs().max(1e-6));
                            for ex_ in &e.top {
                                self.example_row(ui, ex_, scale);
                            }
                        }
                    });
                }
            });
        });
    }

    fn example_row(&self, ui: &mut egui::Ui, e: &Example, scale: f32) {
        let range = if self.page.expand {
            0..e.tokens.len()
        } else {
            e.pos.saturating_sub(self.settings.window_before)
                ..(e.pos + 1 + self.settings.window_after).min(e.tokens.len())
        };
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new(format!("{:.2}", e.value)).monospace().small());
            ui.label(token_job(&e.tokens, &e.acts, scale, Some(e.pos), range, ui));
        });
    }

    fn live_rows(&self, ui: &mut egui::Ui, ex: &Explorer, live: &LiveText) {
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
}

/// The pre-activation histogram on the paper's edges, over the bins that hold counts.
fn histogram_plot(ui: &mut egui::Ui, counts: &[u32]) {
    use egui_plot::{Bar, BarChart, Plot, VLine};
    let edges = seedscope_analysis::hist::edges();
    let step = edges[1] - edges[0];
    let centre = |b: usize| match b {
        0 => edges[0] - step / 2.0,
        b if b >= edges.len() => edges[edges.len() - 1] + step / 2.0,
        b => (edges[b - 1] + edges[b]) / 2.0,
    };
    let used: Vec<usize> = (0..counts.len()).filter(|&b| counts[b] > 0).collect();
    let (Some(&lo), Some(&hi)) = (used.first(), used.last()) else {
        return;
    };
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    let bars: Vec<Bar> = (lo..=hi)
        .map(|b| Bar::new(centre(b), counts[b] as f64 / total).width(step))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_shown_with_the_default_fonts_glyphs() {
        assert_eq!(display_token(" the"), " the");
        assert_eq!(display_token(".\n"), ".\\n");
        assert_eq!(display_token("\u{FFFD}"), "<U+FFFD>");
        assert_eq!(display_token("caf\u{e9}\u{2019}"), "caf\u{e9}\u{2019}");
    }
}
