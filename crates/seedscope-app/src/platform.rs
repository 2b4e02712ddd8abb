//! What differs between the desktop window and the browser page, behind one trait: where
//! bundles come from (paths, URLs, pickers, dropped files), where the embedded family is
//! analysed, file dialogs, whether exports can write files, the bundle's models, and the
//! page's own menu items, status and windows. `Native` (crate::native) is the desktop's; the
//! page's lives in `seedscope-web`.

use std::path::PathBuf;
use std::sync::Arc;

use seedscope_analysis::bundle::{
    ANATOMY, ATTENTION, BundleFiles, BundleSource, CORRELATION, HISTOGRAMS, MANIFEST, NEURONS,
    TILES, TOKENIZER, TRAJECTORY,
};
use seedscope_analysis::stats::{universal_counts, universal_fractions};

use crate::AppError;
use crate::data::Explorer;
use crate::inspect::Models;
use crate::jobs::{AnalysisDone, Pick, Task};

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

/// A bundle being opened (`None`: the user dismissed a picker).
pub type Opening = Task<Option<Box<Explorer>>>;

/// What the platform's own polling brings each frame.
#[derive(Default)]
pub struct Polled {
    /// A more complete copy of the open bundle (the browser's heavy arrays arrived).
    pub complete: Option<Box<Explorer>>,
    /// An analysis the platform's own form started.
    pub analysis: Option<Task<AnalysisDone>>,
    /// Errors to show.
    pub errors: Vec<String>,
    /// Notices to show.
    pub notices: Vec<String>,
    /// The open bundle's models, once the platform has them (the browser fetches them after
    /// the bundle opens), or why it cannot have them.
    pub models: Option<Result<Arc<Models>, String>>,
}

/// The platform the app runs on.
pub trait Platform {
    /// Analyse the embedded family (natively into `launch.embedded_bundle`, with tiles; in the
    /// browser fetched and analysed in memory).
    fn analyse_embedded(
        &mut self,
        launch: &Launch,
        ctx: &egui::Context,
    ) -> Result<Task<AnalysisDone>, AppError>;

    /// Open the bundle whose files lie under `url`.
    fn open_url(&mut self, url: &str, ctx: &egui::Context) -> Result<Opening, AppError>;

    /// Ask for a bundle with the platform's own picker; `None`: the app asks for a path.
    fn pick_bundle(&mut self, ctx: &egui::Context) -> Option<Opening>;

    /// Open what was dropped onto the window.
    fn dropped(&mut self, files: Vec<egui::DroppedFileHandle>, ctx: &egui::Context)
    -> Vec<Opening>;

    /// The system's file dialog for a path (`None` where there is none).
    fn browse(&self, title: &str, pick: Pick, ctx: &egui::Context)
    -> Option<Task<Option<PathBuf>>>;

    /// Whether analyses of models named by paths (the new-analysis form) and file exports work
    /// here.
    fn has_files(&self) -> bool;

    /// What can be dropped onto the window, for the welcome page.
    fn drop_hint(&self) -> &'static str;

    /// The bundle's models for live text and scans, or why there are none here.
    fn models(&self, ex: &Explorer) -> Result<Arc<Models>, String>;

    /// Hand an export's `bytes` to the user as a file named `name`, where the platform has no
    /// paths to write to (the browser's download); what to tell the user.
    fn download(&self, name: &str, _bytes: &[u8]) -> Result<String, AppError> {
        Err(format!("{name}: this platform writes exports to a chosen path").into())
    }

    /// A bundle was opened and is shown.
    fn opened(&mut self, _ex: &Arc<Explorer>, _ctx: &egui::Context) {}

    /// A line of the log.
    fn log(&self, _line: &str) {}

    /// Once per frame, before the views.
    fn poll(&mut self, _shown: Option<&Arc<Explorer>>, _ctx: &egui::Context) -> Polled {
        Polled::default()
    }

    /// Whether the shown bundle's files are still arriving.
    fn fetching(&self) -> bool {
        false
    }

    /// Entries of its own in the File menu.
    fn menu_ui(&mut self, _ui: &mut egui::Ui) {}

    /// Items of its own in the status bar.
    fn status_ui(&mut self, _ui: &mut egui::Ui) {}

    /// Windows of its own; `busy`: an analysis runs.
    fn windows_ui(&mut self, _ctx: &egui::Context, _busy: bool) -> Polled {
        Polled::default()
    }
}

// What the browser's platform computes without the browser, tested natively.

/// Files every bundle has.
pub const REQUIRED: [&str; 3] = [MANIFEST, NEURONS, CORRELATION];
/// Small files a bundle may have (a missing one is a 404, not an error), fetched before it
/// opens.
pub const LIGHT: [&str; 4] = [HISTOGRAMS, ATTENTION, TOKENIZER, TRAJECTORY];
/// The heavy arrays (examples, correlation tiles): fetched after the bundle is open.
pub const HEAVY: [&str; 2] = [ANATOMY, TILES];

/// `base` joined with `name` (one `/` between them).
pub fn join_url(base: &str, name: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        name.trim_start_matches('/')
    )
}

/// Open in-memory files as a bundle, saying which required file is missing.
pub fn open_files(label: String, files: BundleFiles) -> Result<Box<Explorer>, AppError> {
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|n| !files.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(AppError::Other(format!(
            "{label}: a bundle needs {}; missing {}",
            REQUIRED.join(", "),
            missing.join(", ")
        )));
    }
    Explorer::open_source(BundleSource::Memory {
        label,
        files: Arc::new(files),
    })
    .map(Box::new)
}

/// The line the page writes to the console when a bundle opens: `seedscope-summary ` and a
/// JSON object with the anchor's fraction of universal neurons overall and per layer (at the
/// bundle's threshold), the tokens and where the bundle came from.
pub fn summary_line(ex: &Explorer) -> String {
    let m = &ex.bundle.manifest;
    let anchor = ex.names.first().cloned().unwrap_or_default();
    let (fraction, per_layer) = universal_fractions(&universal_counts(
        ex.bundle
            .neurons
            .iter()
            .filter(|r| r.model == anchor)
            .map(|r| (r.layer, r.is_universal)),
        m.n_layers,
    ));
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

/// The most bytes of one bundle's files the page fetches: each is copied into its WebAssembly
/// memory (at most 4 GiB in browsers) and parsed there, so the peak is about twice this with
/// the page's own needs beside it. The 12-layer GPT-2-small-shaped bundle of the scale
/// benchmark is 171 MB.
pub const MAX_BROWSER_BUNDLE_BYTES: u64 = 1 << 30;

/// Check that a bundle file of `size` bytes at `url` fits the `room` left of
/// [`MAX_BROWSER_BUNDLE_BYTES`], naming the file, the sizes and what to do when it does not.
pub fn check_file_fits(url: &str, size: u64, room: u64) -> Result<(), AppError> {
    if size <= room {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    Err(AppError::Other(format!(
        "{url} is {:.2} GB, more than the {:.2} GB left of the {:.2} GB the page gives a \
         bundle's files (it holds them in its WebAssembly memory, which browsers limit to 4 \
         GiB). Open the bundle in the desktop app (`seedscope app DIR`), which reads it from \
         disk by range",
        gb(size),
        gb(room),
        gb(MAX_BROWSER_BUNDLE_BYTES)
    )))
}

/// The most model weight the page takes on: every model is held twice (its bytes, and a CPU
/// copy for the weight statistics) besides its GPU upload, in a WebAssembly memory of at most
/// 4 GiB.
pub const MAX_BROWSER_WEIGHT_BYTES: u64 = 1 << 30;

/// Check that models with weight files of `sizes` bytes fit the page, naming the limit and what
/// to do when they do not.
pub fn check_fits(sizes: &[u64]) -> Result<(), AppError> {
    let total: u64 = sizes.iter().sum();
    if total > MAX_BROWSER_WEIGHT_BYTES {
        return Err(AppError::Other(format!(
            "these {} models hold {:.2} GB of weights; the page keeps each twice in its \
             WebAssembly memory, which browsers limit to 4 GiB, so it takes at most {:.2} GB. \
             Analyse them with the desktop app (`seedscope`) or the CLI (`seedscope analyze`)",
            sizes.len(),
            total as f64 / 1e9,
            MAX_BROWSER_WEIGHT_BYTES as f64 / 1e9
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(
            join_url("http://h/b", "manifest.json"),
            "http://h/b/manifest.json"
        );
        assert_eq!(
            join_url("http://h/b/", "manifest.json"),
            "http://h/b/manifest.json"
        );
        assert_eq!(join_url("family/", "/seed-a"), "family/seed-a");
    }

    #[test]
    fn bundle_files_over_the_page_budget_are_refused_with_the_numbers() {
        assert!(check_file_fits("b/neurons.csv", 500 << 20, MAX_BROWSER_BUNDLE_BYTES).is_ok());
        assert!(check_file_fits("b/x", 10, 10).is_ok());
        let e = check_file_fits("b/anatomy.safetensors", 5_000_000_000, 900_000_000)
            .expect_err("too large")
            .to_string();
        assert!(
            e.contains("b/anatomy.safetensors is 5.00 GB")
                && e.contains("0.90 GB")
                && e.contains("1.07 GB")
                && e.contains("4 GiB")
                && e.contains("desktop app"),
            "{e}"
        );
    }

    #[test]
    fn weights_over_the_page_limit_are_refused_with_the_numbers() {
        assert!(check_fits(&[400 << 20, 400 << 20]).is_ok());
        let e = check_fits(&[500 << 20, 500 << 20, 500 << 20])
            .expect_err("too much")
            .to_string();
        assert!(
            e.contains("3 models") && e.contains("1.57 GB") && e.contains("4 GiB"),
            "{e}"
        );
    }

    #[test]
    fn in_memory_files_without_the_required_ones_are_named() {
        let mut files = BundleFiles::new();
        files.insert(MANIFEST.into(), b"{}".to_vec());
        let e = open_files("dropped files".into(), files).expect_err("incomplete");
        let e = e.to_string();
        assert!(
            e.contains("dropped files") && e.contains("neurons.csv, correlation.safetensors"),
            "{e}"
        );
    }
}
