//! The correlation map: anchor layer × other-seed layer, from the bundle's saved tiles. A tile is
//! read (and, to order it by best match, reordered) by a background task; the heatmap draws on
//! the GPU.

use std::sync::Arc;

use super::{Action, Shared};
use crate::AppError;
use crate::data::{Explorer, NeuronId};
use crate::heatmap::{self, CpuTexture, HeatmapView, MapData};
use crate::jobs::{Poll, Task};
use crate::widgets::choose;

/// Which tile, and in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileChoice {
    /// Anchor model (rows).
    pub anchor: usize,
    /// Anchor layer.
    pub layer_a: usize,
    /// The other model (columns).
    pub other: usize,
    /// Its layer.
    pub layer_b: usize,
    /// The order of rows and columns.
    pub order: MapOrder,
}

/// How the map orders its rows and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MapOrder {
    /// By neuron index.
    #[default]
    Neuron,
    /// Rows by their best correlation and columns by the rows' matches, so matched pairs lie
    /// on the diagonal (a column shared by several rows appears once).
    BestMatch,
    /// The maximum-weight one-to-one assignment of rows to columns on the diagonal, rows by
    /// their partner's correlation.
    Assignment,
}

impl MapOrder {
    fn label(self) -> &'static str {
        match self {
            MapOrder::Neuron => "neuron index",
            MapOrder::BestMatch => "best match",
            MapOrder::Assignment => "one-to-one assignment",
        }
    }
}

/// A tile read and ordered for display.
pub struct LoadedTile {
    /// What it shows.
    pub choice: TileChoice,
    /// The values as drawn.
    pub data: MapData,
    /// The neuron shown in each displayed row.
    pub row_of: Vec<usize>,
    /// The neuron shown in each displayed column.
    pub col_of: Vec<usize>,
}

/// The map's choices and state.
pub struct MapView {
    /// The tile shown (or being loaded).
    pub choice: TileChoice,
    /// Zoom and pan.
    pub view: HeatmapView,
    /// The tile, once loaded.
    pub tile: Option<LoadedTile>,
    /// Why there is none.
    pub missing: Option<String>,
    /// The tile being read, and for which choice.
    loading: Option<(Task<LoadedTile>, TileChoice)>,
    /// A neuron pair to zoom on once its tile is loaded.
    focus: Option<(usize, usize)>,
    /// CPU fallback texture.
    cpu_texture: Option<CpuTexture>,
    /// Last hovered cell's text, for tests and the status line.
    pub hover_text: Option<String>,
    /// Where the heatmap was last drawn.
    pub rect: Option<egui::Rect>,
}

impl Default for MapView {
    fn default() -> Self {
        Self {
            choice: TileChoice {
                anchor: 0,
                layer_a: 0,
                other: 1,
                layer_b: 0,
                order: MapOrder::Neuron,
            },
            view: HeatmapView::whole(1, 1),
            tile: None,
            missing: None,
            loading: None,
            focus: None,
            cpu_texture: None,
            hover_text: None,
            rect: None,
        }
    }
}

impl MapView {
    /// The map of `ex`'s first tile: the first anchor against its first other seed, layer 0.
    pub fn new(ex: &Explorer) -> Self {
        let other = ex
            .anchors
            .first()
            .and_then(|a| a.others.first().copied())
            .unwrap_or(0);
        let mut map = Self::default();
        map.choice.other = other;
        map
    }

    /// Show the tile of `anchor`'s layer against `other`'s, zoomed on the pair once loaded.
    pub fn show_pair(&mut self, anchor: NeuronId, other: NeuronId) {
        self.choice.anchor = anchor.model;
        self.choice.layer_a = anchor.layer;
        self.choice.other = other.model;
        self.choice.layer_b = other.layer;
        self.focus = Some((anchor.neuron, other.neuron));
        self.tile = None;
    }

    /// Read the chosen tile again (the bundle has more of its files now).
    pub fn reload(&mut self) {
        self.tile = None;
        self.missing = None;
        self.loading = None;
    }

    /// Whether a tile is being read.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// Start reading the chosen tile (a task), unless it is already shown or being read.
    fn load(&mut self, ex: &Arc<Explorer>, ctx: &egui::Context, fetching: bool) {
        let c = self.choice;
        if self.loading.as_ref().is_some_and(|(_, l)| *l == c) {
            return;
        }
        let name = ex.tile_name(c.anchor, c.layer_a, c.other, c.layer_b);
        if !ex.tile_names().any(|n| n == name) {
            self.loading = None;
            self.tile = None;
            self.missing = Some(if fetching {
                "the correlation tiles are still being fetched…".into()
            } else if ex.tile_names().next().is_none() {
                "this bundle has no saved correlation tiles: rerun the analysis with \
                 `--save-tiles all` (the app's own analyses save them)"
                    .into()
            } else {
                format!(
                    "no saved tile {name} in this bundle (analysed with --save-tiles for other \
                     layer pairs)"
                )
            });
            return;
        }
        self.missing = None;
        let ex = ex.clone();
        let task = Task::spawn(format!("reading {name}"), Some(ctx.clone()), move |_| {
            read_tile(&ex, &name, c)
        });
        self.loading = Some((task, c));
    }

    /// Take a finished tile load.
    fn poll(&mut self) -> Option<Action> {
        let (task, choice) = self.loading.as_mut()?;
        let Poll::Done(r) = task.poll() else {
            return None;
        };
        let choice = *choice;
        self.loading = None;
        if choice != self.choice {
            return None;
        }
        match r {
            Ok(tile) => {
                let (rows, cols) = (tile.data.rows, tile.data.cols);
                self.view = HeatmapView::whole(rows, cols);
                if let Some((r, c)) = self.focus.take() {
                    // Zoom on the pair where it is displayed.
                    let r = tile.row_of.iter().position(|&x| x == r).unwrap_or(r) as f32;
                    let c = tile.col_of.iter().position(|&x| x == c).unwrap_or(c) as f32;
                    let half = (rows as f32 / 16.0).max(8.0);
                    self.view.min = [c - half, r - half];
                    self.view.max = [c + half, r + half];
                }
                self.tile = Some(tile);
                self.cpu_texture = None;
                None
            }
            Err(e) => {
                self.missing = Some(e.to_string());
                Some(Action::Error(e.to_string()))
            }
        }
    }

    /// The map view; `fetching`: the bundle's tiles are still on their way (the browser).
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        shared: &mut Shared<'_>,
        fetching: bool,
    ) -> Option<Action> {
        let ex = shared.ex;
        let names = &ex.names;
        ui.horizontal_wrapped(|ui| {
            let c = &mut self.choice;
            let anchors: Vec<usize> = ex.anchors.iter().map(|a| a.anchor).collect();
            choose(ui, "rows: seed", &mut c.anchor, &anchors, |&a| {
                names[a].clone()
            });
            let layers = |m: usize| (0..ex.shape(m).n_layers).collect::<Vec<usize>>();
            choose(ui, "layer", &mut c.layer_a, &layers(c.anchor), |l| {
                format!("L{l}")
            });
            ui.separator();
            let others: Vec<usize> = (0..names.len()).filter(|&o| o != c.anchor).collect();
            choose(ui, "columns: seed", &mut c.other, &others, |&o| {
                names[o].clone()
            });
            choose(ui, "layer ", &mut c.layer_b, &layers(c.other), |l| {
                format!("L{l}")
            });
            ui.separator();
            choose(
                ui,
                "order",
                &mut c.order,
                &[MapOrder::Neuron, MapOrder::BestMatch, MapOrder::Assignment],
                |o| o.label().to_string(),
            );
            ui.label("(?)").on_hover_text(
                "best match: rows by their best correlation, columns by the rows' best matches; \
                 one-to-one assignment: each row's partner in the maximum-weight matching of \
                 rows to columns (Jonker-Volgenant), rows by their partner's correlation. \
                 Either way the pairs lie on the diagonal.",
            );
        });
        ui.horizontal(|ui| {
            ui.label(
                "scroll to zoom, drag to pan, double-click to reset; click opens the neuron \
                 (shift: the other seed's)",
            );
        });
        if self.choice.other == self.choice.anchor {
            self.choice.other = (0..names.len())
                .find(|&o| o != self.choice.anchor)
                .unwrap_or(0);
        }
        // Models of different depths: a layer the chosen model lacks becomes its last.
        let c = &mut self.choice;
        c.layer_a = c.layer_a.min(ex.shape(c.anchor).n_layers.saturating_sub(1));
        c.layer_b = c.layer_b.min(ex.shape(c.other).n_layers.saturating_sub(1));
        // A tile of another choice (changed here, or by another view) is read again.
        if self.tile.as_ref().is_some_and(|t| t.choice != self.choice) {
            self.tile = None;
        }
        let mut action = self.poll();
        if self.tile.is_none() {
            self.load(ex, ui.ctx(), fetching);
        }
        if let Some(why) = &self.missing {
            ui.label(why.clone());
            return action;
        }
        let Some(tile) = &self.tile else {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("reading the tile…");
            });
            return action;
        };
        let c = self.choice;
        ui.horizontal(|ui| {
            heatmap::legend(ui, 220.0);
            ui.label(format!(
                "Pearson r, {} L{} neurons (rows, {}) × {} L{} neurons (columns, {}){}",
                names[c.anchor],
                c.layer_a,
                tile.data.rows,
                names[c.other],
                c.layer_b,
                tile.data.cols,
                if shared.gpu {
                    "; drawn on the GPU, max-|r| pooled when zoomed out"
                } else {
                    ""
                }
            ));
        });
        let avail = ui.available_size();
        let side = avail.x.min(avail.y - 8.0).max(100.0);
        // One square per pair: a tile of models of different widths keeps its aspect.
        let long = tile.data.rows.max(tile.data.cols).max(1) as f32;
        let size = egui::vec2(
            side * tile.data.cols as f32 / long,
            side * tile.data.rows as f32 / long,
        );
        let (rect, hover) = heatmap::show(
            ui,
            &tile.data,
            &mut self.view,
            size,
            shared.gpu,
            &mut self.cpu_texture,
        );
        self.rect = Some(rect);
        self.hover_text = None;
        if let Some(h) = hover {
            let a = NeuronId {
                model: c.anchor,
                layer: c.layer_a,
                neuron: tile.row_of.get(h.row).copied().unwrap_or(h.row),
            };
            let b = NeuronId {
                model: c.other,
                layer: c.layer_b,
                neuron: tile.col_of.get(h.col).copied().unwrap_or(h.col),
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
            self.hover_text = Some(text);
            if h.clicked {
                action = Some(Action::OpenNeuron(if h.shift { b } else { a }));
            }
        }
        action
    }

    /// The map as shown, as SVG with a colour bar.
    pub fn svg(&self, ex: &Explorer) -> Result<String, AppError> {
        let tile = self.tile.as_ref().ok_or("no correlation map is shown")?;
        let c = self.choice;
        Ok(seedscope_report::heatmap_svg(
            &tile.data.values,
            tile.data.rows,
            tile.data.cols,
            &format!(
                "Pearson r{}",
                match c.order {
                    MapOrder::Neuron => "",
                    MapOrder::BestMatch => ", ordered by best match",
                    MapOrder::Assignment => ", ordered by the one-to-one assignment",
                }
            ),
            &format!("{} L{}", ex.names[c.anchor], c.layer_a),
            &format!("{} L{}", ex.names[c.other], c.layer_b),
        )?)
    }
}

/// Read tile `name` and order it as `choice` asks (off the UI thread).
fn read_tile(ex: &Explorer, name: &str, choice: TileChoice) -> Result<LoadedTile, AppError> {
    let values = ex.read_tile(name)?;
    let (rows, cols) = (ex.shape(choice.anchor).d_mlp, ex.shape(choice.other).d_mlp);
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (ex.source.display(), name, choice.order).hash(&mut h);
    let (values, row_of, col_of) = match choice.order {
        MapOrder::Neuron => (values, (0..rows).collect(), (0..cols).collect()),
        MapOrder::BestMatch => heatmap::order_by_match(&values, rows, cols),
        MapOrder::Assignment => heatmap::order_by_assignment(&values, rows, cols),
    };
    Ok(LoadedTile {
        choice,
        data: MapData {
            key: h.finish(),
            rows,
            cols,
            values: Arc::new(values),
        },
        row_of,
        col_of,
    })
}
