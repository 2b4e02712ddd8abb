//! Exports of what the window shows: the table as CSV ([`crate::views::table::csv_bytes`]), a
//! plot as SVG (from `seedscope-report`) or as the PNG of its screen region. Each is bytes
//! handed to one [`deliver`]: a file the user named (the desktop), or a download (the page).

use std::path::PathBuf;
use std::sync::mpsc::Receiver;

use crate::AppError;
use crate::platform::Platform;
use crate::prompt::DialogFor;

/// What can be exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// The table, in its current order, as CSV.
    Csv,
    /// The plot shown (overview or correlation map) as the PNG of its screen region.
    Png,
    /// The plot shown as SVG.
    Svg,
}

impl Export {
    /// The path prompt that asks where it goes, and the file name it suggests.
    pub fn dialog(self) -> (DialogFor, &'static str) {
        match self {
            Export::Csv => (DialogFor::ExportCsv, "neurons.csv"),
            Export::Png => (DialogFor::ExportPng, "plot.png"),
            Export::Svg => (DialogFor::ExportSvg, "plot.svg"),
        }
    }
}

/// Where an export goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTo {
    /// A file (written atomically).
    File(PathBuf),
    /// The browser's download of a file of this name.
    Download(String),
}

/// Hand an export's `bytes` to `to`; what to tell the user.
pub fn deliver(platform: &dyn Platform, to: &ExportTo, bytes: &[u8]) -> Result<String, AppError> {
    match to {
        ExportTo::File(path) => {
            seedscope_model::write_file_atomic(path, bytes)?;
            Ok(format!("saved {}", path.display()))
        }
        ExportTo::Download(name) => platform.download(name, bytes),
    }
}

/// A PNG on its way: the screenshot's region, once the frame is rendered.
pub type PendingPng = Receiver<Result<Vec<u8>, AppError>>;

/// Ask egui for a screenshot; the receiver gets `rect` (points) of it as PNG when it arrives.
pub fn screenshot_region(ctx: &egui::Context, rect: egui::Rect) -> PendingPng {
    let (tx, rx) = std::sync::mpsc::channel();
    let ppp = ctx.pixels_per_point();
    let wake = ctx.clone();
    ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(
        egui::ScreenshotCallback::new(move |image| {
            let _ = tx.send(png_region(&image, rect, ppp));
            wake.request_repaint();
        }),
    ));
    rx
}

/// Crop `rect` (points) out of a screenshot and encode it as PNG.
pub fn png_region(
    image: &egui::ColorImage,
    rect: egui::Rect,
    ppp: f32,
) -> Result<Vec<u8>, AppError> {
    let full = egui::Rect::from_min_size(
        egui::Pos2::ZERO,
        egui::vec2(image.width() as f32, image.height() as f32) / ppp,
    );
    let rect = rect.intersect(full);
    if !rect.is_positive() {
        return Err("the plot is not on screen".into());
    }
    let region = image.region(&rect, Some(ppp));
    let img = image::RgbaImage::from_raw(
        region.width() as u32,
        region.height() as u32,
        region.as_raw().to_vec(),
    )
    .ok_or("the screenshot has an unexpected size")?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| AppError::Other(format!("encoding the PNG: {e}")))?;
    Ok(png)
}
