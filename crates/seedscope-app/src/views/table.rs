//! The table of every neuron: sortable, filterable, searchable by neuron id or by the token a
//! neuron fires on; a row opens the neuron page.

use std::sync::Arc;

use egui_extras::{Column, TableBuilder};
use seedscope_analysis::NeuronRow;
use seedscope_analysis::weights::vocab_role;

use super::{Action, Shared};
use crate::AppError;
use crate::data::{Explorer, NeuronId};
use crate::inspect::TokenRanking;
use crate::jobs::{Poll, Task};
use crate::widgets::{UNIVERSAL, choose};

/// Sortable columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Layer, then neuron.
    Neuron,
    /// Excess correlation.
    Excess,
    /// Mean best correlation.
    MeanCorr,
    /// Max best correlation.
    MaxCorr,
    /// Min best correlation.
    MinCorr,
    /// Mean baseline.
    Baseline,
    /// Mean activation.
    ActMean,
    /// Activation variance.
    ActVar,
    /// ‖w_in‖² + ‖w_out‖².
    L2Penalty,
    /// Kurtosis of the vocabulary projection.
    VocabKurt,
    /// Skew of the vocabulary projection.
    VocabSkew,
    /// cos(w_in, w_out).
    InOutSim,
    /// Activation frequency.
    Sparsity,
    /// Variance explained by the best token feature.
    BestVr,
}

/// Every sortable and filterable column with its header.
pub const COLUMNS: [(SortBy, &str); 14] = [
    (SortBy::Neuron, "neuron"),
    (SortBy::Excess, "excess"),
    (SortBy::MeanCorr, "mean r"),
    (SortBy::MaxCorr, "max r"),
    (SortBy::MinCorr, "min r"),
    (SortBy::Baseline, "baseline"),
    (SortBy::ActMean, "act mean"),
    (SortBy::ActVar, "act var"),
    (SortBy::L2Penalty, "l2"),
    (SortBy::VocabKurt, "vocab kurt"),
    (SortBy::VocabSkew, "vocab skew"),
    (SortBy::InOutSim, "in-out cos"),
    (SortBy::Sparsity, "act freq"),
    (SortBy::BestVr, "best VR"),
];

/// The families of [`seedscope_analysis::anatomy::family`], for the filter.
pub const FAMILIES: [&str; 7] = [
    "unigram",
    "alphabet",
    "previous-token",
    "syntax",
    "semantic",
    "position",
    "unexplained",
];

/// Filters, order and search of the table, and its token search.
pub struct TableView {
    /// Sort column.
    pub sort: SortBy,
    /// Descending order.
    pub descending: bool,
    /// Only this layer.
    pub layer: Option<usize>,
    /// Only universal neurons (at the current threshold).
    pub only_universal: bool,
    /// Excess correlation at least.
    pub min_excess: f64,
    /// A range filter on any column: `(column, min, max)`.
    pub range: Option<(SortBy, f64, f64)>,
    /// Only neurons with this role from the vocabulary projection.
    pub role: Option<&'static str>,
    /// Only neurons of this family (from the anatomy).
    pub family: Option<&'static str>,
    /// Search text: a neuron id (`L1.41`, `1.41`) or part of one.
    pub search: String,
    /// Row indices in display order (recomputed when a filter changes).
    pub order: Vec<usize>,
    /// Focus the search field on the next frame.
    pub focus_search: bool,
    /// Scroll to this display row on the next frame.
    pub scroll_to: Option<usize>,
    /// Neurons ranked by activation on a token (shown while the search text is that token).
    pub token_rank: Option<TokenRanking>,
    /// A running token search.
    pub token_task: Option<Task<TokenRanking>>,
    /// How many of the ranking to show.
    pub token_top: usize,
    key: Option<RefreshKey>,
}

/// Everything the display order depends on: the bundle, anchor and threshold, then the sort
/// and the filters.
type RefreshKey = (
    (usize, usize, u64),
    (
        SortBy,
        bool,
        Option<usize>,
        bool,
        u64,
        String,
        Option<String>,
        Option<(SortBy, u64, u64)>,
        Option<&'static str>,
        Option<&'static str>,
    ),
);

impl Default for TableView {
    fn default() -> Self {
        Self {
            sort: SortBy::Excess,
            descending: true,
            layer: None,
            only_universal: false,
            min_excess: -1.0,
            range: None,
            role: None,
            family: None,
            search: String::new(),
            order: Vec::new(),
            focus_search: false,
            scroll_to: None,
            token_rank: None,
            token_task: None,
            token_top: 50,
            key: None,
        }
    }
}

/// Parse a neuron id: `L1.41`, `1.41` or `1 41`.
pub fn parse_neuron(s: &str) -> Option<(usize, usize)> {
    let s = s.trim().trim_start_matches(['L', 'l']);
    let (a, b) = s.split_once(['.', ' ', ':'])?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// The value of column `by` for a row.
pub fn sort_key(r: &NeuronRow, by: SortBy) -> f64 {
    match by {
        SortBy::Neuron => (r.layer * 1_000_000 + r.neuron) as f64,
        SortBy::Excess => r.excess_corr,
        SortBy::MeanCorr => r.mean_corr,
        SortBy::MaxCorr => r.max_corr,
        SortBy::MinCorr => r.min_corr,
        SortBy::Baseline => r.mean_baseline,
        SortBy::ActMean => r.act_mean,
        SortBy::ActVar => r.act_var,
        SortBy::L2Penalty => r.l2_penalty,
        SortBy::VocabKurt => r.vocab_kurt,
        SortBy::VocabSkew => r.vocab_skew,
        SortBy::InOutSim => r.in_out_sim,
        SortBy::Sparsity => r.sparsity,
        SortBy::BestVr => r.best_vr,
    }
}

impl TableView {
    /// Whether a row passes the filters (layer, universal, excess, range, role).
    fn keep(&self, r: &NeuronRow, threshold: f64) -> bool {
        self.layer.is_none_or(|l| r.layer == l)
            && (!self.only_universal || r.excess_corr > threshold)
            && (r.excess_corr >= self.min_excess || r.excess_corr.is_nan())
            && self.range.is_none_or(|(c, lo, hi)| {
                let v = sort_key(r, c);
                v >= lo && v <= hi
            })
            && self.role.is_none_or(|role| {
                vocab_role(r.vocab_kurt, r.vocab_skew, r.vocab_var) == Some(role)
            })
            && self.family.is_none_or(|f| r.family == f)
    }

    /// Recompute the display order if the bundle, the anchor, a filter, the sort or the
    /// threshold changed.
    pub fn refresh(&mut self, ex: &Arc<Explorer>, anchor: usize, threshold: f64) {
        let key = (
            (Arc::as_ptr(ex) as usize, anchor, threshold.to_bits()),
            (
                self.sort,
                self.descending,
                self.layer,
                self.only_universal,
                self.min_excess.to_bits(),
                self.search.clone(),
                self.token_rank.as_ref().map(|r| r.query.clone()),
                self.range
                    .map(|(c, lo, hi)| (c, lo.to_bits(), hi.to_bits())),
                self.role,
                self.family,
            ),
        );
        if self.key.as_ref() == Some(&key) {
            return;
        }
        self.key = Some(key);
        let Some(anchor) = ex.anchor(anchor).or_else(|| ex.anchors.first()) else {
            self.order.clear();
            return;
        };
        if let Some(rank) = self.token_rank.as_ref().filter(|r| r.query == self.search) {
            let rows = ex.rows();
            self.order = rank
                .ranked
                .iter()
                .filter_map(|(id, _, _)| anchor.rows.get(ex.index(*id)).copied())
                .filter(|&i| self.keep(&rows[i], threshold))
                .take(self.token_top)
                .collect();
            return;
        }
        let wanted = parse_neuron(&self.search);
        let needle = self.search.trim().to_lowercase();
        let rows = ex.rows();
        let mut order: Vec<usize> = anchor
            .rows
            .iter()
            .copied()
            .filter(|&i| {
                let r = &rows[i];
                self.keep(r, threshold)
                    && match wanted {
                        Some((l, n)) => r.layer == l && r.neuron == n,
                        None if needle.is_empty() => true,
                        None => format!("l{}.{}", r.layer, r.neuron).contains(&needle),
                    }
            })
            .collect();
        order.sort_by(|&a, &b| {
            let (ka, kb) = (sort_key(&rows[a], self.sort), sort_key(&rows[b], self.sort));
            let o = ka.total_cmp(&kb);
            if self.descending { o.reverse() } else { o }
        });
        self.order = order;
    }
}

/// The rows in `order` as CSV (the `neurons.csv` columns plus best matches).
pub fn csv_bytes(ex: &Explorer, order: &[usize]) -> Result<Vec<u8>, AppError> {
    let csv = |e: csv::Error| AppError::Other(format!("writing the table as CSV: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = NeuronRow::columns().iter().map(|s| s.to_string()).collect();
    let n_other = ex.anchors.first().map_or(0, |a| a.others.len());
    for k in 0..n_other {
        header.push(format!("match_{k}"));
        header.push(format!("corr_{k}"));
    }
    w.write_record(&header).map_err(csv)?;
    for &i in order {
        let r = &ex.rows()[i];
        let mut rec = r.fields();
        if let Some(id) = ex.id_of_row(i) {
            for m in ex.matches(id) {
                rec.push(format!("{}:{}", ex.names[m.id.model], m.id.short()));
                rec.push(m.corr.to_string());
            }
        }
        w.write_record(&rec).map_err(csv)?;
    }
    w.into_inner().map_err(|e| csv(e.into_error().into()))
}

impl TableView {
    /// The neuron `delta` rows from `selected` in the display order (the first row when the
    /// selection is not in it); it is scrolled into view.
    pub fn step(
        &mut self,
        ex: &Explorer,
        selected: Option<NeuronId>,
        delta: isize,
    ) -> Option<NeuronId> {
        if self.order.is_empty() {
            return None;
        }
        let current =
            selected.and_then(|id| self.order.iter().position(|&i| ex.id_of_row(i) == Some(id)));
        let next = match current {
            Some(p) => (p as isize + delta).clamp(0, self.order.len() as isize - 1) as usize,
            None => 0,
        };
        self.scroll_to = Some(next);
        ex.id_of_row(self.order[next])
    }

    /// Rank the anchor's neurons by their activation on a token (a background task).
    fn search_token(
        &mut self,
        shared: &Shared<'_>,
        query: String,
        ctx: &egui::Context,
    ) -> Option<Action> {
        if self.token_task.is_some() {
            return None;
        }
        let models = match shared.models {
            Ok(m) => m.clone(),
            Err(why) => return Some(Action::Error(why.clone())),
        };
        let (model, rows) = (shared.anchor, shared.settings.examples_rows);
        self.token_task = Some(Task::spawn_async(
            "token search",
            Some(ctx.clone()),
            move |rep| async move { models.token_search(model, &query, rows, &rep).await },
        ));
        None
    }

    /// Take a finished token search.
    fn poll(&mut self) -> Option<Action> {
        let t = self.token_task.as_mut()?;
        let Poll::Done(r) = t.poll() else {
            return None;
        };
        self.token_task = None;
        match r {
            Ok(rank) => {
                self.token_rank = Some(rank);
                None
            }
            Err(e) => Some(Action::Error(format!("token search: {e}"))),
        }
    }

    /// The table view.
    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared<'_>) -> Option<Action> {
        let ex = shared.ex;
        let threshold = shared.threshold;
        let mut action = self.poll();
        ui.horizontal_wrapped(|ui| {
            if ex.anchors.len() > 1 {
                let anchors: Vec<usize> = ex.anchors.iter().map(|a| a.anchor).collect();
                let mut anchor = shared.anchor;
                if choose(ui, "anchor", &mut anchor, &anchors, |&a| {
                    ex.names[a].clone()
                }) {
                    action = Some(Action::SetAnchor(anchor));
                }
            }
            let layers: Vec<Option<usize>> = std::iter::once(None)
                .chain((0..ex.shape(shared.anchor).n_layers).map(Some))
                .collect();
            choose(ui, "layer", &mut self.layer, &layers, |l| {
                l.map_or("all".into(), |l| format!("L{l}"))
            });
            ui.checkbox(
                &mut self.only_universal,
                format!("universal only (excess > {threshold:.2})"),
            );
            let l = ui.label("excess ≥");
            ui.add(
                egui::DragValue::new(&mut self.min_excess)
                    .speed(0.01)
                    .range(-1.0..=1.0),
            )
            .labelled_by(l.id);
            let roles = [
                None,
                Some("prediction"),
                Some("suppression"),
                Some("partition"),
            ];
            choose(ui, "role", &mut self.role, &roles, |r| {
                r.unwrap_or("any").to_string()
            });
            let families: Vec<Option<&'static str>> =
                std::iter::once(None).chain(FAMILIES.map(Some)).collect();
            choose(ui, "family", &mut self.family, &families, |f| {
                f.unwrap_or("any").to_string()
            });
            let mut on = self.range.is_some();
            if ui.checkbox(&mut on, "where").changed() {
                self.range = on.then_some((SortBy::L2Penalty, f64::NEG_INFINITY, f64::INFINITY));
            }
            if let Some((col, lo, hi)) = &mut self.range {
                let cols: Vec<SortBy> = COLUMNS.iter().map(|c| c.0).collect();
                choose(ui, "column", col, &cols, |c| {
                    COLUMNS
                        .iter()
                        .find(|x| x.0 == *c)
                        .map_or("", |x| x.1)
                        .to_string()
                });
                let l = ui.label("from");
                ui.add(egui::DragValue::new(lo).speed(0.01))
                    .labelled_by(l.id);
                let l = ui.label("to");
                ui.add(egui::DragValue::new(hi).speed(0.01))
                    .labelled_by(l.id);
            }
            let label = ui.label("search:");
            let search = ui.add(
                egui::TextEdit::singleline(&mut self.search)
                    .hint_text("neuron, e.g. L1.41  (press /)")
                    .desired_width(160.0),
            );
            if std::mem::take(&mut self.focus_search) {
                search.request_focus();
            }
            search.labelled_by(label.id);
            ui.label(format!("{} neurons", self.order.len()));
        });
        let query = self.search.clone();
        let ranked = self.token_rank.as_ref().is_some_and(|r| r.query == query);
        let mut search_token = false;
        if ranked {
            if let Some(r) = &self.token_rank {
                ui.label(format!(
                    "the {} neurons that fire most on {:?} ({} occurrences): ranked by z-score of \
                     their activation there (the activation's mean over the token minus its mean \
                     everywhere, over its standard deviation)",
                    self.token_top, r.query, r.occurrences
                ));
            }
        } else if !query.trim().is_empty() && parse_neuron(&query).is_none() {
            ui.horizontal(|ui| {
                if self.token_task.is_some() {
                    ui.spinner();
                    ui.label(format!("finding the neurons that fire on {query:?}…"));
                } else {
                    search_token = ui
                        .button(format!("Which neurons fire on the token {query:?}?"))
                        .clicked();
                }
            });
        }
        if search_token && let Some(a) = self.search_token(shared, query, ui.ctx()) {
            action = Some(a);
        }
        self.refresh(ex, shared.anchor, threshold);
        if let Some(open) = self.rows_ui(ui, ex, shared.selected, threshold) {
            action = Some(Action::OpenNeuron(open));
        }
        action
    }

    /// The rows in display order; the neuron whose row was clicked.
    fn rows_ui(
        &mut self,
        ui: &mut egui::Ui,
        ex: &Explorer,
        selected: Option<NeuronId>,
        threshold: f64,
    ) -> Option<NeuronId> {
        let mut open = None;
        let mut sort_clicked = None;
        let n_other = ex.anchors.first().map_or(0, |a| a.others.len());
        // Cells are plain text: a click anywhere on a row opens its neuron.
        ui.style_mut().interaction.selectable_labels = false;
        let mut builder = TableBuilder::new(ui)
            .striped(true)
            .resizable(true)
            .sense(egui::Sense::click())
            .column(Column::auto().at_least(70.0))
            .columns(Column::auto().at_least(58.0), COLUMNS.len())
            .column(Column::remainder().at_least(120.0));
        if let Some(row) = self.scroll_to.take() {
            builder = builder.scroll_to_row(row, Some(egui::Align::Center));
        }
        let (sort, descending) = (self.sort, self.descending);
        let order = &self.order;
        builder
            .header(22.0, |mut h| {
                for (by, name) in COLUMNS {
                    h.col(|ui| {
                        let arrow = if sort == by {
                            if descending { " v" } else { " ^" }
                        } else {
                            ""
                        };
                        if ui.button(format!("{name}{arrow}")).clicked() {
                            sort_clicked = Some(by);
                        }
                    });
                }
                h.col(|ui| {
                    ui.strong("universal");
                });
                h.col(|ui| {
                    ui.strong(format!("best match in each of {n_other} other seeds"));
                });
            })
            .body(|body| {
                body.rows(20.0, order.len(), |mut row| {
                    let i = order[row.index()];
                    let r = &ex.rows()[i];
                    let id = ex.id_of_row(i);
                    row.set_selected(id.is_some() && id == selected);
                    row.col(|ui| {
                        ui.label(format!("L{}.{}", r.layer, r.neuron));
                    });
                    for (by, _) in &COLUMNS[1..] {
                        row.col(|ui| {
                            ui.label(format!("{:.3}", sort_key(r, *by)));
                        });
                    }
                    row.col(|ui| {
                        if r.excess_corr > threshold {
                            ui.label(egui::RichText::new("yes").color(UNIVERSAL));
                        }
                    });
                    row.col(|ui| {
                        if let Some(id) = id {
                            let text: Vec<String> = ex
                                .matches(id)
                                .iter()
                                .map(|m| {
                                    format!(
                                        "{} {} ({:.2})",
                                        ex.names[m.id.model],
                                        m.id.short(),
                                        m.corr
                                    )
                                })
                                .collect();
                            ui.add(egui::Label::new(text.join(", ")).truncate());
                        }
                    });
                    if row.response().clicked() {
                        open = id;
                    }
                });
            });
        if let Some(by) = sort_clicked {
            if self.sort == by {
                self.descending = !self.descending;
            } else {
                self.sort = by;
                self.descending = by != SortBy::Neuron;
            }
        }
        open
    }
}
#[cfg(test)]
mod tests {
    use super::parse_neuron;

    #[test]
    fn neuron_ids_parse_in_the_papers_notation() {
        assert_eq!(parse_neuron("L1.41"), Some((1, 41)));
        assert_eq!(parse_neuron(" 0.7 "), Some((0, 7)));
        assert_eq!(parse_neuron("l2 5"), Some((2, 5)));
        assert_eq!(parse_neuron(" the"), None);
        assert_eq!(parse_neuron("L1"), None);
    }
}
