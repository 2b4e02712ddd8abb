//! [`SeedscopeApp`]: owns the open bundle, the analysis and opening tasks and the views; routes
//! the views' [`Action`]s; draws the menus and the status bar, and shows the notices
//! ([`crate::notices`]) and the path prompt ([`crate::prompt`]). What differs in the browser is
//! behind [`Platform`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use egui::Key;
use seedscope_analysis::bundle::BundleSource;
use seedscope_analysis::job::AnalysisRequest;

use crate::data::{Explorer, NeuronId};
use crate::export::{Export, ExportTo};
use crate::inspect::Models;
use crate::jobs::{AnalysisDone, Pick, Poll, Task, spawn_analysis, spawn_open};
use crate::notices::Notices;
use crate::platform::{Launch, Opening, Platform, Polled};
use crate::prompt::{DialogFor, PathPrompt, Prompted};
use crate::settings::Settings;
use crate::views::map::MapView;
use crate::views::neuron::{NeuronView, page_neurons};
use crate::views::overview::OverviewView;
use crate::views::table::TableView;
use crate::views::training::TrainingView;
use crate::views::welcome::{NewAnalysis, Welcome};
use crate::views::{Action, Shared, TABS, Tab};
use crate::{AppError, export};

/// The Seedscope explorer.
pub struct SeedscopeApp {
    /// Persisted settings.
    pub settings: Settings,
    launch: Launch,
    platform: Box<dyn Platform>,
    /// The open bundle.
    pub ex: Option<Arc<Explorer>>,
    /// The universality threshold the views use (starts at the bundle's).
    pub threshold: f64,
    /// The anchor the views show.
    pub anchor: usize,
    /// The current view.
    pub tab: Tab,
    /// The neuron shown on the neuron page.
    pub selected: Option<NeuronId>,
    /// The overview.
    pub overview: OverviewView,
    /// The correlation map.
    pub map: MapView,
    /// The table.
    pub table: TableView,
    /// The neuron page.
    pub neuron: NeuronView,
    /// Universality over training.
    pub training: TrainingView,
    /// The open bundle's models, or why there are none.
    models: Result<Arc<Models>, String>,
    /// Running analysis.
    pub analysis: Option<Task<AnalysisDone>>,
    /// Opening a bundle.
    opening: Option<Opening>,
    /// The open path prompt.
    pub prompt: Option<PathPrompt>,
    new_analysis: Option<NewAnalysis>,
    /// Notices shown in the corner for a few seconds.
    pub notices: Notices,
    /// Messages shown in the log panel (errors and job logs).
    pub messages: Vec<String>,
    /// Whether heatmaps render on the GPU (a wgpu renderer with storage buffers is present).
    pub gpu: bool,
    ctx: egui::Context,
    /// A PNG export waiting for its screenshot, and where it goes.
    png_result: Option<(ExportTo, export::PendingPng)>,
}

impl SeedscopeApp {
    /// The desktop app (see [`SeedscopeApp::with_platform`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(cc: &eframe::CreationContext<'_>, launch: Launch) -> Self {
        Self::with_platform(cc, launch, Box::new(crate::native::Native))
    }

    /// Create the app from eframe's creation context on `platform`: restore settings, register
    /// the heatmap pipelines with the wgpu renderer and open (or make) the first bundle.
    pub fn with_platform(
        cc: &eframe::CreationContext<'_>,
        launch: Launch,
        platform: Box<dyn Platform>,
    ) -> Self {
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
            platform,
            ex: None,
            threshold: 0.5,
            anchor: 0,
            tab: Tab::Overview,
            selected: None,
            overview: OverviewView::default(),
            map: MapView::default(),
            table: TableView::default(),
            neuron: NeuronView::default(),
            training: TrainingView::default(),
            models: Err("no bundle is open".into()),
            analysis: None,
            opening: None,
            prompt: None,
            new_analysis: None,
            notices: Notices::default(),
            messages: Vec::new(),
            gpu,
            ctx: cc.egui_ctx.clone(),
            png_result: None,
        };
        app.start();
        app
    }

    /// Open the first bundle: a URL, the one named, the last one, the cached embedded one; or
    /// analyse the embedded family.
    fn start(&mut self) {
        if let Some(url) = self.launch.bundle_url.clone() {
            self.open_url(&url);
            return;
        }
        let exists = |p: &PathBuf| p.join("manifest.json").exists();
        let first = self
            .launch
            .bundle
            .clone()
            .or_else(|| self.settings.last_bundle.clone().filter(exists))
            .or_else(|| Some(self.launch.embedded_bundle.clone()).filter(exists));
        match first {
            Some(dir) => self.open_bundle(dir),
            None if self.launch.analyse_embedded => self.analyse_embedded(),
            None => {}
        }
    }

    /// Analyse the embedded family (into the cached bundle natively, with tiles for the map).
    pub fn analyse_embedded(&mut self) {
        if self.analysis.is_some() {
            self.error("an analysis is already running".into());
            return;
        }
        match self.platform.analyse_embedded(&self.launch, &self.ctx) {
            Ok(task) => {
                self.messages.push(format!("{}…", task.label));
                self.analysis = Some(task);
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    /// Start an analysis in the background.
    pub fn start_analysis(&mut self, request: AnalysisRequest) {
        if self.analysis.is_some() {
            self.error("an analysis is already running".into());
            return;
        }
        self.messages
            .push(format!("analysing into {}", request.out.display()));
        self.analysis = Some(spawn_analysis(request, Some(self.ctx.clone())));
    }

    /// Open a bundle directory in the background.
    pub fn open_bundle(&mut self, dir: PathBuf) {
        self.opening = Some(spawn_open(dir, Some(self.ctx.clone())));
    }

    /// Fetch the bundle at `url` (a directory URL: its files are fetched by name) and open it.
    pub fn open_url(&mut self, url: &str) {
        match self.platform.open_url(url, &self.ctx) {
            Ok(task) => self.opening = Some(task),
            Err(e) => self.error(e.to_string()),
        }
    }

    /// Ask for a bundle: the platform's picker, else the path prompt.
    pub fn ask_bundle(&mut self) {
        match self.platform.pick_bundle(&self.ctx) {
            Some(task) => self.opening = Some(task),
            None => self.ask(
                DialogFor::OpenBundle,
                "Open a Seedscope bundle",
                Pick::Folder,
            ),
        }
    }

    /// Show an opened bundle: its views start afresh.
    pub fn set_explorer(&mut self, ex: Explorer) {
        self.threshold = ex.bundle.manifest.options.threshold;
        // Only directories can be reopened from the settings.
        if let BundleSource::Dir(dir) = &ex.source {
            self.settings.last_bundle = Some(dir.clone());
            self.settings.recent.retain(|r| r != dir);
            self.settings.recent.insert(0, dir.clone());
            self.settings.recent.truncate(8);
        }
        self.selected = ex.id_of_row(0);
        self.anchor = 0;
        self.overview = OverviewView::default();
        self.map = MapView::new(&ex);
        self.table = TableView::default();
        self.neuron = NeuronView::default();
        self.training = TrainingView::default();
        self.models = self.platform.models(&ex);
        let ex = Arc::new(ex);
        self.table.refresh(&ex, self.anchor, self.threshold);
        self.platform.opened(&ex, &self.ctx);
        self.ex = Some(ex);
    }

    /// Swap in `ex`, the open bundle with more of its files (the browser fetches the heavy
    /// arrays after opening), keeping the view, the neuron and the threshold.
    pub fn complete_explorer(&mut self, ex: Explorer) {
        let ex = Arc::new(ex);
        self.table.refresh(&ex, self.anchor, self.threshold);
        self.map.reload();
        self.ex = Some(ex);
    }

    /// Report an error in a toast and the log.
    pub fn error(&mut self, message: String) {
        self.platform.log(&format!("seedscope-error {message}"));
        self.messages.push(format!("error: {message}"));
        self.notices.push(true, message);
    }

    /// A passing notice (not an error).
    pub fn notice(&mut self, message: String) {
        self.notices.push(false, message);
    }

    /// The views' shared state for this frame.
    fn shared<'a>(&'a mut self, ex: &'a Arc<Explorer>) -> Shared<'a> {
        Shared {
            ex,
            threshold: self.threshold,
            anchor: self.anchor,
            selected: self.selected,
            settings: &mut self.settings,
            models: &self.models,
            gpu: self.gpu,
        }
    }

    /// The current plot (the overview's figures, or the correlation map as shown) as SVG.
    pub fn plot_svg(&mut self) -> Result<String, AppError> {
        let ex = self.ex.clone().ok_or("no bundle is open")?;
        match self.tab {
            Tab::Overview => {
                let overview = std::mem::take(&mut self.overview);
                let svg = overview.svg(&self.shared(&ex));
                self.overview = overview;
                svg
            }
            Tab::Map => self.map.svg(&ex),
            Tab::Table | Tab::Neuron | Tab::Training => {
                Err("the overview and the correlation map can be exported as plots".into())
            }
        }
    }

    /// Where the current view's plot was last drawn (for the PNG export).
    pub fn plot_rect(&self) -> Option<egui::Rect> {
        match self.tab {
            Tab::Overview => self.overview.plot_rect,
            Tab::Map => self.map.rect,
            Tab::Training => self.training.plot_rect,
            Tab::Table | Tab::Neuron => None,
        }
    }

    /// Open the neuron page for `id`.
    pub fn open_neuron(&mut self, id: NeuronId) {
        self.selected = Some(id);
        self.tab = Tab::Neuron;
    }

    /// The neurons the neuron page shows: the selected one and its matches.
    pub fn page_neurons(&self) -> Vec<NeuronId> {
        self.ex
            .as_ref()
            .map_or_else(Vec::new, |ex| page_neurons(ex, self.selected))
    }

    /// Do what a view asked.
    fn apply(&mut self, action: Action) {
        match action {
            Action::OpenNeuron(id) => self.open_neuron(id),
            Action::Step(delta) => {
                if let Some(ex) = self.ex.clone()
                    && let Some(id) = self.table.step(&ex, self.selected, delta)
                {
                    self.selected = Some(id);
                }
            }
            Action::SetThreshold(t) => self.threshold = t,
            Action::SetAnchor(a) => self.anchor = a,
            Action::ShowInMap { anchor, other } => {
                self.map.show_pair(anchor, other);
                self.tab = Tab::Map;
            }
            Action::AnalyseEmbedded => self.analyse_embedded(),
            Action::AskBundle => self.ask_bundle(),
            Action::AskModel => self.ask(
                DialogFor::AddModel,
                "Choose a model directory",
                Pick::Folder,
            ),
            Action::AskData => self.ask(DialogFor::Data, "Choose the data", Pick::File),
            Action::Analyse(request) => {
                self.new_analysis = None;
                self.start_analysis(*request);
            }
            Action::Error(e) => self.error(e),
            Action::Log(line) => self.platform.log(&line),
        }
    }

    fn take_polled(&mut self, polled: Polled) {
        if let Some(ex) = polled.complete {
            self.complete_explorer(*ex);
        }
        if let Some(models) = polled.models {
            self.models = models;
        }
        if let Some(task) = polled.analysis {
            if self.analysis.is_some() {
                self.error("an analysis is already running".into());
            } else {
                self.analysis = Some(task);
            }
        }
        for e in polled.errors {
            self.error(e);
        }
        for n in polled.notices {
            self.notice(n);
        }
    }

    fn poll_tasks(&mut self) {
        if let Some(t) = &mut self.analysis {
            let log_len = t.log.len();
            let poll = t.poll();
            for l in &t.log[log_len..] {
                self.platform.log(&format!("seedscope-log {l}"));
            }
            self.messages.extend(t.log[log_len..].iter().cloned());
            if let Poll::Done(r) = poll {
                self.analysis = None;
                match r {
                    Ok(AnalysisDone::Opened(ex)) => {
                        self.notice(match &ex.source {
                            BundleSource::Dir(d) => {
                                format!("analysis written to {}", d.display())
                            }
                            other => format!("analysis done: {}", other.display()),
                        });
                        self.set_explorer(*ex);
                    }
                    Ok(AnalysisDone::Cancelled) => self.notice("analysis cancelled".into()),
                    Ok(AnalysisDone::Interrupted(c)) => {
                        let msg = format!(
                            "analysis cancelled; its progress is saved in {} and the same \
                             analysis resumes from there",
                            c.display()
                        );
                        self.messages.push(msg.clone());
                        self.notice(msg);
                    }
                    Err(e) => self.error(format!("analysis failed: {e}")),
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
        if let Some((to, rx)) = &self.png_result {
            match rx.try_recv() {
                Ok(r) => {
                    let to = to.clone();
                    self.png_result = None;
                    match r.and_then(|png| export::deliver(self.platform.as_ref(), &to, &png)) {
                        Ok(said) => self.notice(said),
                        Err(e) => self.error(e.to_string()),
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.png_result = None;
                    self.error("the screenshot for the PNG export never arrived".into());
                }
            }
        }
    }

    fn dialog_done(&mut self, purpose: DialogFor, path: PathBuf) {
        match purpose {
            DialogFor::OpenBundle => self.open_bundle(path),
            DialogFor::AddModel => self.new_analysis.get_or_insert_default().models.push(path),
            DialogFor::Data => self.new_analysis.get_or_insert_default().data = Some(path),
            DialogFor::ExportCsv => self.export(Export::Csv, ExportTo::File(path)),
            DialogFor::ExportSvg => self.export(Export::Svg, ExportTo::File(path)),
            DialogFor::ExportPng => self.export(Export::Png, ExportTo::File(path)),
        }
    }

    /// Make export `what` and hand it to `to` (a PNG once its screenshot arrives).
    fn export(&mut self, what: Export, to: ExportTo) {
        let bytes = match what {
            Export::Csv => match self.ex.clone() {
                Some(ex) => crate::views::table::csv_bytes(&ex, &self.table.order),
                None => Err("no bundle is open".into()),
            },
            Export::Svg => self.plot_svg().map(String::into_bytes),
            Export::Png => {
                match self.plot_rect() {
                    Some(rect) => {
                        self.png_result = Some((to, export::screenshot_region(&self.ctx, rect)))
                    }
                    None => self.error("no plot is shown to export".into()),
                }
                return;
            }
        };
        match bytes.and_then(|b| export::deliver(self.platform.as_ref(), &to, &b)) {
            Ok(said) => self.notice(said),
            Err(e) => self.error(e.to_string()),
        }
    }

    fn ask(&mut self, purpose: DialogFor, title: &str, pick: Pick) {
        self.prompt = Some(PathPrompt::new(purpose, title, pick));
    }

    /// The path prompt, while one is open; a chosen path goes where it was asked for.
    fn prompt_window(&mut self, ctx: &egui::Context) {
        let Some(mut p) = self.prompt.take() else {
            return;
        };
        let (outcome, problem) = p.ui(ctx, &self.settings.recent, self.platform.as_ref());
        if let Some(problem) = problem {
            self.error(problem);
        }
        match outcome {
            Prompted::Open => self.prompt = Some(p),
            Prompted::Closed => {}
            Prompted::Chosen(path) => self.dialog_done(p.purpose, path),
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
            self.apply(Action::Step(1));
        }
        if prev {
            self.apply(Action::Step(-1));
        }
        if slash {
            self.tab = Tab::Table;
            self.table.focus_search = true;
        }
        // On the neuron page: T types live text, E finds the examples.
        if self.tab == Tab::Neuron {
            let (t, e) = ctx.input(|i| (i.key_pressed(Key::T), i.key_pressed(Key::E)));
            self.neuron.focus_live |= t;
            self.neuron.find_examples |= e;
        }
        // 1–4: the views in menu order.
        let keys = [Key::Num1, Key::Num2, Key::Num3, Key::Num4, Key::Num5];
        if let Some((tab, _)) = keys
            .iter()
            .zip(TABS)
            .find(|(k, _)| ctx.input(|i| i.key_pressed(**k)))
            .map(|(_, t)| t)
        {
            self.tab = tab;
        }
    }

    fn menu_bar(&mut self, ui: &mut egui::Ui) {
        let files = self.platform.has_files();
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open bundle…").clicked() {
                    self.ask_bundle();
                }
                self.platform.menu_ui(ui);
                if files && ui.button("New analysis…").clicked() {
                    self.new_analysis = Some(NewAnalysis::default());
                }
                if ui.button("Analyse the embedded family again").clicked() {
                    self.analyse_embedded();
                }
                ui.separator();
                // Exports: to a path the user types or picks (the desktop), or downloaded (the
                // page, which has no paths).
                let plot = matches!(self.tab, Tab::Overview | Tab::Map) && self.ex.is_some();
                let items = [
                    (Export::Csv, "Export table as CSV…", true),
                    (Export::Png, "Export plot as PNG…", plot),
                    (Export::Svg, "Export plot as SVG…", plot),
                ];
                for (what, label, enabled) in items {
                    if ui
                        .add_enabled(enabled, egui::Button::new(label))
                        .on_disabled_hover_text("the overview and the correlation map are plots")
                        .clicked()
                    {
                        let (purpose, name) = what.dialog();
                        if files {
                            self.ask(purpose, "Export", Pick::Save(name));
                        } else {
                            self.export(what, ExportTo::Download(name.into()));
                        }
                    }
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
                    t.cancel();
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
            self.platform.status_ui(ui);
        });
    }

    /// The open bundle's view.
    fn view_ui(&mut self, ui: &mut egui::Ui, ex: &Arc<Explorer>) -> Option<Action> {
        let fetching = self.platform.fetching();
        let tab = self.tab;
        // The views are taken out while they draw, so they can borrow the shared state.
        let (mut overview, mut map, mut table, mut neuron, mut training) = (
            std::mem::take(&mut self.overview),
            std::mem::take(&mut self.map),
            std::mem::take(&mut self.table),
            std::mem::take(&mut self.neuron),
            std::mem::take(&mut self.training),
        );
        let mut shared = self.shared(ex);
        let action = match tab {
            Tab::Overview => overview.ui(ui, &mut shared),
            Tab::Map => map.ui(ui, &mut shared, fetching),
            Tab::Table => table.ui(ui, &mut shared),
            Tab::Neuron => neuron.ui(ui, &mut shared),
            Tab::Training => training.ui(ui, &mut shared),
        };
        (
            self.overview,
            self.map,
            self.table,
            self.neuron,
            self.training,
        ) = (overview, map, table, neuron, training);
        action
    }

    /// One frame of the whole UI (eframe calls it through [`eframe::App::ui`]).
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        let polled = self.platform.poll(self.ex.as_ref(), &ctx);
        self.take_polled(polled);
        self.poll_tasks();
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        if !dropped.is_empty()
            && let Some(last) = self.platform.dropped(dropped, &ctx).pop()
        {
            self.opening = Some(last);
        }
        self.keyboard(&ctx);
        egui::Panel::top("menu").show(ui, |ui| self.menu_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        let action = egui::CentralPanel::default()
            .show(ui, |ui| match self.ex.clone() {
                Some(ex) => self.view_ui(ui, &ex),
                None => Welcome::ui(
                    ui,
                    self.analysis.is_some(),
                    self.opening.is_some(),
                    &self.messages,
                    self.platform.drop_hint(),
                ),
            })
            .inner;
        if let Some(a) = action {
            self.apply(a);
        }
        if let Some(form) = &mut self.new_analysis {
            let mut open = true;
            let action = form.window(&ctx, &mut open);
            if !open {
                self.new_analysis = None;
            }
            if let Some(a) = action {
                self.apply(a);
            }
        }
        let polled = self.platform.windows_ui(&ctx, self.analysis.is_some());
        self.take_polled(polled);
        self.prompt_window(&ctx);
        self.notices.ui(&ctx);
        if self.analysis.is_some() || self.opening.is_some() || self.map.is_loading() {
            ctx.request_repaint_after(Duration::from_millis(500));
        }
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
