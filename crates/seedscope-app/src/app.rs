//! The application state, its menus, background work and keyboard handling. The views live in
//! `overview`, `table`, `neuron` and `map`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use egui::{Key, RichText};
use seedscope_analysis::job::{AnalysisRequest, DataSource};
use seedscope_model::BackendKind;

use crate::data::{Explorer, NeuronId};
use crate::heatmap::{CpuTexture, HeatmapView, MapData};
use crate::inspect::{Examples, LiveText, Models};
#[cfg(not(target_arch = "wasm32"))]
use crate::jobs::spawn_dialog;
use crate::jobs::{AnalysisDone, Pick, Poll, Task, spawn_analysis, spawn_open};
use crate::table::TableState;

/// Settings kept across restarts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The bundle open when the app last closed.
    pub last_bundle: Option<PathBuf>,
    /// Rows of the bundle's data scanned for max-activating examples.
    pub examples_rows: usize,
    /// Examples kept per neuron.
    pub examples_k: usize,
    /// Tokens shown before the max token of an example.
    pub window_before: usize,
    /// Tokens shown after it.
    pub window_after: usize,
    /// The live-text input.
    pub live_text: String,
    /// Dark theme.
    pub dark: bool,
    /// Recently opened bundles, newest first.
    pub recent: Vec<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            last_bundle: None,
            examples_rows: 256,
            examples_k: 20,
            window_before: 12,
            window_after: 4,
            live_text: "The king of France said that he would come to the castle on Monday.".into(),
            dark: true,
            recent: Vec::new(),
        }
    }
}

/// How the app was started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Launch {
    /// A bundle named on the command line.
    pub bundle: Option<PathBuf>,
    /// Where the embedded family's bundle is cached (analysed on first start).
    pub embedded_bundle: PathBuf,
    /// Start the embedded analysis when nothing else is there to open.
    pub analyse_embedded: bool,
    /// A bundle to fetch and open (the browser's `?bundle=URL`).
    pub bundle_url: Option<String>,
    /// Where the browser fetches the embedded family from (`family`, next to the page).
    pub family_url: String,
    /// A token budget for the browser's analysis of the embedded family (`?max_tokens=N`).
    pub max_tokens: Option<u64>,
}

/// The views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Fractions, distributions, Fig. 2.
    Overview,
    /// Neuron × neuron correlation heatmap.
    Map,
    /// Every neuron.
    Table,
    /// One neuron and its matches.
    Neuron,
}

/// The views with their names, in menu order.
const TABS: [(Tab, &str); 4] = [
    (Tab::Overview, "Overview"),
    (Tab::Map, "Correlation map"),
    (Tab::Table, "Table"),
    (Tab::Neuron, "Neuron"),
];

/// The correlation map's choices and state.
pub struct MapState {
    /// Anchor model.
    pub anchor: usize,
    /// The other model.
    pub other: usize,
    /// Anchor layer.
    pub layer_a: usize,
    /// Other layer.
    pub layer_b: usize,
    /// Zoom and pan.
    pub view: HeatmapView,
    /// The loaded tile.
    pub data: Option<MapData>,
    /// Why there is none.
    pub missing: Option<String>,
    /// CPU fallback texture.
    pub cpu_texture: Option<CpuTexture>,
    /// Last hovered cell's text, for tests and the status line.
    pub hover_text: Option<String>,
    /// Where the heatmap was last drawn.
    pub rect: Option<egui::Rect>,
    /// Rows ordered by their best correlation and columns by the rows' matches, so matched
    /// pairs lie on the diagonal.
    pub by_match: bool,
    /// The neuron shown in each displayed row.
    pub row_of: Vec<usize>,
    /// The neuron shown in each displayed column.
    pub col_of: Vec<usize>,
}

/// The neuron page's background results.
#[derive(Default)]
pub struct NeuronPageState {
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
}

/// The new-analysis dialog's fields.
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
    /// Backend.
    pub backend: BackendKind,
    /// Output bundle.
    pub out: String,
}

/// What a path prompt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogFor {
    OpenBundle,
    AddModel,
    Data,
    ExportCsv,
    ExportPng,
    ExportSvg,
}

/// A path being asked for.
pub struct PathPrompt {
    /// What it is for.
    pub purpose: DialogFor,
    /// The window title.
    pub title: String,
    /// What the system dialog should pick.
    pub pick: Pick,
    /// The path typed so far.
    pub text: String,
    browsing: Option<Task<Option<PathBuf>>>,
}

/// The Seedscope explorer.
pub struct SeedscopeApp {
    /// Persisted settings.
    pub settings: Settings,
    launch: Launch,
    /// The open bundle.
    pub ex: Option<Arc<Explorer>>,
    /// The current threshold (starts at the bundle's).
    pub threshold: f64,
    /// The current view.
    pub tab: Tab,
    /// The neuron shown on the neuron page.
    pub selected: Option<NeuronId>,
    /// Table filters and order.
    pub table: TableState,
    /// Correlation map.
    pub map: MapState,
    /// Neuron page.
    pub page: NeuronPageState,
    /// Running analysis.
    pub analysis: Option<Task<AnalysisDone>>,
    /// Opening a bundle (`None` when the browser's file picker was dismissed).
    opening: Option<Task<Option<Box<Explorer>>>>,
    /// The open path prompt.
    pub prompt: Option<PathPrompt>,
    pub(crate) models: Option<Arc<Models>>,
    /// A running token search.
    pub token_task: Option<Task<crate::inspect::TokenRanking>>,
    models_error: Option<String>,
    new_analysis: Option<NewAnalysis>,
    /// Notices shown in the corner for a few seconds: (is_error, text, since).
    pub notices: Vec<(bool, String, web_time::Instant)>,
    /// Messages shown in the log panel (errors and job logs).
    pub messages: Vec<String>,
    /// Whether heatmaps render on the GPU (a wgpu renderer is present).
    pub gpu: bool,
    ctx: Option<egui::Context>,
    png_result: Option<std::sync::mpsc::Receiver<Result<PathBuf, String>>>,
    /// The rectangle of the plot last drawn, for PNG export.
    pub plot_rect: Option<egui::Rect>,
    /// The browser's state (WebGPU available?).
    #[cfg(target_arch = "wasm32")]
    pub web: crate::web::WebState,
}

impl SeedscopeApp {
    /// Create the app from eframe's creation context: restore settings, register the heatmap
    /// pipelines with the wgpu renderer and open (or make) the first bundle.
    pub fn new(cc: &eframe::CreationContext<'_>, launch: Launch) -> Self {
        let settings: Settings = cc
            .storage
            .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            .unwrap_or_default();
        let gpu = match &cc.wgpu_render_state {
            // WebGL2 (the browser without WebGPU) has no storage buffers: CPU-pooled texture.
            Some(rs) if rs.adapter.get_info().backend == wgpu::Backend::Gl => false,
            Some(rs) => {
                crate::heatmap::register(rs);
                true
            }
            None => false,
        };
        cc.egui_ctx.set_theme(if settings.dark {
            egui::Theme::Dark
        } else {
            egui::Theme::Light
        });
        let mut app = Self {
            settings,
            launch,
            ex: None,
            threshold: 0.5,
            tab: Tab::Overview,
            selected: None,
            table: TableState::default(),
            map: MapState {
                anchor: 0,
                other: 1,
                layer_a: 0,
                layer_b: 0,
                view: HeatmapView::whole(1, 1),
                data: None,
                missing: None,
                cpu_texture: None,
                hover_text: None,
                rect: None,
                by_match: false,
                row_of: Vec::new(),
                col_of: Vec::new(),
            },
            page: NeuronPageState::default(),
            analysis: None,
            opening: None,
            prompt: None,
            models: None,
            token_task: None,
            models_error: None,
            new_analysis: None,
            notices: Vec::new(),
            messages: Vec::new(),
            gpu,
            ctx: Some(cc.egui_ctx.clone()),
            png_result: None,
            plot_rect: None,
            #[cfg(target_arch = "wasm32")]
            web: crate::web::WebState::new(cc.wgpu_render_state.as_ref()),
        };
        app.start();
        app
    }

    fn start(&mut self) {
        if let Some(url) = self.launch.bundle_url.clone() {
            self.open_url(url);
            return;
        }
        let first = self
            .launch
            .bundle
            .clone()
            .or_else(|| {
                self.settings
                    .last_bundle
                    .clone()
                    .filter(|p| p.join("manifest.json").exists())
            })
            .or_else(|| {
                Some(self.launch.embedded_bundle.clone())
                    .filter(|p| p.join("manifest.json").exists())
            });
        match first {
            Some(dir) => self.open_bundle(dir),
            None if self.launch.analyse_embedded => self.analyse_embedded(),
            None => {}
        }
    }

    /// Analyse the embedded family into the cached bundle (with tiles for the map).
    pub fn analyse_embedded(&mut self) {
        #[cfg(target_arch = "wasm32")]
        {
            if self.analysis.is_some() {
                self.error("an analysis is already running".into());
                return;
            }
            self.messages
                .push("analysing the embedded family in this browser".into());
            self.analysis = Some(crate::web::spawn_web_analysis(
                self.web.compute_device(),
                self.launch.family_url.clone(),
                self.launch.max_tokens,
                self.ctx.clone(),
            ));
            return;
        }
        #[allow(unreachable_code)]
        let request = AnalysisRequest {
            out: self.launch.embedded_bundle.clone(),
            save_tiles: Some("all".into()),
            command: vec!["seedscope (app): embedded family".into()],
            ..AnalysisRequest::default()
        };
        self.start_analysis(request);
    }

    /// Start an analysis in the background.
    pub fn start_analysis(&mut self, request: AnalysisRequest) {
        if self.analysis.is_some() {
            self.error("an analysis is already running".into());
            return;
        }
        self.messages
            .push(format!("analysing into {}", request.out.display()));
        self.analysis = Some(spawn_analysis(request, self.ctx.clone()));
    }

    /// Open a bundle in the background.
    pub fn open_bundle(&mut self, dir: PathBuf) {
        self.opening = Some(spawn_open(dir, self.ctx.clone()));
    }

    /// Fetch the bundle at `url` (a directory URL: its files are fetched by name) and open it.
    pub fn open_url(&mut self, url: String) {
        #[cfg(target_arch = "wasm32")]
        {
            self.web.heavy_url = Some(url.clone());
            self.opening = Some(crate::web::spawn_fetch_bundle(url, self.ctx.clone()));
        }
        #[cfg(not(target_arch = "wasm32"))]
        self.error(format!(
            "{url}: bundles open from URLs in the browser build; download the bundle's files \
             into a directory and open that"
        ));
    }

    /// Ask for a bundle: the path prompt natively, the file picker in the browser (choose the
    /// bundle's files).
    pub fn ask_bundle(&mut self) {
        #[cfg(target_arch = "wasm32")]
        {
            self.opening = Some(crate::web::spawn_pick_bundle(self.ctx.clone()));
        }
        #[cfg(not(target_arch = "wasm32"))]
        self.ask(
            DialogFor::OpenBundle,
            "Open a Seedscope bundle",
            Pick::Folder,
        );
    }

    /// Show an opened bundle.
    pub fn set_explorer(&mut self, ex: Explorer) {
        #[cfg(target_arch = "wasm32")]
        crate::web::console_log(&crate::web::summary_line(&ex));
        self.threshold = ex.bundle.manifest.options.threshold;
        // Only directories can be reopened from the settings.
        if let seedscope_analysis::bundle::BundleSource::Dir(dir) = &ex.source {
            self.settings.last_bundle = Some(dir.clone());
            self.settings.recent.retain(|r| r != dir);
            self.settings.recent.insert(0, dir.clone());
            self.settings.recent.truncate(8);
        }
        self.selected = ex.id_of_row(0);
        self.map.anchor = 0;
        self.map.other = ex
            .anchors
            .first()
            .and_then(|a| a.others.first().copied())
            .unwrap_or(0);
        self.map.layer_a = 0;
        self.map.layer_b = 0;
        self.map.data = None;
        self.map.missing = None;
        self.page = NeuronPageState::default();
        self.models = None;
        self.models_error = None;
        self.table = TableState::default();
        let ex = Arc::new(ex);
        self.table.refresh(&ex, self.threshold);
        self.ex = Some(ex);
        self.load_map();
    }

    /// Whether no bundle is being opened.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn opening_none(&self) -> bool {
        self.opening.is_none()
    }

    /// Swap in `ex`, the open bundle with more of its files (the browser fetches the heavy
    /// arrays after opening), keeping the view, the neuron and the threshold.
    pub fn complete_explorer(&mut self, ex: Explorer) {
        let ex = Arc::new(ex);
        self.table.refresh(&ex, self.threshold);
        self.ex = Some(ex);
        self.map.data = None;
        self.map.missing = None;
        self.load_map();
    }

    /// Report an error in a toast and the log.
    pub fn error(&mut self, message: String) {
        self.messages.push(format!("error: {message}"));
        self.notices.push((true, message, web_time::Instant::now()));
    }

    /// The current plot (the overview's figures, or the correlation map as shown) as SVG.
    pub fn plot_svg(&self) -> Result<String, String> {
        let ex = self.ex.as_ref().ok_or("no bundle is open")?;
        match self.tab {
            Tab::Overview => {
                let anchor = self.table.model;
                let a = ex.anchor(anchor).ok_or("no anchor data")?;
                let rows: Vec<&seedscope_analysis::NeuronRow> =
                    a.rows.iter().map(|&i| &ex.rows()[i]).collect();
                let col = |f: fn(&seedscope_analysis::NeuronRow) -> f64| -> Vec<f64> {
                    rows.iter().map(|r| f(r)).collect()
                };
                let m = &ex.bundle.manifest;
                let title = format!(
                    "{} seeds ({}), anchor {}, {} tokens, {} layers x {} neurons",
                    ex.names.len(),
                    ex.names.join(", "),
                    ex.names[anchor],
                    m.n_tokens,
                    m.n_layers,
                    m.d_mlp
                );
                let per_layer = ex.counts(anchor, self.threshold);
                seedscope_report::overview_svg(
                    &seedscope_report::Overview {
                        title: &title,
                        mean_corr: &col(|r| r.mean_corr),
                        baseline: &col(|r| r.mean_baseline),
                        excess: &col(|r| r.excess_corr),
                        max_corr: &col(|r| r.max_corr),
                        min_corr: &col(|r| r.min_corr),
                        per_layer: &per_layer,
                        layer_match: &a.layer_match,
                        threshold: self.threshold,
                    },
                    1200,
                    900,
                )
            }
            Tab::Map => {
                let d = self
                    .map
                    .data
                    .as_ref()
                    .ok_or("no correlation map is shown")?;
                let m = &self.map;
                seedscope_report::heatmap_svg(
                    &d.values,
                    d.rows,
                    d.cols,
                    &format!(
                        "Pearson r{}",
                        if m.by_match {
                            ", ordered by best match"
                        } else {
                            ""
                        }
                    ),
                    &format!("{} L{}", ex.names[m.anchor], m.layer_a),
                    &format!("{} L{}", ex.names[m.other], m.layer_b),
                )
            }
            Tab::Table | Tab::Neuron => {
                Err("the overview and the correlation map can be exported as plots".into())
            }
        }
    }

    /// A passing notice (not an error).
    pub fn notice(&mut self, message: String) {
        self.notices
            .push((false, message, web_time::Instant::now()));
    }

    fn show_notices(&mut self, ctx: &egui::Context) {
        const SHOWN: Duration = Duration::from_secs(8);
        self.notices.retain(|n| n.2.elapsed() < SHOWN);
        if self.notices.is_empty() {
            return;
        }
        let mut dismiss = None;
        egui::Area::new(egui::Id::unique("notices"))
            .anchor(egui::Align2::RIGHT_BOTTOM, egui::vec2(-12.0, -36.0))
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                for (i, (is_error, text, _)) in self.notices.iter().enumerate() {
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        ui.set_max_width(420.0);
                        ui.horizontal(|ui| {
                            let (tag, color) = if *is_error {
                                ("error", ui.visuals().error_fg_color)
                            } else {
                                ("done", ui.visuals().hyperlink_color)
                            };
                            ui.label(RichText::new(tag).strong().color(color));
                            ui.label(text.as_str());
                            if ui.small_button("x").on_hover_text("dismiss").clicked() {
                                dismiss = Some(i);
                            }
                        });
                    });
                }
            });
        if let Some(i) = dismiss {
            self.notices.remove(i);
        }
        ctx.request_repaint_after(Duration::from_millis(500));
    }

    /// The bundle's models, prepared on first use.
    pub(crate) fn models(&mut self) -> Option<Arc<Models>> {
        if self.models.is_none() && self.models_error.is_none() {
            let ex = self.ex.clone()?;
            match Models::new(&ex) {
                Ok(m) => self.models = Some(Arc::new(m)),
                Err(e) => {
                    self.models_error = Some(e.clone());
                    // In the browser this is a known limit, not a failure.
                    if cfg!(target_arch = "wasm32") {
                        self.notice(e);
                    } else {
                        self.error(e);
                    }
                    return None;
                }
            }
        }
        self.models.clone()
    }

    pub(crate) fn ctx_clone(&self) -> Option<egui::Context> {
        self.ctx.clone()
    }

    /// Open the neuron page for `id`.
    pub fn open_neuron(&mut self, id: NeuronId) {
        self.selected = Some(id);
        self.tab = Tab::Neuron;
    }

    /// Step the selection through the table's current order.
    pub fn step(&mut self, delta: isize) {
        let Some(ex) = self.ex.clone() else { return };
        let order = &self.table.order;
        if order.is_empty() {
            return;
        }
        let current = self
            .selected
            .and_then(|id| order.iter().position(|&i| ex.id_of_row(i) == Some(id)));
        let next = match current {
            Some(p) => (p as isize + delta).clamp(0, order.len() as isize - 1) as usize,
            None => 0,
        };
        self.selected = ex.id_of_row(order[next]);
        self.table.scroll_to = Some(next);
    }

    /// Load the tile the map's choices name.
    pub fn load_map(&mut self) {
        let Some(ex) = self.ex.clone() else { return };
        let m = &mut self.map;
        let name = ex.tile_name(m.anchor, m.layer_a, m.other, m.layer_b);
        m.cpu_texture = None;
        #[cfg(target_arch = "wasm32")]
        let fetching = self.web.heavy.is_some() || self.web.heavy_url.is_some();
        #[cfg(not(target_arch = "wasm32"))]
        let fetching = false;
        if !ex.tile_names().any(|n| n == name) {
            m.data = None;
            m.missing = Some(if fetching {
                "the correlation tiles are still being fetched…".into()
            } else if ex.tile_names().next().is_none() {
                "this bundle has no saved correlation tiles: rerun the analysis with \
                 `--save-tiles all` (the app's own analyses save them)"
                    .into()
            } else {
                format!(
                    "no saved tile {name} in this bundle (analysed with --save-tiles for other layer pairs)"
                )
            });
            return;
        }
        match ex.read_tile(&name) {
            Ok(values) => {
                let d = ex.d_mlp();
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (ex.source.display(), &name, m.by_match).hash(&mut h);
                let (values, rows, cols) = if m.by_match {
                    crate::heatmap::order_by_match(&values, d, d)
                } else {
                    (values, (0..d).collect(), (0..d).collect())
                };
                m.row_of = rows;
                m.col_of = cols;
                m.data = Some(MapData {
                    key: h.finish(),
                    rows: d,
                    cols: d,
                    values: Arc::new(values),
                });
                m.view = HeatmapView::whole(d, d);
                m.missing = None;
            }
            Err(e) => {
                m.data = None;
                m.missing = Some(e.clone());
                self.error(e);
            }
        }
    }

    fn poll_tasks(&mut self) {
        if let Some(t) = &mut self.analysis {
            let log_len = t.log.len();
            let poll = t.poll();
            let new_lines: Vec<String> = t.log[log_len..].to_vec();
            #[cfg(target_arch = "wasm32")]
            for l in &new_lines {
                crate::web::console_log(&format!("seedscope-log {l}"));
            }
            self.messages.extend(new_lines);
            if let Poll::Done(r) = poll {
                self.analysis = None;
                match r {
                    Ok(AnalysisDone::Opened(ex)) => {
                        self.notice(match &ex.source {
                            seedscope_analysis::bundle::BundleSource::Dir(d) => {
                                format!("analysis written to {}", d.display())
                            }
                            other => format!("analysis done: {}", other.display()),
                        });
                        self.set_explorer(*ex);
                    }
                    Ok(AnalysisDone::Cancelled) => {
                        self.notice("analysis cancelled".into());
                    }
                    Ok(AnalysisDone::Interrupted(c)) => {
                        let msg = format!(
                            "analysis cancelled; its progress is saved in {} and the same analysis resumes from there",
                            c.display()
                        );
                        self.messages.push(msg.clone());
                        self.notice(msg);
                    }
                    Err(e) => {
                        #[cfg(target_arch = "wasm32")]
                        crate::web::console_log(&format!("seedscope-error analysis failed: {e}"));
                        self.error(format!("analysis failed: {e}"));
                    }
                }
            }
        }
        if let Some(t) = &mut self.opening
            && let Poll::Done(r) = t.poll()
        {
            self.opening = None;
            match r {
                Ok(Some(ex)) => self.set_explorer(*ex),
                Ok(None) => {}
                Err(e) => self.error(format!("could not open the bundle: {e}")),
            }
        }
        if let Some(t) = &mut self.page.examples_task
            && let Poll::Done(r) = t.poll()
        {
            self.page.examples_task = None;
            match r {
                Ok(list) => {
                    for e in list {
                        self.page.examples.insert(e.id, e);
                    }
                }
                Err(e) => self.error(format!("examples: {e}")),
            }
        }
        if let Some(t) = &mut self.token_task
            && let Poll::Done(r) = t.poll()
        {
            self.token_task = None;
            match r {
                Ok(rank) => self.table.token_rank = Some(rank),
                Err(e) => self.error(format!("token search: {e}")),
            }
        }
        if let Some((t, text, neurons)) = &mut self.page.live_task
            && let Poll::Done(r) = t.poll()
        {
            let (text, neurons) = (std::mem::take(text), std::mem::take(neurons));
            self.page.live_task = None;
            match r {
                Ok(l) => self.page.live = Some((text, l)),
                Err(e) => {
                    self.page.live_failed = Some((text, neurons));
                    self.error(format!("live text: {e}"));
                }
            }
        }
    }

    fn dialog_done(&mut self, purpose: DialogFor, path: PathBuf, ctx: &egui::Context) {
        match purpose {
            DialogFor::OpenBundle => self.open_bundle(path),
            DialogFor::AddModel => {
                if let Some(f) = &mut self.new_analysis {
                    f.models.push(path);
                }
            }
            DialogFor::Data => {
                if let Some(f) = &mut self.new_analysis {
                    f.data = Some(path);
                }
            }
            DialogFor::ExportCsv => {
                if let Some(ex) = self.ex.clone() {
                    match crate::table::export_csv(&ex, &self.table.order, &path) {
                        Ok(n) => {
                            self.notice(format!("{n} rows written to {}", path.display()));
                        }
                        Err(e) => self.error(e),
                    }
                }
            }
            DialogFor::ExportSvg => match self.plot_svg() {
                Ok(svg) => {
                    match crate::write_atomic(&path, |tmp| {
                        std::fs::write(tmp, svg.as_bytes()).map_err(|e| e.to_string())
                    }) {
                        Ok(()) => self.notice(format!("saved {}", path.display())),
                        Err(e) => self.error(format!("{}: {e}", path.display())),
                    }
                }
                Err(e) => self.error(e),
            },
            DialogFor::ExportPng => {
                if let Some(rect) = self.plot_rect {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let ppp = ctx.pixels_per_point();
                    let wake = ctx.clone();
                    ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(
                        egui::ScreenshotCallback::new(move |image| {
                            let _ = tx.send(save_region(&image, rect, ppp, &path));
                            wake.request_repaint();
                        }),
                    ));
                    self.png_result = Some(rx);
                }
            }
        }
    }

    fn ask(&mut self, purpose: DialogFor, title: &str, pick: Pick) {
        let text = match pick {
            Pick::Save(name) => std::env::current_dir()
                .map(|d| d.join(name).display().to_string())
                .unwrap_or_else(|_| name.to_string()),
            Pick::Folder | Pick::File => String::new(),
        };
        self.prompt = Some(PathPrompt {
            purpose,
            title: title.to_owned(),
            pick,
            text,
            browsing: None,
        });
    }

    /// The path prompt: type a path, pick a recent bundle, or browse with the system's file
    /// dialog (which may be unavailable, e.g. without an XDG desktop portal).
    fn prompt_window(&mut self, ctx: &egui::Context) {
        let Some(mut p) = self.prompt.take() else {
            return;
        };
        if let Some(t) = &mut p.browsing
            && let Poll::Done(r) = t.poll()
        {
            let quick = t.started.elapsed() < Duration::from_millis(400);
            p.browsing = None;
            match r {
                Ok(Some(path)) => p.text = path.display().to_string(),
                // rfd answers None at once when no dialog could be shown.
                Ok(None) if quick => self.error(
                    "the system file dialog is not available here (on Linux it needs an XDG \
                     desktop portal); type the path instead"
                        .into(),
                ),
                Ok(None) => {}
                Err(e) => self.error(format!(
                    "the file dialog failed ({e}); type the path instead"
                )),
            }
        }
        let (mut open, mut ok) = (true, false);
        let recent = self.settings.recent.clone();
        egui::Window::new(p.title.clone())
            .open(&mut open)
            .collapsible(false)
            .default_width(560.0)
            .show(ctx, |ui| {
                ui.horizontal(|ui| {
                    let l = ui.label("path");
                    let e = ui
                        .add(egui::TextEdit::singleline(&mut p.text).desired_width(460.0))
                        .labelled_by(l.id);
                    if e.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
                        ok = true;
                    }
                });
                if p.purpose == DialogFor::OpenBundle && !recent.is_empty() {
                    ui.label("recent bundles:");
                    for r in &recent {
                        if ui.link(r.display().to_string()).clicked() {
                            p.text = r.display().to_string();
                            ok = true;
                        }
                    }
                }
                ui.horizontal(|ui| {
                    if p.browsing.is_some() {
                        ui.spinner();
                        ui.label("waiting for the file dialog…");
                    } else if !cfg!(target_arch = "wasm32") && ui.button("Browse…").clicked() {
                        #[cfg(not(target_arch = "wasm32"))]
                        {
                            p.browsing = Some(spawn_dialog(&p.title, p.pick, self.ctx.clone()));
                        }
                    }
                    let verb = if matches!(p.pick, Pick::Save(_)) {
                        "Save"
                    } else {
                        "OK"
                    };
                    if ui.button(verb).clicked() {
                        ok = true;
                    }
                });
            });
        if ok && !p.text.trim().is_empty() {
            self.dialog_done(p.purpose, PathBuf::from(p.text.trim()), ctx);
        } else if open {
            self.prompt = Some(p);
        }
    }

    fn poll_png(&mut self) {
        let Some(rx) = &self.png_result else { return };
        match rx.try_recv() {
            Ok(Ok(path)) => {
                self.png_result = None;
                self.notice(format!("saved {}", path.display()));
            }
            Ok(Err(e)) => {
                self.png_result = None;
                self.error(e);
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.png_result = None;
                self.error("the screenshot for the PNG export never arrived".into());
            }
        }
    }

    fn keyboard(&mut self, ctx: &egui::Context) {
        // Keys act only when no text field (or slider) has keyboard focus.
        if ctx.memory(|m| m.focused().is_some()) {
            return;
        }
        let (next, prev, slash) = ctx.input(|i| {
            (
                i.key_pressed(Key::ArrowRight) || i.key_pressed(Key::ArrowDown),
                i.key_pressed(Key::ArrowLeft) || i.key_pressed(Key::ArrowUp),
                i.key_pressed(Key::Slash),
            )
        });
        if next {
            self.step(1);
        }
        if prev {
            self.step(-1);
        }
        if slash {
            self.tab = Tab::Table;
            self.table.focus_search = true;
        }
        // 1–4: the views in menu order.
        let keys = [Key::Num1, Key::Num2, Key::Num3, Key::Num4];
        if let Some((tab, _)) = keys
            .iter()
            .zip(TABS)
            .find(|(k, _)| ctx.input(|i| i.key_pressed(**k)))
            .map(|(_, t)| t)
        {
            self.tab = tab;
        }
    }

    fn dropped_files(&mut self, ctx: &egui::Context) {
        // In the browser dropped files come without paths: together they are one bundle.
        #[cfg(target_arch = "wasm32")]
        {
            let files = ctx.input(|i| i.raw.dropped_files.clone());
            if !files.is_empty() {
                self.opening = Some(crate::web::spawn_open_dropped(files, self.ctx.clone()));
            }
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let dropped: Vec<PathBuf> = ctx.input(|i| {
                i.raw
                    .dropped_files
                    .iter()
                    .map(|f| f.path().to_path_buf())
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            });
            for p in dropped {
                // A dropped manifest or any file inside a bundle opens its directory.
                let dir = if p.is_dir() {
                    p
                } else {
                    p.parent().map(Path::to_path_buf).unwrap_or(p)
                };
                self.open_bundle(dir);
            }
        }
    }

    fn menu_bar(&mut self, ui: &mut egui::Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open bundle…").clicked() {
                    self.ask_bundle();
                }
                #[cfg(target_arch = "wasm32")]
                if ui.button("Analyse models from disk…").clicked() {
                    self.web.disk = Some(crate::web::DiskForm::default());
                }
                if !cfg!(target_arch = "wasm32") && ui.button("New analysis…").clicked() {
                    self.new_analysis = Some(NewAnalysis {
                        models: Vec::new(),
                        data: None,
                        max_tokens: 0,
                        threshold: 0.5,
                        save_tiles: true,
                        backend: BackendKind::Auto,
                        out: "seedscope-out/bundle".into(),
                    });
                }
                if ui.button("Analyse the embedded family again").clicked() {
                    self.analyse_embedded();
                }
                ui.separator();
                // Exports write files: the desktop app's (the browser has no paths to write).
                let files = !cfg!(target_arch = "wasm32");
                let no_files = "exports write files: use the desktop app";
                if ui
                    .add_enabled(files, egui::Button::new("Export table as CSV…"))
                    .on_disabled_hover_text(no_files)
                    .clicked()
                {
                    self.ask(
                        DialogFor::ExportCsv,
                        "Export the table",
                        Pick::Save("neurons.csv"),
                    );
                }
                let plot =
                    files && matches!(self.tab, Tab::Overview | Tab::Map) && self.ex.is_some();
                let hint = if files {
                    "the overview and the correlation map are plots"
                } else {
                    no_files
                };
                if ui
                    .add_enabled(plot, egui::Button::new("Export plot as PNG…"))
                    .on_disabled_hover_text(hint)
                    .clicked()
                {
                    self.ask(
                        DialogFor::ExportPng,
                        "Export the plot",
                        Pick::Save("plot.png"),
                    );
                }
                if ui
                    .add_enabled(plot, egui::Button::new("Export plot as SVG…"))
                    .on_disabled_hover_text(hint)
                    .clicked()
                {
                    self.ask(
                        DialogFor::ExportSvg,
                        "Export the plot",
                        Pick::Save("plot.svg"),
                    );
                }
            });
            ui.menu_button("View", |ui| {
                for (tab, name) in TABS {
                    if ui.selectable_label(self.tab == tab, name).clicked() {
                        self.tab = tab;
                    }
                }
                ui.separator();
                if ui.checkbox(&mut self.settings.dark, "Dark theme").changed() {
                    ui.ctx().set_theme(if self.settings.dark {
                        egui::Theme::Dark
                    } else {
                        egui::Theme::Light
                    });
                }
            });
            ui.separator();
            for (tab, name) in TABS {
                if ui.selectable_label(self.tab == tab, name).clicked() {
                    self.tab = tab;
                }
            }
        });
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let mut cancel = false;
            if let Some(t) = &self.analysis {
                // No spinner: on a software renderer its constant repaints would take CPU
                // from the analysis. Progress reports wake the UI.
                match &t.progress {
                    Some(p) => {
                        let eta = p
                            .eta_secs()
                            .map_or(String::new(), |s| format!(", {s:.0} s left"));
                        ui.add(
                            egui::ProgressBar::new(p.fraction())
                                .desired_width(200.0)
                                .show_percentage(),
                        );
                        ui.label(format!(
                            "{}/{} {} · {:.0} {}/s{eta} · {}",
                            p.done, p.total, p.unit, p.rate, p.unit, p.note
                        ));
                    }
                    None => {
                        ui.label(format!("{}: loading models…", t.label));
                    }
                }
                if t.is_cancelling() {
                    ui.label("cancelling at the next block…");
                } else if ui.button("Cancel").clicked() {
                    cancel = true;
                }
            } else if self.opening.is_some() {
                ui.spinner();
                ui.label("opening bundle…");
            } else if let Some(ex) = &self.ex {
                let full = ex.source.display();
                let name = full
                    .trim_end_matches('/')
                    .rsplit(['/', '\\'])
                    .next()
                    .unwrap_or(&full)
                    .to_string();
                ui.label(format!("bundle: {name}")).on_hover_text(full);
                if let Some(h) = &self.map.hover_text
                    && self.tab == Tab::Map
                {
                    ui.separator();
                    ui.label(h);
                }
            } else {
                ui.label("no bundle open");
            }
            if cancel && let Some(t) = &self.analysis {
                t.cancel();
            }
            #[cfg(target_arch = "wasm32")]
            {
                if let Err(why) = &self.web.webgpu {
                    ui.separator();
                    ui.colored_label(
                        ui.visuals().warn_fg_color,
                        "analysis unavailable: no WebGPU",
                    )
                    .on_hover_text(why.clone());
                }
                let (bytes, note) = crate::web::cache_state();
                if bytes > 0 || note.is_some() {
                    ui.separator();
                    let label = ui.label(format!(
                        "browser cache: {:.1} MB of model files",
                        bytes as f64 / 1e6
                    ));
                    if let Some(note) = note {
                        label.on_hover_text(note);
                    }
                    if ui
                        .small_button("Clear")
                        .on_hover_text(
                            "delete the cached model files (they are fetched again when needed)",
                        )
                        .clicked()
                    {
                        wasm_bindgen_futures::spawn_local(async {
                            if let Err(e) = crate::web::clear_cache().await {
                                crate::web::console_log(&format!("clearing the cache failed: {e}"));
                            }
                        });
                    }
                }
            }
        });
    }

    fn new_analysis_window(&mut self, ctx: &egui::Context) {
        let Some(mut form) = self.new_analysis.take() else {
            return;
        };
        let mut open = true;
        let mut start = false;
        let mut ask: Option<(DialogFor, &str, Pick)> = None;
        egui::Window::new("New analysis")
            .open(&mut open)
            .collapsible(false)
            .show(ctx, |ui| {
                ui.label(
                    RichText::new("Models (one directory per seed; the first is the anchor)")
                        .strong(),
                );
                if form.models.is_empty() {
                    ui.label("none chosen: the embedded family seed-a…seed-e");
                }
                let mut remove = None;
                for (i, m) in form.models.iter().enumerate() {
                    ui.horizontal(|ui| {
                        ui.label(m.display().to_string());
                        if ui.small_button("x").on_hover_text("remove").clicked() {
                            remove = Some(i);
                        }
                    });
                }
                if let Some(i) = remove {
                    form.models.remove(i);
                }
                ui.horizontal(|ui| {
                    if ui.button("Add model directory…").clicked() {
                        ask = Some((
                            DialogFor::AddModel,
                            "Choose a model directory",
                            Pick::Folder,
                        ));
                    }
                });
                ui.separator();
                ui.horizontal(|ui| {
                    ui.label("Data:");
                    ui.label(
                        form.data
                            .as_ref()
                            .map_or("the embedded eval tokens".into(), |p| {
                                p.display().to_string()
                            }),
                    );
                    if ui.button("Choose (.npy tokens, .txt, .jsonl)…").clicked() {
                        ask = Some((DialogFor::Data, "Choose the data", Pick::File));
                    }
                });
                egui::Grid::new("new-analysis")
                    .num_columns(2)
                    .show(ui, |ui| {
                        let l = ui.label("Token budget (0 = all)");
                        ui.add(egui::DragValue::new(&mut form.max_tokens).speed(1000))
                            .labelled_by(l.id);
                        ui.end_row();
                        let l = ui.label("Threshold (excess correlation)");
                        ui.add(egui::Slider::new(&mut form.threshold, 0.0..=1.0))
                            .labelled_by(l.id);
                        ui.end_row();
                        ui.label("");
                        ui.checkbox(&mut form.save_tiles, "Save tiles for the map");
                        ui.end_row();
                        let backends = [BackendKind::Auto, BackendKind::Wgpu, BackendKind::Cpu];
                        ui.label("");
                        crate::map::choose(ui, "Backend", &mut form.backend, &backends, |b| {
                            b.to_string()
                        });
                        ui.end_row();
                        let l = ui.label("Output bundle");
                        ui.text_edit_singleline(&mut form.out).labelled_by(l.id);
                        ui.end_row();
                    });
                if ui.button("Start").clicked() {
                    start = true;
                }
            });
        if let Some((purpose, title, pick)) = ask {
            self.ask(purpose, title, pick);
        }
        if start {
            let data = match &form.data {
                None => DataSource::Embedded,
                Some(p) => match p.extension().and_then(|e| e.to_str()) {
                    Some("npy") => DataSource::Tokens(p.clone()),
                    Some("jsonl") | Some("json") => DataSource::Dataset(p.clone()),
                    _ => DataSource::Text(p.clone()),
                },
            };
            if form.models.len() == 1 {
                self.error("choose at least two models (an anchor and another seed)".into());
                self.new_analysis = Some(form);
                return;
            }
            let request = AnalysisRequest {
                models: form.models.clone(),
                data,
                out: PathBuf::from(form.out.trim()),
                threshold: form.threshold,
                max_tokens: (form.max_tokens > 0).then_some(form.max_tokens),
                save_tiles: form.save_tiles.then(|| "all".to_string()),
                backend: form.backend,
                command: vec!["seedscope (app): new analysis".into()],
                ..AnalysisRequest::default()
            };
            self.start_analysis(request);
        } else if open {
            self.new_analysis = Some(form);
        }
    }

    /// One frame of the whole UI (eframe calls it through [`eframe::App::ui`]).
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        if self.ctx.is_none() {
            self.ctx = Some(ctx.clone());
        }
        #[cfg(target_arch = "wasm32")]
        if !self.web.first_frame_logged {
            self.web.first_frame_logged = true;
            crate::web::log_first_frame();
        }
        #[cfg(target_arch = "wasm32")]
        self.poll_web();
        self.poll_tasks();
        self.poll_png();
        self.dropped_files(&ctx);
        self.keyboard(&ctx);
        egui::Panel::top("menu").show(ui, |ui| self.menu_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            let Some(ex) = self.ex.clone() else {
                self.empty_state(ui);
                return;
            };
            match self.tab {
                Tab::Overview => self.overview(ui, &ex),
                Tab::Map => self.map_view(ui, &ex),
                Tab::Table => self.table_view(ui, &ex),
                Tab::Neuron => self.neuron_view(ui, &ex),
            }
        });
        self.new_analysis_window(&ctx);
        #[cfg(target_arch = "wasm32")]
        self.disk_analysis_window(&ctx);
        self.prompt_window(&ctx);
        self.show_notices(&ctx);
        if self.analysis.is_some() || self.opening.is_some() {
            ctx.request_repaint_after(Duration::from_millis(500));
        }
    }

    fn empty_state(&mut self, ui: &mut egui::Ui) {
        ui.vertical_centered(|ui| {
            ui.add_space(60.0);
            ui.heading("Seedscope");
            ui.label("Universal neurons across GPT-2 seeds (Gurnee et al. 2024)");
            ui.add_space(20.0);
            if self.analysis.is_some() {
                ui.label("Analysing the embedded seed family (five 2-layer GPT-2 seeds on held-out text)…");
                ui.label("The progress is in the status bar; the results open when it is done.");
            } else if self.opening.is_some() {
                ui.label("Opening the bundle…");
            } else {
                if ui.button("Analyse the embedded seed family").clicked() {
                    self.analyse_embedded();
                }
                if ui.button("Open a bundle…").clicked() {
                    self.ask_bundle();
                }
                ui.label(if cfg!(target_arch = "wasm32") {
                    "or drop a bundle's files onto this page"
                } else {
                    "or drop a bundle directory onto this window"
                });
            }
            if !self.messages.is_empty() {
                ui.add_space(20.0);
                // The newest lines in view while a task logs.
                egui::ScrollArea::vertical()
                    .max_height(160.0)
                    .stick_to_bottom(true)
                    .show(ui, |ui| {
                    for m in &self.messages {
                        ui.monospace(m);
                    }
                });
            }
        });
    }
}

impl eframe::App for SeedscopeApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}

/// Crop `rect` (points) out of a screenshot and write it as PNG, atomically.
pub fn save_region(
    image: &egui::ColorImage,
    rect: egui::Rect,
    ppp: f32,
    path: &Path,
) -> Result<PathBuf, String> {
    let full = egui::Rect::from_min_size(
        egui::Pos2::ZERO,
        egui::vec2(image.width() as f32, image.height() as f32) / ppp,
    );
    let rect = rect.intersect(full);
    if !rect.is_positive() {
        return Err(format!("{}: the plot is not on screen", path.display()));
    }
    let region = image.region(&rect, Some(ppp));
    let img = image::RgbaImage::from_raw(
        region.width() as u32,
        region.height() as u32,
        region.as_raw().to_vec(),
    )
    .ok_or_else(|| "the screenshot has an unexpected size".to_string())?;
    crate::write_atomic(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| format!("{}: {e}", path.display()))
    })?;
    Ok(path.to_path_buf())
}
