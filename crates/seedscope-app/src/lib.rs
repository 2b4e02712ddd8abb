//! The Seedscope explorer: an egui application (native through eframe, and the same crate in
//! the browser through `seedscope-web`) that opens analysis bundles or runs analyses in the
//! background, and shows the universal-neuron picture from the whole family down to one neuron
//! and its twins in the other seeds.
//!
//! - [`app`]: [`SeedscopeApp`] owns the bundle, the tasks and the views, and routes the views'
//!   actions; menus and status bar. [`prompt`]: the path prompt; [`notices`]: the corner
//!   messages.
//! - [`views`]: the overview, correlation map, table, neuron page and welcome page, each owning
//!   its state; [`widgets`]: what they share.
//! - [`platform`]: what differs between the desktop (`native`) and the browser, and how the app
//!   was launched; [`settings`]: what it remembers across restarts.
//! - [`data`]: a bundle as the views read it; [`inspect`]: running the bundle's models for live
//!   text and max-activating examples; [`jobs`]: background work (threads natively, futures on
//!   the event loop in the browser) and its progress.
//! - [`heatmap`]: the GPU correlation heatmap (WGSL pooling and colour mapping in egui's wgpu
//!   renderer); [`export`]: plots as PNG.

pub mod app;
pub mod data;
mod error;
pub mod export;
pub mod heatmap;
pub mod inspect;
pub mod jobs;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod notices;
pub mod platform;
pub mod prompt;
pub mod settings;
pub mod views;
pub mod widgets;

pub use app::SeedscopeApp;
pub use data::{Explorer, NeuronId};
pub use error::AppError;
pub use platform::Launch;
pub use settings::Settings;
pub use views::Tab;

/// The app id (window class, settings directory).
pub const APP_ID: &str = "seedscope";

/// Why the desktop app cannot open a window here, if it cannot (no X11 or Wayland display).
pub fn no_display_reason() -> Option<String> {
    if cfg!(target_os = "linux")
        && std::env::var_os("DISPLAY").is_none()
        && std::env::var_os("WAYLAND_DISPLAY").is_none()
    {
        Some(
            "no display: neither DISPLAY nor WAYLAND_DISPLAY is set, so the Seedscope window \
             cannot open. Run the analysis without a window with `seedscope analyze` (and \
             `seedscope summary BUNDLE`), or start the app where a display is available."
                .into(),
        )
    } else {
        None
    }
}

/// Where the embedded family's bundle is cached for the app: the platform data directory
/// (`$XDG_DATA_HOME/seedscope` on Linux), else `seedscope-out/`.
#[cfg(not(target_arch = "wasm32"))]
pub fn embedded_bundle_dir() -> std::path::PathBuf {
    eframe::storage_dir(APP_ID)
        .unwrap_or_else(|| std::path::PathBuf::from("seedscope-out"))
        .join("embedded-bundle")
}

/// Open the desktop window. `bundle`: a bundle to open at once (else the last one, else the
/// cached embedded analysis, else the embedded family is analysed in the background).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_native(bundle: Option<std::path::PathBuf>) -> Result<(), AppError> {
    if let Some(why) = no_display_reason() {
        return Err(AppError::Other(why));
    }
    let launch = Launch {
        bundle,
        embedded_bundle: embedded_bundle_dir(),
        analyse_embedded: true,
        ..Launch::default()
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Seedscope — universal neurons across seeds")
            .with_app_id(APP_ID)
            .with_inner_size([1280.0, 860.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "Seedscope",
        options,
        Box::new(move |cc| Ok(Box::new(SeedscopeApp::new(cc, launch)))),
    )
    .map_err(|e| AppError::Other(format!("the window could not open: {e}")))
}
