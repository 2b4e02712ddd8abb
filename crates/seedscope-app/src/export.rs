//! Writing what the window shows: a plot's region of a screenshot as PNG. (The table's CSV is
//! [`crate::views::table::export_csv`]; SVGs come from `seedscope-report`.)

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use crate::AppError;

/// Ask egui for a screenshot and write `rect` (points) of it to `path` as PNG when it arrives;
/// the receiver gets the outcome.
pub fn screenshot_region(
    ctx: &egui::Context,
    rect: egui::Rect,
    path: PathBuf,
) -> Receiver<Result<PathBuf, AppError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ppp = ctx.pixels_per_point();
    let wake = ctx.clone();
    ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(
        egui::ScreenshotCallback::new(move |image| {
            let _ = tx.send(save_region(&image, rect, ppp, &path));
            wake.request_repaint();
        }),
    ));
    rx
}

/// Crop `rect` (points) out of a screenshot and write it as PNG, atomically.
pub fn save_region(
    image: &egui::ColorImage,
    rect: egui::Rect,
    ppp: f32,
    path: &Path,
) -> Result<PathBuf, AppError> {
    let full = egui::Rect::from_min_size(
        egui::Pos2::ZERO,
        egui::vec2(image.width() as f32, image.height() as f32) / ppp,
    );
    let rect = rect.intersect(full);
    if !rect.is_positive() {
        return Err(AppError::Other(format!(
            "{}: the plot is not on screen",
            path.display()
        )));
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
        .map_err(|e| AppError::Other(format!("{}: encoding the PNG: {e}", path.display())))?;
    seedscope_model::write_file_atomic(path, &png)?;
    Ok(path.to_path_buf())
}
