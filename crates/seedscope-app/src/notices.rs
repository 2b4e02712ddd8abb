//! Notices: short messages in the window's corner (errors and completed work) that fade after a
//! few seconds or are dismissed.

use std::time::Duration;

use egui::RichText;

/// How long a notice stays.
const SHOWN: Duration = Duration::from_secs(8);

/// One notice.
#[derive(Debug, Clone)]
pub struct Notice {
    /// An error (else news of something done).
    pub is_error: bool,
    /// What it says.
    pub text: String,
    since: web_time::Instant,
}

/// The notices on screen.
#[derive(Debug, Clone, Default)]
pub struct Notices {
    list: Vec<Notice>,
}

impl Notices {
    /// Show `text` (an error when `is_error`).
    pub fn push(&mut self, is_error: bool, text: String) {
        self.list.push(Notice {
            is_error,
            text,
            since: web_time::Instant::now(),
        });
    }

    /// Draw them in the bottom-right corner, newest last; drop those that have faded.
    pub fn ui(&mut self, ctx: &egui::Context) {
        self.list.retain(|n| n.since.elapsed() < SHOWN);
        if self.list.is_empty() {
            return;
        }
        let mut dismiss = None;
        egui::Area::new(egui::Id::unique("notices"))
            .anchor(egui::Align2::RIGHT_BOTTOM, egui::vec2(-12.0, -36.0))
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                for (i, n) in self.list.iter().enumerate() {
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        ui.set_max_width(420.0);
                        let (tag, color) = if n.is_error {
                            ("error", ui.visuals().error_fg_color)
                        } else {
                            ("done", ui.visuals().hyperlink_color)
                        };
                        // The tag and the dismiss button on top, the text wrapped under them:
                        // messages name files and what to do, often over one line.
                        ui.horizontal(|ui| {
                            ui.label(RichText::new(tag).strong().color(color));
                            ui.with_layout(
                                egui::Layout::right_to_left(egui::Align::Center),
                                |ui| {
                                    if ui.small_button("x").on_hover_text("dismiss").clicked() {
                                        dismiss = Some(i);
                                    }
                                },
                            );
                        });
                        ui.add(egui::Label::new(n.text.as_str()).wrap());
                    });
                }
            });
        if let Some(i) = dismiss {
            self.list.remove(i);
        }
        ctx.request_repaint_after(Duration::from_millis(500));
    }
}
