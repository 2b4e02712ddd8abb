//! The page's [`Platform`]: bundles fetched from a URL (the small files first, the heavy arrays
//! after it opens), picked with the browser's file dialog or dropped, all held in memory; the
//! embedded family fetched through the Cache API and analysed on the page's WebGPU device, and
//! run there for live text and example scans of any bundle made from it; the form for
//! analysing models chosen from disk, whose models then serve that bundle's live text and
//! scans the same way; exports downloaded as files; console lines the end-to-end test reads.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use seedscope_analysis::bundle::{BundleFiles, BundleSource};
use seedscope_analysis::job::{AnalysisRequest, FAMILY, MemoryInputs, MemoryTokens};
use seedscope_app::inspect::Models;
use seedscope_app::jobs::{AnalysisDone, JobForwarder, Pick, Poll, Reporter, Task};
use seedscope_app::platform::{
    HEAVY, LIGHT, MAX_BROWSER_BUNDLE_BYTES, MAX_BROWSER_WEIGHT_BYTES, Opening, Platform, Polled,
    REQUIRED, check_file_fits, check_fits, join_url, open_files, summary_line,
};
use seedscope_app::{AppError, Explorer, Launch};
use seedscope_model::{BackendKind, ComputeDevice};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// The browser.
pub struct Page {
    /// The WebGPU device the page draws with, which analyses share; `Err(why)` without one.
    webgpu: Result<eframe::egui_wgpu::RenderState, String>,
    /// The URL of a bundle opening without its heavy arrays, still to fetch.
    heavy_url: Option<String>,
    /// Fetching them.
    heavy: Option<Opening>,
    /// The form for analysing models chosen from disk, when open.
    disk: Option<DiskForm>,
    /// Whether the first frame's time and the WebGPU state have been reported.
    reported: bool,
    /// Where the embedded family's files are (`?family=URL`).
    family_url: String,
    /// The open bundle's models (live text, example scans), once fetched: `(bundle, models)`.
    models: Option<(String, Arc<Models>)>,
    /// Fetching them for a bundle.
    models_task: Option<(String, Task<Arc<Models>>)>,
    /// The inputs of the last analysis of models chosen from disk, kept for that bundle's live
    /// text and example scans.
    disk_inputs: Option<Arc<MemoryInputs>>,
    /// Analyses of models from disk so far (each bundle gets its own name).
    disk_runs: usize,
}

impl Page {
    /// The page's platform, from eframe's renderer: WebGPU, or WebGL2 (drawing only), or none;
    /// the embedded family's files under `family_url`.
    pub fn new(cc: &eframe::CreationContext<'_>, family_url: String) -> Self {
        let webgpu = match &cc.wgpu_render_state {
            Some(rs) if rs.adapter.get_info().backend == wgpu::Backend::BrowserWebGpu => {
                Ok(rs.clone())
            }
            Some(_) => Err("this browser offers no WebGPU (the page draws with WebGL2)".into()),
            None => Err("this browser offers no WebGPU".into()),
        };
        Self {
            webgpu,
            heavy_url: None,
            heavy: None,
            disk: None,
            reported: false,
            family_url,
            models: None,
            models_task: None,
            disk_inputs: None,
            disk_runs: 0,
        }
    }

    /// The device analyses run on, or why there is none.
    fn compute_device(&self) -> Result<ComputeDevice, String> {
        let rs = self.webgpu.as_ref().map_err(Clone::clone)?;
        ComputeDevice::from_wgpu(
            rs.instance.clone(),
            rs.adapter.clone(),
            rs.device.clone(),
            rs.queue.clone(),
        )
        .map_err(|e| e.to_string())
    }
}

impl Platform for Page {
    fn analyse_embedded(
        &mut self,
        launch: &Launch,
        ctx: &egui::Context,
    ) -> Result<Task<AnalysisDone>, AppError> {
        let device = self.compute_device().map_err(needs_webgpu)?;
        let (family_url, max_tokens) = (launch.family_url.clone(), launch.max_tokens);
        Ok(Task::spawn_async(
            "analysing the embedded family in this browser",
            Some(ctx.clone()),
            move |rep| async move {
                let mut models = Vec::new();
                for name in FAMILY {
                    rep.log(format!("fetching {name}"));
                    let dir = join_url(&family_url, name);
                    let config = fetch_cached(&join_url(&dir, "config.json")).await?;
                    let weights = fetch_cached(&join_url(&dir, "model.safetensors")).await?;
                    models.push((name.to_string(), config, weights));
                }
                let tokens_url = join_url(&family_url, "eval_tokens.npy");
                let inputs = MemoryInputs {
                    models,
                    tokens: MemoryTokens::Npy(fetch_cached(&tokens_url).await?),
                    tokenizer_json: fetch_cached(&join_url(&family_url, "tokenizer.json")).await?,
                    source: tokens_url,
                };
                let (bytes, note) = cache_state();
                rep.log(format!(
                    "model files: {:.1} MB in the browser cache",
                    bytes as f64 / 1e6
                ));
                if let Some(note) = note {
                    rep.log(note);
                }
                analyse_here(
                    &device,
                    &inputs,
                    max_tokens,
                    "the embedded family, analysed in this browser",
                    &rep,
                )
                .await
            },
        ))
    }

    fn open_url(&mut self, url: &str, ctx: &egui::Context) -> Result<Opening, AppError> {
        self.heavy_url = Some(url.to_owned());
        let url = url.to_owned();
        Ok(Task::spawn_async(
            format!("fetching {url}"),
            Some(ctx.clone()),
            move |rep| async move {
                let mut files = BundleFiles::new();
                let mut room = MAX_BROWSER_BUNDLE_BYTES;
                for name in REQUIRED.iter().chain(&LIGHT) {
                    rep.log(format!("fetching {}", join_url(&url, name)));
                    match fetch_bytes(&join_url(&url, name), room).await? {
                        Some(bytes) => {
                            room -= bytes.len() as u64;
                            files.insert((*name).to_owned(), bytes);
                        }
                        None if REQUIRED.contains(name) => {
                            return Err(AppError::Other(format!(
                                "{}: not found (a bundle has {})",
                                join_url(&url, name),
                                REQUIRED.join(", ")
                            )));
                        }
                        None => {}
                    }
                }
                open_files(url, files).map(Some)
            },
        ))
    }

    fn pick_bundle(&mut self, ctx: &egui::Context) -> Option<Opening> {
        Some(Task::spawn_async(
            "choosing a bundle",
            Some(ctx.clone()),
            move |_| async move {
                let Some(handles) = rfd::AsyncFileDialog::new()
                    .set_title(
                        "Choose the files of a Seedscope bundle (manifest.json, neurons.csv, …)",
                    )
                    .pick_files()
                    .await
                else {
                    return Ok(None);
                };
                let mut files = BundleFiles::new();
                for h in handles {
                    files.insert(h.file_name(), h.read().await);
                }
                open_files("chosen files".into(), files).map(Some)
            },
        ))
    }

    /// Dropped files come without paths: together they are one bundle.
    fn dropped(
        &mut self,
        dropped: Vec<egui::DroppedFileHandle>,
        ctx: &egui::Context,
    ) -> Vec<Opening> {
        vec![Task::spawn_async(
            "opening dropped files",
            Some(ctx.clone()),
            move |_| async move {
                let mut files = BundleFiles::new();
                for f in &dropped {
                    let name = f
                        .path()
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let bytes = f
                        .bytes_async()
                        .await
                        .map_err(|e| AppError::Other(format!("{name}: {e}")))?;
                    files.insert(name, bytes);
                }
                open_files("dropped files".into(), files).map(Some)
            },
        )]
    }

    fn browse(&self, _: &str, _: Pick, _: &egui::Context) -> Option<Task<Option<PathBuf>>> {
        None
    }

    fn has_files(&self) -> bool {
        false
    }

    fn drop_hint(&self) -> &'static str {
        "or drop a bundle's files onto this page"
    }

    fn models(&self, ex: &Explorer) -> Result<Arc<Models>, String> {
        match &self.models {
            Some((bundle, models)) if *bundle == ex.source.display() => Ok(models.clone()),
            _ => Err(
                "fetching the seeds' models into this browser for live text and example \
                      scans…"
                    .into(),
            ),
        }
    }

    fn opened(&mut self, ex: &Arc<Explorer>, ctx: &egui::Context) {
        console_log(&summary_line(ex));
        // Live text and example scans: the models the bundle was made from, where the page has
        // them (analysed from disk here, or the embedded family's), on the page's WebGPU
        // device (else the CPU).
        let key = ex.source.display();
        if self.models.as_ref().is_none_or(|(b, _)| *b != key) {
            let device = self
                .compute_device()
                .or_else(|_| ComputeDevice::open(BackendKind::Cpu).map_err(|e| e.to_string()));
            self.models_task = Some((
                key,
                match device {
                    Ok(device) => spawn_load_models(
                        ex.clone(),
                        self.family_url.clone(),
                        self.disk_inputs.clone(),
                        device,
                        ctx,
                    ),
                    Err(e) => Task::spawn_async("models", None, move |_| async move {
                        Err(AppError::Other(e))
                    }),
                },
            ));
        }
        // A bundle from a URL opened without its heavy arrays: fetch them now.
        if let Some(url) = self.heavy_url.take()
            && ex.source.display() == url
        {
            self.heavy = Some(spawn_fetch_heavy(url, ex.clone(), ctx));
        }
    }

    fn log(&self, line: &str) {
        console_log(line);
    }

    fn poll(&mut self, shown: Option<&Arc<Explorer>>, _ctx: &egui::Context) -> Polled {
        let mut out = Polled::default();
        if !self.reported {
            self.reported = true;
            log_first_frame();
            match &self.webgpu {
                Ok(rs) => {
                    let info = rs.adapter.get_info();
                    console_log(&format!(
                        "seedscope-webgpu {} ({:?})",
                        info.name, info.device_type
                    ));
                }
                Err(why) => {
                    console_log(&format!("seedscope-no-webgpu {why}"));
                    out.notices.push(format!(
                        "Analysis is unavailable: {why}. Bundles open and every view works \
                         here; to analyse, use the desktop app or `seedscope analyze`."
                    ));
                }
            }
        }
        out.errors
            .extend(PAGE_ERRORS.with(|q| std::mem::take(&mut *q.borrow_mut())));
        if let Some(t) = &mut self.heavy
            && let Poll::Done(r) = t.poll()
        {
            self.heavy = None;
            match r {
                // Swapped in as long as that bundle is still the one shown.
                Ok(Some(ex))
                    if shown.is_some_and(|s| s.source.display() == ex.source.display()) =>
                {
                    out.complete = Some(ex)
                }
                Ok(_) => {}
                Err(e) => out
                    .errors
                    .push(format!("the bundle's examples and tiles: {e}")),
            }
        }
        if let Some((key, t)) = &mut self.models_task
            && let Poll::Done(r) = t.poll()
        {
            let key = std::mem::take(key);
            self.models_task = None;
            let shown = shown.is_some_and(|s| s.source.display() == key);
            match r {
                Ok(models) => {
                    console_log(&format!("seedscope-models {key}"));
                    if shown {
                        out.models = Some(Ok(models.clone()));
                    }
                    self.models = Some((key, models));
                }
                Err(e) => {
                    console_log(&format!("seedscope-log no models for live text: {e}"));
                    if shown {
                        out.models = Some(Err(e.to_string()));
                    }
                }
            }
        }
        out
    }

    fn download(&self, name: &str, bytes: &[u8]) -> Result<String, AppError> {
        download(name, bytes).map_err(AppError::Other)?;
        Ok(format!("downloaded {name}"))
    }

    fn fetching(&self) -> bool {
        self.heavy.is_some() || self.heavy_url.is_some()
    }

    fn menu_ui(&mut self, ui: &mut egui::Ui) {
        if ui.button("Analyse models from disk…").clicked() {
            self.disk = Some(DiskForm::default());
        }
    }

    fn status_ui(&mut self, ui: &mut egui::Ui) {
        if let Err(why) = &self.webgpu {
            ui.separator();
            ui.colored_label(
                ui.visuals().warn_fg_color,
                "analysis unavailable: no WebGPU",
            )
            .on_hover_text(why.clone());
        }
        let (bytes, note) = cache_state();
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
                .on_hover_text("delete the cached model files (they are fetched again when needed)")
                .clicked()
            {
                wasm_bindgen_futures::spawn_local(async {
                    if let Err(e) = clear_cache().await {
                        console_log(&format!("clearing the cache failed: {e}"));
                    }
                });
            }
        }
    }

    fn windows_ui(&mut self, ctx: &egui::Context, busy: bool) -> Polled {
        let mut out = Polled::default();
        let Some(mut form) = self.disk.take() else {
            return out;
        };
        if let Some(e) = form.poll() {
            out.errors.push(e);
        }
        let (mut open, mut start) = (true, false);
        egui::Window::new("Analyse models from disk")
            .open(&mut open)
            .collapsible(false)
            .show(ctx, |ui| start = form.ui(ui));
        if !start {
            if open {
                self.disk = Some(form);
            }
            return out;
        }
        let sizes: Vec<u64> = form.models.iter().map(|m| m.2.len() as u64).collect();
        if let Err(e) = check_fits(&sizes) {
            out.errors.push(e.to_string());
            self.disk = Some(form);
            return out;
        }
        if busy {
            out.errors.push("an analysis is already running".into());
            self.disk = Some(form);
            return out;
        }
        let (Some((source, tokens)), Some(tokenizer_json)) = (form.data, form.tokenizer) else {
            return out;
        };
        let inputs = Arc::new(MemoryInputs {
            models: form.models,
            tokens,
            tokenizer_json,
            source,
        });
        let max_tokens = (form.max_tokens > 0).then_some(form.max_tokens);
        match self.compute_device().map_err(needs_webgpu) {
            Ok(device) => {
                self.disk_runs += 1;
                let label = format!("models from disk, analysis {}", self.disk_runs);
                self.disk_inputs = Some(inputs.clone());
                out.analysis = Some(Task::spawn_async(
                    "analysing models from disk in this browser",
                    Some(ctx.clone()),
                    move |rep| async move {
                        analyse_here(&device, &inputs, max_tokens, &label, &rep).await
                    },
                ))
            }
            Err(e) => out.errors.push(e.to_string()),
        }
        out
    }
}

/// Models chosen from disk for an analysis in the browser.
#[derive(Default)]
struct DiskForm {
    /// `(name, config.json, model.safetensors)`, the anchor first.
    models: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// The anchor's `tokenizer.json`.
    tokenizer: Option<Vec<u8>>,
    /// The data: its name and contents.
    data: Option<(String, MemoryTokens)>,
    /// Token budget (0: all).
    max_tokens: u64,
    picking: Option<Task<Option<Picked>>>,
}

enum Picked {
    Model(String, Vec<u8>, Vec<u8>, Option<Vec<u8>>),
    Data(String, MemoryTokens),
}

impl DiskForm {
    /// Take what a picker brought; an error to show.
    fn poll(&mut self) -> Option<String> {
        let t = self.picking.as_mut()?;
        let Poll::Done(r) = t.poll() else {
            return None;
        };
        self.picking = None;
        match r {
            Ok(Some(Picked::Model(name, config, weights, tokenizer))) => {
                if self.tokenizer.is_none() {
                    self.tokenizer = tokenizer;
                }
                self.models.push((name, config, weights));
                None
            }
            Ok(Some(Picked::Data(name, tokens))) => {
                self.data = Some((name, tokens));
                None
            }
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The form; whether "Analyse" was pressed.
    fn ui(&mut self, ui: &mut egui::Ui) -> bool {
        ui.label(
            "Models that share a tokenizer (seeds of one model, or models of other sizes); the \
             first is the anchor.",
        );
        for (name, _, w) in &self.models {
            ui.label(format!("{name}: {:.1} MB of weights", w.len() as f64 / 1e6));
        }
        let busy = self.picking.is_some();
        ui.horizontal(|ui| {
            if ui
                .add_enabled(!busy, egui::Button::new("Add a model…"))
                .clicked()
            {
                self.picking = Some(spawn_pick_model(self.models.len() + 1, ui.ctx()));
            }
            if ui
                .add_enabled(!busy, egui::Button::new("Choose the data…"))
                .clicked()
            {
                self.picking = Some(spawn_pick_data(ui.ctx()));
            }
        });
        ui.label(match &self.data {
            Some((name, _)) => format!("data: {name}"),
            None => "data: none chosen yet (.npy token ids or .txt text)".into(),
        });
        if self.tokenizer.is_none() {
            ui.label("tokenizer: none yet (choose tokenizer.json with the first model)");
        }
        ui.horizontal(|ui| {
            ui.label("token budget (0 = all)");
            ui.add(egui::DragValue::new(&mut self.max_tokens).speed(1000));
        });
        ui.add_enabled(
            self.models.len() >= 2 && self.data.is_some() && self.tokenizer.is_some(),
            egui::Button::new("Analyse"),
        )
        .clicked()
    }
}

/// Let the user choose one model's files (`config.json`, a `.safetensors`, optionally
/// `tokenizer.json`), named `model-{n}`.
fn spawn_pick_model(n: usize, ctx: &egui::Context) -> Task<Option<Picked>> {
    Task::spawn_async("choosing a model", Some(ctx.clone()), move |_| async move {
        let Some(handles) = rfd::AsyncFileDialog::new()
            .set_title("Choose one model's config.json and model.safetensors (and tokenizer.json)")
            .pick_files()
            .await
        else {
            return Ok(None);
        };
        let (mut config, mut weights, mut tokenizer) = (None, None, None);
        for h in handles {
            let name = h.file_name();
            if name == "config.json" {
                config = Some(h.read().await);
            } else if name.ends_with(".safetensors") {
                weights = Some(h.read().await);
            } else if name == "tokenizer.json" {
                tokenizer = Some(h.read().await);
            }
        }
        match (config, weights) {
            (Some(c), Some(w)) => Ok(Some(Picked::Model(format!("model-{n}"), c, w, tokenizer))),
            _ => Err(AppError::Other(
                "choose the model's config.json and its model.safetensors together (the \
                 browser reads safetensors; convert pytorch_model.bin with the desktop app or \
                 transformers)"
                    .into(),
            )),
        }
    })
}

/// Let the user choose the data: token rows (`.npy`) or UTF-8 text.
fn spawn_pick_data(ctx: &egui::Context) -> Task<Option<Picked>> {
    Task::spawn_async("choosing data", Some(ctx.clone()), move |_| async move {
        let Some(h) = rfd::AsyncFileDialog::new()
            .set_title("Choose the data: token ids (.npy) or text (.txt)")
            .pick_file()
            .await
        else {
            return Ok(None);
        };
        let name = h.file_name();
        let bytes = h.read().await;
        let tokens = if name.ends_with(".npy") {
            MemoryTokens::Npy(bytes)
        } else {
            MemoryTokens::Text(
                String::from_utf8(bytes)
                    .map_err(|e| AppError::Other(format!("{name}: not UTF-8 text ({e})")))?,
            )
        };
        Ok(Some(Picked::Data(name, tokens)))
    })
}

/// Why analysis needs WebGPU, and what to do instead.
fn needs_webgpu(e: String) -> AppError {
    AppError::Other(format!(
        "analysis in the browser needs WebGPU ({e}). Bundles still open here; to analyse, use \
         the desktop app (`seedscope`) or the CLI (`seedscope analyze`)"
    ))
}

/// Run [`analyse_in_memory`](seedscope_analysis::job::analyse_in_memory) on this page's
/// device, reporting through `rep`, and open the bundle it makes.
async fn analyse_here(
    device: &ComputeDevice,
    inputs: &MemoryInputs,
    max_tokens: Option<u64>,
    label: &str,
    rep: &Reporter<AnalysisDone>,
) -> Result<AnalysisDone, AppError> {
    let request = AnalysisRequest {
        save_tiles: Some("all".into()),
        max_tokens,
        // Small blocks: the page gets the event loop (drawing, progress) between them.
        batch_size: Some(4),
        command: vec![format!("seedscope (browser): {label}")],
        ..AnalysisRequest::default()
    };
    let started = web_time::Instant::now();
    let mut forward = JobForwarder::new(rep);
    let files = seedscope_analysis::job::analyse_in_memory(
        &request,
        inputs,
        device,
        rep.cancel.clone(),
        |e| forward.event(e),
    )
    .await?;
    let Some(files) = files else {
        return Ok(AnalysisDone::Cancelled);
    };
    let opening = web_time::Instant::now();
    let ex = Explorer::open_source(BundleSource::Memory {
        label: label.into(),
        files: Arc::new(files),
    })?;
    rep.log(format!(
        "bundle opened in {:.1} s",
        opening.elapsed().as_secs_f64()
    ));
    console_log(&format!(
        "seedscope-analysis-seconds {:.2}",
        started.elapsed().as_secs_f64()
    ));
    Ok(AnalysisDone::Opened(Box::new(ex)))
}

/// Fetch the heavy arrays of the bundle under `url` (max-activating examples, correlation
/// tiles) and reopen `ex`, which was opened without them, with them.
fn spawn_fetch_heavy(url: String, ex: Arc<Explorer>, ctx: &egui::Context) -> Opening {
    Task::spawn_async(
        format!("fetching the examples and tiles of {url}"),
        Some(ctx.clone()),
        move |rep| async move {
            let BundleSource::Memory { label, files } = &ex.source else {
                return Ok(None);
            };
            let mut files = (**files).clone();
            let held: u64 = files.values().map(|b| b.len() as u64).sum();
            let mut room = MAX_BROWSER_BUNDLE_BYTES.saturating_sub(held);
            for name in HEAVY {
                let file = join_url(&url, name);
                rep.log(format!("fetching {file}"));
                // One array that cannot come (too large for the page, a network error) leaves
                // the bundle open with the other, and says why.
                match fetch_bytes(&file, room).await {
                    Ok(Some(bytes)) => {
                        room -= bytes.len() as u64;
                        files.insert(name.to_owned(), bytes);
                    }
                    Ok(None) => {}
                    Err(e) => PAGE_ERRORS.with(|q| q.borrow_mut().push(e.to_string())),
                }
            }
            Explorer::open_source(BundleSource::Memory {
                label: label.clone(),
                files: Arc::new(files),
            })
            .map(|ex| Some(Box::new(ex)))
        },
    )
}

/// The models of bundle `ex` for live text and example scans, loaded on `device`: from `disk`
/// when the bundle was analysed from those inputs in this page, else the embedded family's
/// files fetched from `family_url` (with its data, which is the bundle's when the bundle was
/// made from it); [`Models::from_memory`] checks every model against the manifest's sha256.
fn spawn_load_models(
    ex: Arc<Explorer>,
    family_url: String,
    disk: Option<Arc<MemoryInputs>>,
    device: ComputeDevice,
    ctx: &egui::Context,
) -> Task<Arc<Models>> {
    Task::spawn_async(
        "fetching the models for live text",
        Some(ctx.clone()),
        move |rep| async move {
            let names: Vec<&str> = ex
                .bundle
                .manifest
                .models
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            let from_disk =
                disk.filter(|d| names.iter().all(|n| d.models.iter().any(|m| m.0 == *n)));
            let inputs = match from_disk {
                Some(d) => d,
                None => Arc::new(fetch_family(&names, &family_url, &rep).await?),
            };
            let models = Models::from_memory(&ex, device, &inputs)?;
            if !models.has_data() {
                rep.log(format!(
                    "{} is not this bundle's data: examples come from the bundle",
                    inputs.source
                ));
            }
            Ok(Arc::new(models))
        },
    )
}

/// The embedded family's files for the models `names` (each must be one of its seeds), its
/// tokenizer and its eval tokens, fetched from `family_url` through the cache.
async fn fetch_family(
    names: &[&str],
    family_url: &str,
    rep: &Reporter<Arc<Models>>,
) -> Result<MemoryInputs, AppError> {
    let mut models = Vec::new();
    for name in names {
        if !FAMILY.contains(name) {
            return Err(AppError::Other(format!(
                "live text and example scans in the browser run the embedded family's models \
                 or those analysed from disk in this page, and {name} is neither: open this \
                 bundle in the desktop app (`seedscope app BUNDLE`), which reads its models \
                 from the manifest's paths"
            )));
        }
        let dir = join_url(family_url, name);
        rep.log(format!("fetching {dir}"));
        let config = fetch_cached(&join_url(&dir, "config.json")).await?;
        let weights = fetch_cached(&join_url(&dir, "model.safetensors")).await?;
        models.push((name.to_string(), config, weights));
    }
    let tokens_url = join_url(family_url, "eval_tokens.npy");
    Ok(MemoryInputs {
        models,
        tokens: MemoryTokens::Npy(fetch_cached(&tokens_url).await?),
        tokenizer_json: fetch_cached(&join_url(family_url, "tokenizer.json")).await?,
        source: tokens_url,
    })
}

/// Hand `bytes` to the browser as a download named `name` (a Blob behind a temporary link).
fn download(name: &str, bytes: &[u8]) -> Result<(), String> {
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document to download from")?;
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).map_err(js_error)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(js_error)?;
    let link = document
        .create_element("a")
        .map_err(js_error)?
        .dyn_into::<web_sys::HtmlAnchorElement>()
        .map_err(|_| "not a link element".to_string())?;
    link.set_href(&url);
    link.set_download(name);
    link.click();
    web_sys::Url::revoke_object_url(&url).map_err(js_error)?;
    console_log(&format!("seedscope-download {name} {}", bytes.len()));
    Ok(())
}

/// A JavaScript error as text.
fn js_error(e: wasm_bindgen::JsValue) -> String {
    e.as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

/// GET `url`: its bytes, `None` on 404, an error naming the URL otherwise, and one naming the
/// sizes when the file is larger than `room` bytes (by its Content-Length before the body is
/// read, else by the body's length before it is copied into WebAssembly memory).
async fn fetch_bytes(url: &str, room: u64) -> Result<Option<Vec<u8>>, AppError> {
    let window = web_sys::window().ok_or("no browser window")?;
    let response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(|e| format!("{url}: {}", js_error(e)))?;
    let response: web_sys::Response = response
        .dyn_into()
        .map_err(|_| format!("{url}: not an HTTP response"))?;
    if response.status() == 404 {
        return Ok(None);
    }
    if !response.ok() {
        return Err(AppError::Other(format!(
            "{url}: HTTP {} {}",
            response.status(),
            response.status_text()
        )));
    }
    let declared = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(size) = declared {
        check_file_fits(url, size, room)?;
    }
    let buffer = JsFuture::from(
        response
            .array_buffer()
            .map_err(|e| format!("{url}: {}", js_error(e)))?,
    )
    .await
    .map_err(|e| format!("{url}: {}", js_error(e)))?;
    let bytes = js_sys::Uint8Array::new(&buffer);
    check_file_fits(url, bytes.length() as u64, room)?;
    Ok(Some(bytes.to_vec()))
}

thread_local! {
    /// Errors of the page's background fetches that leave what they were part of usable (a
    /// bundle open without its examples), shown at the next poll.
    static PAGE_ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Write `line` to the browser console.
fn console_log(line: &str) {
    web_sys::console::log_1(&line.into());
}

/// Write the time since navigation started to the console (`seedscope-first-frame MS`).
fn log_first_frame() {
    let ms = web_sys::window()
        .and_then(|w| w.performance())
        .map_or(f64::NAN, |p| p.now());
    console_log(&format!("seedscope-first-frame {ms:.0}"));
}

/// The Cache API cache that holds the fetched model files.
const CACHE_NAME: &str = "seedscope-models-v1";

/// What this page has put into (or found in) the browser cache: bytes per URL, and why
/// caching stopped if it did (quota).
#[derive(Default)]
struct CacheState {
    sizes: BTreeMap<String, u64>,
    refused: Option<String>,
}

thread_local! {
    static CACHE_STATE: RefCell<CacheState> = RefCell::new(CacheState::default());
}

/// Bytes of model files this page keeps in the browser cache, and why caching stopped if it
/// did (a quota error: the files are then held in memory only).
fn cache_state() -> (u64, Option<String>) {
    CACHE_STATE.with(|c| {
        let c = c.borrow();
        (c.sizes.values().sum(), c.refused.clone())
    })
}

fn caches() -> Result<web_sys::CacheStorage, String> {
    web_sys::window()
        .ok_or("no browser window")?
        .caches()
        .map_err(js_error)
}

async fn open_cache() -> Result<web_sys::Cache, String> {
    let cache = JsFuture::from(caches()?.open(CACHE_NAME))
        .await
        .map_err(js_error)?;
    cache
        .dyn_into::<web_sys::Cache>()
        .map_err(|_| "the Cache API returned no cache".to_string())
}

/// GET `url` through the browser's Cache API: a cached copy when there is one, else the network
/// (and the response is cached). When the cache is unavailable or full the bytes are still
/// returned (held in memory only) and [`cache_state`] says why.
async fn fetch_cached(url: &str) -> Result<Vec<u8>, AppError> {
    let cache = open_cache().await;
    if let Ok(cache) = &cache
        && let Ok(hit) = JsFuture::from(cache.match_with_str(url)).await
        && let Ok(response) = hit.dyn_into::<web_sys::Response>()
        && response.ok()
    {
        let buffer = JsFuture::from(response.array_buffer().map_err(js_error)?)
            .await
            .map_err(|e| format!("{url} (cached): {}", js_error(e)))?;
        let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
        CACHE_STATE.with(|c| c.borrow_mut().sizes.insert(url.into(), bytes.len() as u64));
        return Ok(bytes);
    }
    // No one file of the family may take more than the page's whole weight budget.
    let bytes = fetch_bytes(url, MAX_BROWSER_WEIGHT_BYTES)
        .await?
        .ok_or_else(|| format!("{url}: not found"))?;
    let stored = match &cache {
        Ok(cache) => {
            let array = js_sys::Uint8Array::from(&bytes[..]);
            match web_sys::Response::new_with_opt_buffer_source(Some(&array)) {
                Ok(response) => JsFuture::from(cache.put_with_str(url, &response))
                    .await
                    .map(|_| ())
                    .map_err(js_error),
                Err(e) => Err(js_error(e)),
            }
        }
        Err(e) => Err(e.clone()),
    };
    CACHE_STATE.with(|c| {
        let mut c = c.borrow_mut();
        match stored {
            Ok(()) => {
                c.sizes.insert(url.into(), bytes.len() as u64);
            }
            Err(e) => {
                c.refused = Some(format!(
                    "the browser cache refused the model files ({e}); they are kept in memory \
                     for this visit only"
                ))
            }
        }
    });
    Ok(bytes)
}

/// Delete the cached model files.
async fn clear_cache() -> Result<(), String> {
    JsFuture::from(caches()?.delete(CACHE_NAME))
        .await
        .map_err(js_error)?;
    CACHE_STATE.with(|c| *c.borrow_mut() = CacheState::default());
    Ok(())
}
