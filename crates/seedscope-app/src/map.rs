//! The correlation map view: anchor layer × other-seed layer, from the bundle's saved tiles.

use crate::app::SeedscopeApp;
use crate::data::{Explorer, NeuronId};
use crate::heatmap;

impl SeedscopeApp {
    /// The correlation map view.
    pub(crate) fn map_view(&mut self, ui: &mut egui::Ui, ex: &Explorer) {
        let mut changed = false;
        let names = &ex.names;
        ui.horizontal_wrapped(|ui| {
            let m = &mut self.map;
            let anchors: Vec<usize> = ex.anchors.iter().map(|a| a.anchor).collect();
            changed |= choose(ui, "rows: seed", &mut m.anchor, &anchors, |&a| {
                names[a].clone()
            });
            let layers: Vec<usize> = (0..ex.n_layers()).collect();
            changed |= choose(ui, "layer", &mut m.layer_a, &layers, |l| format!("L{l}"));
            ui.separator();
            let others: Vec<usize> = (0..names.len()).filter(|&o| o != m.anchor).collect();
            changed |= choose(ui, "columns: seed", &mut m.other, &others, |&o| {
                names[o].clone()
            });
            changed |= choose(ui, "layer ", &mut m.layer_b, &layers, |l| format!("L{l}"));
            ui.separator();
            changed |= ui
                .checkbox(&mut m.by_match, "order by best match")
                .on_hover_text(
                    "rows by their best correlation, columns by the rows' best matches: matched \
                     pairs lie on the diagonal",
                )
                .changed();
        });
        ui.horizontal(|ui| {
            ui.label("scroll to zoom, drag to pan, double-click to reset; click opens the neuron (shift: the other seed's)");
        });
        if self.map.other == self.map.anchor {
            self.map.other = (0..names.len())
                .find(|&o| o != self.map.anchor)
                .unwrap_or(0);
            changed = true;
        }
        if changed || (self.map.data.is_none() && self.map.missing.is_none()) {
            self.load_map();
        }
        if let Some(why) = &self.map.missing {
            ui.label(why.clone());
            return;
        }
        let Some(data) = self.map.data.clone() else {
            return;
        };
        ui.horizontal(|ui| {
            heatmap::legend(ui, 220.0);
            ui.label(format!(
                "Pearson r, {} {} neurons (rows) × {} {} neurons (columns){}",
                names[self.map.anchor],
                format_args!("L{}", self.map.layer_a),
                names[self.map.other],
                format_args!("L{}", self.map.layer_b),
                if self.gpu {
                    "; drawn on the GPU, max-|r| pooled when zoomed out"
                } else {
                    ""
                }
            ));
        });
        let avail = ui.available_size();
        let side = avail.x.min(avail.y - 8.0).max(100.0);
        let (rect, hover) = heatmap::show(
            ui,
            &data,
            &mut self.map.view,
            egui::Vec2::splat(side),
            self.gpu,
            &mut self.map.cpu_texture,
        );
        self.plot_rect = Some(rect);
        self.map.rect = Some(rect);
        self.map.hover_text = None;
        if let Some(h) = hover {
            let a = NeuronId {
                model: self.map.anchor,
                layer: self.map.layer_a,
                neuron: self.map.row_of.get(h.row).copied().unwrap_or(h.row),
            };
            let b = NeuronId {
                model: self.map.other,
                layer: self.map.layer_b,
                neuron: self.map.col_of.get(h.col).copied().unwrap_or(h.col),
            };
            let text = format!(
                "{} {} × {} {}: r = {:.3}",
                names[a.model],
                a.short(),
                names[b.model],
                b.short(),
                h.value
            );
            egui::Tooltip::always_open(
                ui.ctx().clone(),
                ui.layer_id(),
                ui.scope_id().with("heatmap-tooltip"),
                egui::PopupAnchor::Pointer,
            )
            .show(|ui| {
                ui.label(&text);
            });
            self.map.hover_text = Some(text);
            if h.clicked {
                self.open_neuron(if h.shift { b } else { a });
            }
        }
    }
}

/// A label and a combo box of `options` (the label names it for screen readers); whether the
/// choice changed.
pub(crate) fn choose<T: PartialEq + Copy>(
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
