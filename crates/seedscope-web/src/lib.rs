//! The browser entry point of the Seedscope explorer: `web/index.html` loads the module that
//! `web/build.sh` makes from this crate and calls [`start`] with its canvas. The app itself is
//! `seedscope-app`, the same crate as the desktop window.
//!
//! Query parameters of the page: `?bundle=URL` opens the bundle whose files lie under `URL`;
//! `?autorun=1` analyses the embedded seed family (fetched from `family/` next to the page) as
//! soon as the page opens (`&max_tokens=N`: on at most N kept tokens); `?family=URL` fetches
//! the family from elsewhere.
//!
//! [`page`] is the page's `Platform` for the app (fetching, caching, file picking, the
//! console). Natively this crate is empty: what it computes without a browser lives in
//! `seedscope_app::platform` and is tested there.
#![cfg(target_arch = "wasm32")]

mod page;

use std::cell::RefCell;

use seedscope_app::{Launch, SeedscopeApp};
use wasm_bindgen::prelude::*;

thread_local! {
    /// The running app (the page keeps one).
    static RUNNER: RefCell<Option<eframe::WebRunner>> = const { RefCell::new(None) };
}

/// What the page's address asks for.
#[derive(Debug, Clone, Default)]
struct PageArgs {
    bundle: Option<String>,
    autorun: bool,
    family: Option<String>,
    max_tokens: Option<u64>,
}

fn page_args() -> PageArgs {
    let search = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .unwrap_or_default();
    let Ok(params) = web_sys::UrlSearchParams::new_with_str(&search) else {
        return PageArgs::default();
    };
    PageArgs {
        bundle: params.get("bundle").filter(|s| !s.is_empty()),
        autorun: params
            .get("autorun")
            .is_some_and(|v| v == "1" || v == "true"),
        family: params.get("family").filter(|s| !s.is_empty()),
        max_tokens: params.get("max_tokens").and_then(|s| s.parse().ok()),
    }
}

/// The page draws and analyses with one WebGPU device: asked for the adapter's full limits
/// (larger storage buffers than WebGPU's defaults, where offered) and the features the kernels
/// may use. Without WebGPU, eframe falls back to WebGL2 with its own defaults (drawing only).
fn web_options() -> eframe::WebOptions {
    let mut options = eframe::WebOptions::default();
    if let eframe::egui_wgpu::WgpuSetup::CreateNew(setup) = &mut options.wgpu_options.wgpu_setup {
        let default_descriptor = setup.device_descriptor.clone();
        setup.device_descriptor = std::sync::Arc::new(move |adapter| {
            let base = default_descriptor(adapter);
            if adapter.get_info().backend == eframe::wgpu::Backend::Gl {
                return base;
            }
            let offered = adapter.limits();
            eframe::wgpu::DeviceDescriptor {
                label: Some("seedscope"),
                required_features: seedscope_model::device_features(adapter.features()),
                required_limits: eframe::wgpu::Limits {
                    max_texture_dimension_2d: base
                        .required_limits
                        .max_texture_dimension_2d
                        .min(offered.max_texture_dimension_2d),
                    ..offered
                },
                ..base
            }
        });
    }
    options
}

/// Run the module's static constructors (the `inventory` registrations of Burn's kernel
/// compiler) once. Without an explicit call wasm-ld wraps *every* export in a call to all of
/// them, the glue's `__externref_table_alloc` (called for each JS value that crosses) included:
/// profiled in Chromium during an analysis, that was 49 s of 79 s of the page's main-thread work.
/// Calling the function here tells wasm-ld not to add the wrappers.
#[allow(unsafe_code)]
fn run_static_constructors_once() {
    unsafe extern "C" {
        fn __wasm_call_ctors();
    }
    static DONE: std::sync::Once = std::sync::Once::new();
    // SAFETY: `__wasm_call_ctors` is the linker's function that runs every static constructor
    // of the module; it takes nothing and returns nothing. `DONE` runs it once, before the app
    // (the only user of what they register) starts.
    DONE.call_once(|| unsafe { __wasm_call_ctors() });
}

/// Start the explorer on the canvas with id `canvas_id`. Resolves once the first frame is
/// set up; errors (no canvas, no graphics) reject with a message for the page to show.
#[wasm_bindgen]
pub async fn start(canvas_id: String) -> Result<(), JsValue> {
    run_static_constructors_once();
    let _ = eframe::WebLogger::init(log::LevelFilter::Info);
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or_else(|| JsValue::from_str("no document"))?;
    let canvas = document
        .get_element_by_id(&canvas_id)
        .ok_or_else(|| JsValue::from_str(&format!("no element #{canvas_id} on the page")))?
        .dyn_into::<web_sys::HtmlCanvasElement>()
        .map_err(|_| JsValue::from_str(&format!("#{canvas_id} is not a canvas")))?;
    let args = page_args();
    let family_url = args.family.unwrap_or_else(|| "family".into());
    let launch = Launch {
        bundle: None,
        embedded_bundle: std::path::PathBuf::new(),
        analyse_embedded: args.autorun,
        bundle_url: args.bundle,
        family_url: family_url.clone(),
        max_tokens: args.max_tokens,
    };
    let runner = eframe::WebRunner::new();
    runner
        .start(
            canvas,
            web_options(),
            Box::new(move |cc| {
                let page = Box::new(page::Page::new(cc, family_url));
                Ok(Box::new(SeedscopeApp::with_platform(cc, launch, page)))
            }),
        )
        .await?;
    RUNNER.with(|r| *r.borrow_mut() = Some(runner));
    Ok(())
}
