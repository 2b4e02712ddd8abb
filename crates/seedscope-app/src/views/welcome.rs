//! What the window shows without a bundle (start an analysis, open a bundle, the log of a
//! running task), and the new-analysis form.

use std::path::PathBuf;

use egui::RichText;
use seedscope_analysis::job::{AnalysisRequest, DataSource};
use seedscope_model::BackendKind;

use super::Action;
use crate::widgets::choose;

/// The welcome page.
pub struct Welcome;

impl Welcome {
    /// The page: `analysing` / `opening` say what runs; `messages` is the log; `drop_hint`
    /// says what can be dropped here.
    pub fn ui(
        ui: &mut egui::Ui,
        analysing: bool,
        opening: bool,
        messages: &[String],
        drop_hint: &str,
    ) -> Option<Action> {
        let mut action = None;
        ui.vertical_centered(|ui| {
            ui.add_space(60.0);
            ui.heading("Seedscope");
            ui.label("Universal neurons across GPT-2 seeds (Gurnee et al. 2024)");
            ui.add_space(20.0);
            if analysing {
                ui.label(
                    "Analysing the embedded seed family (five 2-layer GPT-2 seeds on held-out \
                     text)…",
                );
                ui.label("The progress is in the status bar; the results open when it is done.");
            } else if opening {
                ui.label("Opening the bundle…");
            } else {
                if ui.button("Analyse the embedded seed family").clicked() {
                    action = Some(Action::AnalyseEmbedded);
                }
                if ui.button("Open a bundle…").clicked() {
                    action = Some(Action::AskBundle);
                }
                ui.label(drop_hint);
            }
            if !messages.is_empty() {
                ui.add_space(20.0);
                // The newest lines in view while a task logs.
                egui::ScrollArea::vertical()
                    .max_height(160.0)
                    .stick_to_bottom(true)
                    .show(ui, |ui| {
                        for m in messages {
                            ui.monospace(m);
                        }
                    });
            }
        });
        action
    }
}

/// The new-analysis form: models, data, budget, threshold, tiles, backend, output.
#[derive(Debug, Clone)]
pub struct NewAnalysis {
    /// Model directories, one per seed; empty = the embedded family.
    pub models: Vec<PathBuf>,
    /// Data file; `None` = the embedded eval tokens.
    pub data: Option<PathBuf>,
    /// Token budget (0 = all).
    pub max_tokens: u64,
    /// Threshold.
    pub threshold: f64,
    /// Save all tiles for the map.
    pub save_tiles: bool,
    /// The permutation null next to the rotation baseline.
    pub permutation_null: bool,
    /// The models in f16 where the GPU has shader-f16 (`--half`).
    pub half: bool,
    /// The f32 co-moment kernel even where the GPU has cooperative matrices
    /// (`--fp32-co-moments`).
    pub fp32_co_moments: bool,
    /// Backend.
    pub backend: BackendKind,
    /// Output bundle.
    pub out: String,
}

impl Default for NewAnalysis {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            data: None,
            max_tokens: 0,
            threshold: 0.5,
            save_tiles: true,
            permutation_null: false,
            half: false,
            fp32_co_moments: false,
            backend: BackendKind::Auto,
            out: "seedscope-out/bundle".into(),
        }
    }
}

impl NewAnalysis {
    /// The form as a window; `open` is cleared when it is closed.
    pub fn window(&mut self, ctx: &egui::Context, open: &mut bool) -> Option<Action> {
        let mut action = None;
        egui::Window::new("New analysis")
            .open(open)
            .collapsible(false)
            .show(ctx, |ui| action = self.ui(ui));
        action
    }

    fn ui(&mut self, ui: &mut egui::Ui) -> Option<Action> {
        let mut action = None;
        ui.label(
            RichText::new("Models (one directory per seed; the first is the anchor)").strong(),
        );
        if self.models.is_empty() {
            ui.label("none chosen: the embedded family seed-a…seed-e");
        }
        let mut remove = None;
        for (i, m) in self.models.iter().enumerate() {
            ui.horizontal(|ui| {
                ui.label(m.display().to_string());
                if ui.small_button("x").on_hover_text("remove").clicked() {
                    remove = Some(i);
                }
            });
        }
        if let Some(i) = remove {
            self.models.remove(i);
        }
        if ui.button("Add model directory…").clicked() {
            action = Some(Action::AskModel);
        }
        ui.separator();
        ui.horizontal(|ui| {
            ui.label("Data:");
            ui.label(
                self.data
                    .as_ref()
                    .map_or("the embedded eval tokens".into(), |p| {
                        p.display().to_string()
                    }),
            );
            if ui.button("Choose (.npy tokens, .txt, .jsonl)…").clicked() {
                action = Some(Action::AskData);
            }
        });
        egui::Grid::new("new-analysis")
            .num_columns(2)
            .show(ui, |ui| {
                let l = ui.label("Token budget (0 = all)");
                ui.add(egui::DragValue::new(&mut self.max_tokens).speed(1000))
                    .labelled_by(l.id);
                ui.end_row();
                let l = ui.label("Threshold (excess correlation)");
                ui.add(egui::Slider::new(&mut self.threshold, 0.0..=1.0))
                    .labelled_by(l.id);
                ui.end_row();
                ui.label("");
                ui.checkbox(&mut self.save_tiles, "Save tiles for the map");
                ui.end_row();
                ui.label("");
                ui.checkbox(
                    &mut self.permutation_null,
                    "Permutation null (chance alignment of tokens)",
                )
                .on_hover_text(
                    "also correlate with every other seed's activations in a shifted token \
                     order: the best correlation expected by chance at this token count",
                );
                ui.end_row();
                ui.label("");
                ui.checkbox(&mut self.half, "f16 models (GPU with shader-f16)")
                    .on_hover_text(
                        "compute the models in half precision where the GPU supports it: half \
                         the weight and activation memory; f32 elsewhere",
                    );
                ui.end_row();
                ui.label("");
                ui.checkbox(
                    &mut self.fp32_co_moments,
                    "f32 co-moments (no tensor cores)",
                )
                .on_hover_text(
                    "where the GPU has cooperative matrices (tensor cores), the co-moments \
                         multiply the block-centred activations in f16; this keeps the f32 \
                         kernel. The manifest's device line says which ran",
                );
                ui.end_row();
                let backends = [BackendKind::Auto, BackendKind::Wgpu, BackendKind::Cpu];
                ui.label("");
                choose(ui, "Backend", &mut self.backend, &backends, |b| {
                    b.to_string()
                });
                ui.end_row();
                let l = ui.label("Output bundle");
                ui.text_edit_singleline(&mut self.out).labelled_by(l.id);
                ui.end_row();
            });
        if ui.button("Start").clicked() {
            action = Some(match self.request() {
                Ok(r) => Action::Analyse(Box::new(r)),
                Err(e) => Action::Error(e),
            });
        }
        action
    }

    /// The analysis the form describes.
    pub fn request(&self) -> Result<AnalysisRequest, String> {
        if self.models.len() == 1 {
            return Err("choose at least two models (an anchor and another seed)".into());
        }
        let data = match &self.data {
            None => DataSource::Embedded,
            Some(p) => match p.extension().and_then(|e| e.to_str()) {
                Some("npy") => DataSource::Tokens(p.clone()),
                Some("jsonl") | Some("json") | Some("zst") => DataSource::Dataset(p.clone()),
                _ => DataSource::Text(p.clone()),
            },
        };
        Ok(AnalysisRequest {
            models: self.models.clone(),
            data,
            out: PathBuf::from(self.out.trim()),
            threshold: self.threshold,
            max_tokens: (self.max_tokens > 0).then_some(self.max_tokens),
            save_tiles: self.save_tiles.then(|| "all".to_string()),
            permutation_null: self.permutation_null,
            half: self.half,
            fp32_co_moments: self.fp32_co_moments,
            backend: self.backend,
            command: vec!["seedscope (app): new analysis".into()],
            ..AnalysisRequest::default()
        })
    }
}
