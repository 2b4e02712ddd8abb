//! Widgets and colours the views share: the labelled choice, the universal-neuron colour, tokens
//! drawn with their activation.

use egui::text::{LayoutJob, TextFormat};
use egui::{Color32, FontId};

/// Orange for universal neurons, everywhere in the app.
pub const UNIVERSAL: Color32 = Color32::from_rgb(230, 120, 60);

/// Blue for the other neurons in plots.
pub const OTHER: Color32 = Color32::from_rgb(90, 150, 220);

/// A label and a combo box of `options` (the label names it for screen readers); whether the
/// choice changed.
pub fn choose<T: PartialEq + Copy>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut T,
    options: &[T],
    text: impl Fn(&T) -> String,
) -> bool {
    let l = ui.label(label);
    let mut changed = false;
    let r = egui::ComboBox::from_id_salt(label)
        .selected_text(text(value))
        .width(80.0)
        .show_ui(ui, |ui| {
            for o in options {
                changed |= ui.selectable_value(value, *o, text(o)).changed();
            }
        });
    r.response.labelled_by(l.id);
    changed
}

/// Background colour for an activation `v` when the neuron's scale is `scale` (its max).
fn act_color(v: f32, scale: f32, dark: bool) -> Color32 {
    let t = if scale > 0.0 {
        (v / scale).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    if t >= 0.0 {
        let a = (t * 220.0) as u8;
        Color32::from_rgba_unmultiplied(240, 130, 40, a)
    } else {
        let a = (-t * 160.0) as u8;
        if dark {
            Color32::from_rgba_unmultiplied(80, 140, 240, a)
        } else {
            Color32::from_rgba_unmultiplied(40, 90, 220, a)
        }
    }
}

/// A token as the default fonts can draw it: newlines and tabs as escapes, characters outside
/// Latin, Greek, Cyrillic and common punctuation as `<U+XXXX>`.
pub fn display_token(t: &str) -> String {
    let mut out = String::new();
    for c in t.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (' '..='\u{04ff}').contains(&c) || ('\u{2010}'..='\u{2027}').contains(&c) => {
                out.push(c)
            }
            c => out.push_str(&format!("<U+{:04X}>", c as u32)),
        }
    }
    out
}

/// Tokens as one wrapped text with each token's background showing its activation.
pub fn token_job(
    tokens: &[String],
    acts: &[f32],
    scale: f32,
    mark: Option<usize>,
    range: std::ops::Range<usize>,
    ui: &egui::Ui,
) -> LayoutJob {
    let mut job = LayoutJob::default();
    let dark = ui.visuals().dark_mode;
    let text_color = ui.visuals().text_color();
    for i in range {
        let (Some(t), Some(&v)) = (tokens.get(i), acts.get(i)) else {
            continue;
        };
        job.append(
            &display_token(t),
            0.0,
            TextFormat {
                font_id: FontId::monospace(13.0),
                color: text_color,
                background: act_color(v, scale, dark),
                underline: if Some(i) == mark {
                    egui::Stroke::new(1.5, UNIVERSAL)
                } else {
                    egui::Stroke::NONE
                },
                ..Default::default()
            },
        );
    }
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_shown_with_the_default_fonts_glyphs() {
        assert_eq!(display_token(" the"), " the");
        assert_eq!(display_token(".\n"), ".\\n");
        assert_eq!(display_token("\u{FFFD}"), "<U+FFFD>");
        assert_eq!(display_token("caf\u{e9}\u{2019}"), "caf\u{e9}\u{2019}");
    }
}
