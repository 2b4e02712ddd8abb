//! The desktop's [`Platform`]: bundles are directories, analyses write them, dialogs are the
//! system's (rfd).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use seedscope_analysis::job::AnalysisRequest;

use crate::AppError;
use crate::data::Explorer;
use crate::inspect::Models;
use crate::jobs::{AnalysisDone, Pick, Task, spawn_analysis, spawn_open};
use crate::platform::Launch;
use crate::platform::{Opening, Platform};

/// The desktop: bundles are directories, analyses write them, dialogs are the system's.
#[derive(Debug, Default)]
pub struct Native;

impl Platform for Native {
    fn analyse_embedded(
        &mut self,
        launch: &Launch,
        ctx: &egui::Context,
    ) -> Result<Task<AnalysisDone>, AppError> {
        let request = AnalysisRequest {
            out: launch.embedded_bundle.clone(),
            save_tiles: Some("all".into()),
            command: vec!["seedscope (app): embedded family".into()],
            ..AnalysisRequest::default()
        };
        Ok(spawn_analysis(request, Some(ctx.clone())))
    }

    fn open_url(&mut self, url: &str, _ctx: &egui::Context) -> Result<Opening, AppError> {
        Err(AppError::Other(format!(
            "{url}: bundles open from URLs in the browser build; download the bundle's files \
             into a directory and open that"
        )))
    }

    fn pick_bundle(&mut self, _ctx: &egui::Context) -> Option<Opening> {
        None
    }

    fn dropped(
        &mut self,
        files: Vec<egui::DroppedFileHandle>,
        ctx: &egui::Context,
    ) -> Vec<Opening> {
        files
            .iter()
            .map(|f| f.path().to_path_buf())
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| {
                // A dropped manifest or any file inside a bundle opens its directory.
                let dir = if p.is_dir() {
                    p
                } else {
                    p.parent().map(Path::to_path_buf).unwrap_or(p)
                };
                spawn_open(dir, Some(ctx.clone()))
            })
            .collect()
    }

    fn browse(
        &self,
        title: &str,
        pick: Pick,
        ctx: &egui::Context,
    ) -> Option<Task<Option<PathBuf>>> {
        let title = title.to_owned();
        Some(Task::spawn("file dialog", Some(ctx.clone()), move |_| {
            let dialog = rfd::FileDialog::new().set_title(&title);
            Ok(match pick {
                Pick::Folder => dialog.pick_folder(),
                Pick::File => dialog.pick_file(),
                Pick::Save(name) => dialog.set_file_name(name).save_file(),
            })
        }))
    }

    fn has_files(&self) -> bool {
        true
    }

    fn drop_hint(&self) -> &'static str {
        "or drop a bundle directory onto this window"
    }

    fn models(&self, ex: &Explorer) -> Result<Arc<Models>, String> {
        Models::new(ex).map(Arc::new).map_err(|e| e.to_string())
    }
}
