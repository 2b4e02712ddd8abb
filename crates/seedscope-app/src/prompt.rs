//! The path prompt: a small window that asks for a path (to open a bundle, add a model, choose
//! data, or save an export), typed, picked from the recent bundles, or browsed with the
//! platform's file dialog. It owns what was typed and the dialog's task; the app decides what
//! the chosen path is used for.

use std::path::PathBuf;
use std::time::Duration;

use egui::Key;

use crate::jobs::{Pick, Poll, Task};
use crate::platform::Platform;

/// What a path prompt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogFor {
    /// A bundle to open.
    OpenBundle,
    /// A model directory for the new-analysis form.
    AddModel,
    /// Data for the new-analysis form.
    Data,
    /// Where to write the table.
    ExportCsv,
    /// Where to write the plot as PNG.
    ExportPng,
    /// Where to write the plot as SVG.
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

/// What became of the prompt this frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompted {
    /// Still asking.
    Open,
    /// Closed without a path.
    Closed,
    /// This path was chosen.
    Chosen(PathBuf),
}

impl PathPrompt {
    /// Ask for a path for `purpose`; a save starts from `name` in the working directory.
    pub fn new(purpose: DialogFor, title: &str, pick: Pick) -> Self {
        let text = match pick {
            Pick::Save(name) => std::env::current_dir()
                .map(|d| d.join(name).display().to_string())
                .unwrap_or_else(|_| name.to_string()),
            Pick::Folder | Pick::File => String::new(),
        };
        Self {
            purpose,
            title: title.to_owned(),
            pick,
            text,
            browsing: None,
        }
    }

    /// Draw the window (`recent`: bundles offered when opening one). Returns what became of it
    /// and, when the file dialog failed or is unavailable, why (the prompt stays open).
    pub fn ui(
        &mut self,
        ctx: &egui::Context,
        recent: &[PathBuf],
        platform: &dyn Platform,
    ) -> (Prompted, Option<String>) {
        let mut problem = None;
        if let Some(t) = &mut self.browsing
            && let Poll::Done(r) = t.poll()
        {
            let quick = t.started.elapsed() < Duration::from_millis(400);
            self.browsing = None;
            match r {
                Ok(Some(path)) => self.text = path.display().to_string(),
                // rfd answers None at once when no dialog could be shown.
                Ok(None) if quick => {
                    problem = Some(
                        "the system file dialog is not available here (on Linux it needs an XDG \
                         desktop portal); type the path instead"
                            .to_owned(),
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    problem = Some(format!(
                        "the file dialog failed ({e}); type the path instead"
                    ))
                }
            }
        }
        let (mut open, mut ok, mut browse) = (true, false, false);
        egui::Window::new(self.title.clone())
            .open(&mut open)
            .collapsible(false)
            .default_width(560.0)
            .show(ctx, |ui| {
                ui.horizontal(|ui| {
                    let l = ui.label("path");
                    let e = ui
                        .add(egui::TextEdit::singleline(&mut self.text).desired_width(460.0))
                        .labelled_by(l.id);
                    if e.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
                        ok = true;
                    }
                });
                if self.purpose == DialogFor::OpenBundle && !recent.is_empty() {
                    ui.label("recent bundles:");
                    for r in recent {
                        if ui.link(r.display().to_string()).clicked() {
                            self.text = r.display().to_string();
                            ok = true;
                        }
                    }
                }
                ui.horizontal(|ui| {
                    if self.browsing.is_some() {
                        ui.spinner();
                        ui.label("waiting for the file dialog…");
                    } else if ui.button("Browse…").clicked() {
                        browse = true;
                    }
                    let verb = if matches!(self.pick, Pick::Save(_)) {
                        "Save"
                    } else {
                        "OK"
                    };
                    if ui.button(verb).clicked() {
                        ok = true;
                    }
                });
            });
        if browse {
            self.browsing = platform.browse(&self.title, self.pick, ctx);
        }
        let outcome = if ok && !self.text.trim().is_empty() {
            Prompted::Chosen(PathBuf::from(self.text.trim()))
        } else if open {
            Prompted::Open
        } else {
            Prompted::Closed
        };
        (outcome, problem)
    }
}
