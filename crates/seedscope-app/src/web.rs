//! The browser side of the app (wasm32 only): bundles fetched from a URL, picked with the
//! browser's file dialog or dropped onto the page, all held in memory
//! ([`BundleSource::Memory`]); and the summary line the page writes to the console when a
//! bundle opens (the end-to-end test compares it with `seedscope analyze`).

use std::sync::Arc;

use seedscope_analysis::bundle::{
    ANATOMY, ATTENTION, BundleFiles, BundleSource, CORRELATION, HISTOGRAMS, MANIFEST, NEURONS,
    TILES, TOKENIZER,
};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::data::Explorer;
use crate::jobs::Task;
use seedscope_analysis::job::{MemoryInputs, MemoryTokens};

/// Files every bundle has.
const REQUIRED: [&str; 3] = [MANIFEST, NEURONS, CORRELATION];
/// Small files a bundle may have (a missing one is a 404, not an error), fetched before it
/// opens.
const LIGHT: [&str; 3] = [HISTOGRAMS, ATTENTION, TOKENIZER];
/// The heavy arrays (examples, correlation tiles): fetched after the bundle is open.
const HEAVY: [&str; 2] = [ANATOMY, TILES];

/// A JavaScript error as text.
pub fn js_error(e: wasm_bindgen::JsValue) -> String {
    e.as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

/// GET `url`: its bytes, `None` on 404, an error naming the URL otherwise.
pub async fn fetch_bytes(url: &str) -> Result<Option<Vec<u8>>, String> {
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
        return Err(format!(
            "{url}: HTTP {} {}",
            response.status(),
            response.status_text()
        ));
    }
    let buffer = JsFuture::from(
        response
            .array_buffer()
            .map_err(|e| format!("{url}: {}", js_error(e)))?,
    )
    .await
    .map_err(|e| format!("{url}: {}", js_error(e)))?;
    Ok(Some(js_sys::Uint8Array::new(&buffer).to_vec()))
}

/// `base` joined with `name` (a `/` between them).
pub fn join_url(base: &str, name: &str) -> String {
    format!("{}/{name}", base.trim_end_matches('/'))
}

/// Fetch the bundle whose files lie under `url` and open it without its heavy arrays
/// ([`spawn_fetch_heavy`] brings them).
pub fn spawn_fetch_bundle(url: String, ctx: Option<egui::Context>) -> Task<Option<Box<Explorer>>> {
    Task::spawn_async(format!("fetching {url}"), ctx, move |rep| async move {
        let mut files = BundleFiles::new();
        for name in REQUIRED.iter().chain(&LIGHT) {
            rep.log(format!("fetching {}", join_url(&url, name)));
            match fetch_bytes(&join_url(&url, name)).await? {
                Some(bytes) => {
                    files.insert((*name).to_owned(), bytes);
                }
                None if REQUIRED.contains(name) => {
                    return Err(format!(
                        "{}: not found (a bundle has {})",
                        join_url(&url, name),
                        REQUIRED.join(", ")
                    ));
                }
                None => {}
            }
        }
        open_files(url, files).map(Some)
    })
}

/// Fetch the heavy arrays of the bundle under `url` (max-activating examples, correlation
/// tiles) and reopen `ex`, which was opened without them, with them.
pub fn spawn_fetch_heavy(
    url: String,
    ex: Arc<Explorer>,
    ctx: Option<egui::Context>,
) -> Task<Option<Box<Explorer>>> {
    Task::spawn_async(
        format!("fetching the examples and tiles of {url}"),
        ctx,
        move |rep| async move {
            let BundleSource::Memory { label, files } = &ex.source else {
                return Ok(None);
            };
            let mut files = (**files).clone();
            for name in HEAVY {
                rep.log(format!("fetching {}", join_url(&url, name)));
                if let Some(bytes) = fetch_bytes(&join_url(&url, name)).await? {
                    files.insert(name.to_owned(), bytes);
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

/// Let the user choose a bundle's files with the browser's file dialog and open them.
pub fn spawn_pick_bundle(ctx: Option<egui::Context>) -> Task<Option<Box<Explorer>>> {
    Task::spawn_async("choosing a bundle", ctx, move |_| async move {
        let Some(handles) = rfd::AsyncFileDialog::new()
            .set_title("Choose the files of a Seedscope bundle (manifest.json, neurons.csv, …)")
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
    })
}

/// Open the files dropped onto the page as one bundle.
pub fn spawn_open_dropped(
    dropped: Vec<egui::DroppedFileHandle>,
    ctx: Option<egui::Context>,
) -> Task<Option<Box<Explorer>>> {
    Task::spawn_async("opening dropped files", ctx, move |_| async move {
        let mut files = BundleFiles::new();
        for f in &dropped {
            let name = f
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = f.bytes_async().await.map_err(|e| format!("{name}: {e}"))?;
            files.insert(name, bytes);
        }
        open_files("dropped files".into(), files).map(Some)
    })
}

/// Open in-memory files as a bundle, saying which required file is missing.
fn open_files(label: String, files: BundleFiles) -> Result<Box<Explorer>, String> {
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|n| !files.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{label}: a bundle needs {}; missing {}",
            REQUIRED.join(", "),
            missing.join(", ")
        ));
    }
    Explorer::open_source(BundleSource::Memory {
        label,
        files: Arc::new(files),
    })
    .map(Box::new)
}

/// Write `line` to the browser console.
pub fn console_log(line: &str) {
    web_sys::console::log_1(&line.into());
}

/// The line the page writes to the console when a bundle opens: `seedscope-summary ` and a
/// JSON object with the anchor's fraction of universal neurons overall and per layer (at the
/// bundle's threshold), the tokens and where the bundle came from.
pub fn summary_line(ex: &Explorer) -> String {
    let m = &ex.bundle.manifest;
    let anchor = ex.names.first().cloned().unwrap_or_default();
    let (fraction, per_layer) = seedscope_analysis::bundle::universal_fractions(
        ex.bundle
            .neurons
            .iter()
            .filter(|r| r.model == anchor)
            .map(|r| (r.layer, r.is_universal)),
        m.n_layers,
    );
    let json = serde_json::json!({
        "bundle": ex.source.display(),
        "anchor": anchor,
        "n_tokens": m.n_tokens,
        "threshold": m.options.threshold,
        "device": m.device,
        "fraction_universal": fraction,
        "fraction_universal_per_layer": per_layer,
    });
    format!("seedscope-summary {json}")
}

/// The Cache API cache that holds the fetched model files.
pub const CACHE_NAME: &str = "seedscope-models-v1";

/// What this page has put into (or found in) the browser cache: bytes per URL, and why
/// caching stopped if it did (quota).
#[derive(Default)]
struct CacheState {
    sizes: std::collections::BTreeMap<String, u64>,
    refused: Option<String>,
}

thread_local! {
    static CACHE_STATE: std::cell::RefCell<CacheState> = std::cell::RefCell::new(CacheState::default());
}

/// Bytes of model files this page keeps in the browser cache, and why caching stopped if it
/// did (a quota error: the files are then held in memory only).
pub fn cache_state() -> (u64, Option<String>) {
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
pub async fn fetch_cached(url: &str) -> Result<Vec<u8>, String> {
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
    let bytes = fetch_bytes(url)
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
pub async fn clear_cache() -> Result<(), String> {
    JsFuture::from(caches()?.delete(CACHE_NAME))
        .await
        .map_err(js_error)?;
    CACHE_STATE.with(|c| *c.borrow_mut() = CacheState::default());
    Ok(())
}

/// Fetch the embedded family from `family_url` (through the cache), analyse it (at most
/// `max_tokens` kept tokens) on this browser's WebGPU device with the same engine as the
/// desktop, and open the result.
pub fn spawn_web_analysis(
    device: Result<seedscope_model::ComputeDevice, String>,
    family_url: String,
    max_tokens: Option<u64>,
    ctx: Option<egui::Context>,
) -> Task<crate::jobs::AnalysisDone> {
    Task::spawn_async(
        "analysing the embedded family in this browser",
        ctx,
        move |rep| async move {
            let device = device.map_err(needs_webgpu)?;
            let mut models = Vec::new();
            for name in seedscope_analysis::job::FAMILY {
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
    )
}

/// Why analysis needs WebGPU, and what to do instead.
fn needs_webgpu(e: String) -> String {
    format!(
        "analysis in the browser needs WebGPU ({e}). Bundles still open here; to analyse, use \
         the desktop app (`seedscope`) or the CLI (`seedscope analyze`)"
    )
}

/// Run [`analyse_in_memory`](seedscope_analysis::job::analyse_in_memory) on this page's
/// device, reporting through `rep`, and open the bundle it makes.
async fn analyse_here(
    device: &seedscope_model::ComputeDevice,
    inputs: &seedscope_analysis::job::MemoryInputs,
    max_tokens: Option<u64>,
    label: &str,
    rep: &crate::jobs::Reporter<crate::jobs::AnalysisDone>,
) -> Result<crate::jobs::AnalysisDone, String> {
    use seedscope_analysis::job::{AnalysisRequest, analyse_in_memory};
    let request = AnalysisRequest {
        save_tiles: Some("all".into()),
        max_tokens,
        // Small blocks: the page gets the event loop (drawing, progress) between them.
        batch_size: Some(4),
        command: vec![format!("seedscope (browser): {label}")],
        ..AnalysisRequest::default()
    };
    let started = web_time::Instant::now();
    let mut forward = crate::jobs::JobForwarder::new(rep);
    let files = analyse_in_memory(&request, inputs, device, rep.cancel.clone(), |e| {
        forward.event(e)
    })
    .await
    .map_err(|e| e.to_string())?;
    let Some(files) = files else {
        return Ok(crate::jobs::AnalysisDone::Cancelled);
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
    Ok(crate::jobs::AnalysisDone::Opened(Box::new(ex)))
}

/// The most model weight the page takes on: every model is held twice (its bytes, and a CPU
/// copy for the weight statistics) besides its GPU upload, in a WebAssembly memory of at most
/// 4 GiB.
pub const MAX_BROWSER_WEIGHT_BYTES: u64 = 1 << 30;

/// Models chosen from disk for an analysis in the browser.
#[derive(Default)]
pub struct DiskForm {
    /// `(name, config.json, model.safetensors)`, the anchor first.
    pub models: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// The anchor's `tokenizer.json`.
    pub tokenizer: Option<Vec<u8>>,
    /// The data: its name and contents.
    pub data: Option<(String, MemoryTokens)>,
    /// Token budget (0: all).
    pub max_tokens: u64,
    picking: Option<Task<Option<Picked>>>,
}

enum Picked {
    Model(String, Vec<u8>, Vec<u8>, Option<Vec<u8>>),
    Data(String, MemoryTokens),
}

/// Let the user choose one model's files (`config.json`, a `.safetensors`, optionally
/// `tokenizer.json`), named `model-{n}`.
fn spawn_pick_model(n: usize, ctx: Option<egui::Context>) -> Task<Option<Picked>> {
    Task::spawn_async("choosing a model", ctx, move |_| async move {
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
            _ => Err(
                "choose the model's config.json and its model.safetensors together (the \
                      browser reads safetensors; convert pytorch_model.bin with the desktop app \
                      or transformers)"
                    .into(),
            ),
        }
    })
}

/// Let the user choose the data: token rows (`.npy`) or UTF-8 text.
fn spawn_pick_data(ctx: Option<egui::Context>) -> Task<Option<Picked>> {
    Task::spawn_async("choosing data", ctx, move |_| async move {
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
                String::from_utf8(bytes).map_err(|e| format!("{name}: not UTF-8 text ({e})"))?,
            )
        };
        Ok(Some(Picked::Data(name, tokens)))
    })
}

/// Check that `models` fit the page, naming the limit and what to do when they do not.
pub fn check_fits(models: &[(String, Vec<u8>, Vec<u8>)]) -> Result<(), String> {
    let total: u64 = models.iter().map(|m| m.2.len() as u64).sum();
    if total > MAX_BROWSER_WEIGHT_BYTES {
        return Err(format!(
            "these {} models hold {:.2} GB of weights; the page keeps each twice in its \
             WebAssembly memory, which browsers limit to 4 GiB, so it takes at most {:.2} GB. \
             Analyse them with the desktop app (`seedscope`) or the CLI (`seedscope analyze`)",
            models.len(),
            total as f64 / 1e9,
            MAX_BROWSER_WEIGHT_BYTES as f64 / 1e9
        ));
    }
    Ok(())
}

impl crate::SeedscopeApp {
    /// The browser's form for analysing models chosen from disk.
    pub(crate) fn disk_analysis_window(&mut self, ctx: &egui::Context) {
        let Some(mut form) = self.web.disk.take() else {
            return;
        };
        if let Some(t) = &mut form.picking
            && let crate::jobs::Poll::Done(r) = t.poll()
        {
            form.picking = None;
            match r {
                Ok(Some(Picked::Model(name, config, weights, tokenizer))) => {
                    if form.tokenizer.is_none() {
                        form.tokenizer = tokenizer;
                    }
                    form.models.push((name, config, weights));
                }
                Ok(Some(Picked::Data(name, tokens))) => form.data = Some((name, tokens)),
                Ok(None) => {}
                Err(e) => self.error(e),
            }
        }
        let (mut open, mut start) = (true, false);
        egui::Window::new("Analyse models from disk")
            .open(&mut open)
            .collapsible(false)
            .show(ctx, |ui| {
                ui.label("Models that differ only in their seed; the first is the anchor.");
                for (name, _, w) in &form.models {
                    ui.label(format!("{name}: {:.1} MB of weights", w.len() as f64 / 1e6));
                }
                let busy = form.picking.is_some();
                ui.horizontal(|ui| {
                    if ui
                        .add_enabled(!busy, egui::Button::new("Add a model…"))
                        .clicked()
                    {
                        form.picking =
                            Some(spawn_pick_model(form.models.len() + 1, self.ctx_clone()));
                    }
                    if ui
                        .add_enabled(!busy, egui::Button::new("Choose the data…"))
                        .clicked()
                    {
                        form.picking = Some(spawn_pick_data(self.ctx_clone()));
                    }
                });
                ui.label(match &form.data {
                    Some((name, _)) => format!("data: {name}"),
                    None => "data: none chosen yet (.npy token ids or .txt text)".into(),
                });
                if form.tokenizer.is_none() {
                    ui.label("tokenizer: none yet (choose tokenizer.json with the first model)");
                }
                ui.horizontal(|ui| {
                    ui.label("token budget (0 = all)");
                    ui.add(egui::DragValue::new(&mut form.max_tokens).speed(1000));
                });
                if ui
                    .add_enabled(
                        form.models.len() >= 2 && form.data.is_some() && form.tokenizer.is_some(),
                        egui::Button::new("Analyse"),
                    )
                    .clicked()
                {
                    start = true;
                }
            });
        if start {
            if let Err(e) = check_fits(&form.models) {
                self.error(e);
                self.web.disk = Some(form);
                return;
            }
            if self.analysis.is_some() {
                self.error("an analysis is already running".into());
                self.web.disk = Some(form);
                return;
            }
            let (Some((source, tokens)), Some(tokenizer_json)) = (form.data, form.tokenizer) else {
                return;
            };
            let inputs = MemoryInputs {
                models: form.models,
                tokens,
                tokenizer_json,
                source,
            };
            let max_tokens = (form.max_tokens > 0).then_some(form.max_tokens);
            let device = self.web.compute_device();
            self.analysis = Some(Task::spawn_async(
                "analysing models from disk in this browser",
                self.ctx_clone(),
                move |rep| async move {
                    let device = device.map_err(needs_webgpu)?;
                    analyse_here(&device, &inputs, max_tokens, "models from disk", &rep).await
                },
            ));
        } else if open {
            self.web.disk = Some(form);
        }
    }
}

/// The browser's part of the app state.
pub struct WebState {
    /// The URL of a bundle opening without its heavy arrays, still to fetch.
    pub heavy_url: Option<String>,
    /// The form for analysing models chosen from disk, when open.
    pub disk: Option<DiskForm>,
    /// Fetching them.
    pub heavy: Option<Task<Option<Box<Explorer>>>>,
    /// The first frame's time has been written to the console.
    pub first_frame_logged: bool,
    /// The WebGPU device the page draws with, which analyses share; `Err(why)` without one.
    pub webgpu: Result<eframe::egui_wgpu::RenderState, String>,
    /// Whether the WebGPU state has been reported (console, notice).
    reported: bool,
}

impl WebState {
    /// From eframe's renderer: WebGPU, or WebGL2 (drawing only), or none.
    pub fn new(render: Option<&eframe::egui_wgpu::RenderState>) -> Self {
        let webgpu = match render {
            Some(rs) if rs.adapter.get_info().backend == wgpu::Backend::BrowserWebGpu => {
                Ok(rs.clone())
            }
            Some(_) => Err("this browser offers no WebGPU (the page draws with WebGL2)".into()),
            None => Err("this browser offers no WebGPU".into()),
        };
        Self {
            disk: None,
            heavy_url: None,
            heavy: None,
            first_frame_logged: false,
            webgpu,
            reported: false,
        }
    }

    /// The device analyses run on, or why there is none.
    pub fn compute_device(&self) -> Result<seedscope_model::ComputeDevice, String> {
        let rs = self.webgpu.as_ref().map_err(Clone::clone)?;
        seedscope_model::ComputeDevice::from_wgpu(
            rs.instance.clone(),
            rs.adapter.clone(),
            rs.device.clone(),
            rs.queue.clone(),
        )
        .map_err(|e| e.to_string())
    }
}

/// Write the time since navigation started to the console (`seedscope-first-frame MS`).
pub fn log_first_frame() {
    let ms = web_sys::window()
        .and_then(|w| w.performance())
        .map_or(f64::NAN, |p| p.now());
    console_log(&format!("seedscope-first-frame {ms:.0}"));
}

impl crate::SeedscopeApp {
    /// Say once (console, and a notice without WebGPU) whether analyses can run here.
    pub(crate) fn poll_web(&mut self) {
        // A bundle from a URL opened without its heavy arrays: fetch them, then swap them in,
        // as long as that bundle (labelled with its URL) is still the one shown. An opening
        // that failed leaves no URL behind for the next bundle.
        if self.opening_none()
            && let Some(url) = self.web.heavy_url.take()
            && let Some(ex) = self.ex.clone().filter(|ex| ex.source.display() == url)
        {
            self.web.heavy = Some(spawn_fetch_heavy(url, ex, self.ctx_clone()));
        }
        if let Some(t) = &mut self.web.heavy
            && let crate::jobs::Poll::Done(r) = t.poll()
        {
            self.web.heavy = None;
            match r {
                Ok(Some(ex))
                    if self
                        .ex
                        .as_ref()
                        .is_some_and(|shown| shown.source.display() == ex.source.display()) =>
                {
                    self.complete_explorer(*ex)
                }
                Ok(_) => {}
                Err(e) => self.error(format!("the bundle's examples and tiles: {e}")),
            }
        }
        if self.web.reported {
            return;
        }
        self.web.reported = true;
        match &self.web.webgpu {
            Ok(rs) => {
                let info = rs.adapter.get_info();
                console_log(&format!(
                    "seedscope-webgpu {} ({:?})",
                    info.name, info.device_type
                ));
            }
            Err(why) => {
                let why = why.clone();
                console_log(&format!("seedscope-no-webgpu {why}"));
                self.notice(format!(
                    "Analysis is unavailable: {why}. Bundles open and every view works here; \
                     to analyse, use the desktop app or `seedscope analyze`."
                ));
            }
        }
    }
}
