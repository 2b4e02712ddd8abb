//! The views. Each owns its state (and the background tasks that fill it) and draws itself with
//! `ui(&mut self, ui, &mut Shared) -> Option<Action>`: it reads the open bundle and the state
//! views share, and asks the app for anything beyond itself with an [`Action`].

pub mod map;
pub mod neuron;
pub mod overview;
pub mod table;
pub mod training;
pub mod welcome;

use std::sync::Arc;

use seedscope_analysis::job::AnalysisRequest;

use crate::data::{Explorer, NeuronId};
use crate::inspect::Models;
use crate::settings::Settings;

/// The views of an open bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Fractions, distributions, Fig. 2.
    Overview,
    /// Neuron × neuron correlation heatmap.
    Map,
    /// Every neuron.
    Table,
    /// One neuron and its matches.
    Neuron,
    /// Universality over training (a series' last bundle).
    Training,
}

/// The views with their names, in menu order.
pub const TABS: [(Tab, &str); 5] = [
    (Tab::Overview, "Overview"),
    (Tab::Map, "Correlation map"),
    (Tab::Table, "Table"),
    (Tab::Neuron, "Neuron"),
    (Tab::Training, "Training"),
];

/// What a view asks of the app.
#[derive(Debug, Clone)]
pub enum Action {
    /// Show this neuron on the neuron page.
    OpenNeuron(NeuronId),
    /// Step the selection through the table's order.
    Step(isize),
    /// The universality threshold.
    SetThreshold(f64),
    /// The anchor every view shows.
    SetAnchor(usize),
    /// The correlation map of this anchor neuron's layer against its match's, zoomed on the
    /// pair.
    ShowInMap {
        /// The anchor neuron.
        anchor: NeuronId,
        /// Its match in another seed.
        other: NeuronId,
    },
    /// Analyse the embedded family.
    AnalyseEmbedded,
    /// Ask for a bundle to open.
    AskBundle,
    /// Ask for a model directory for the new-analysis form.
    AskModel,
    /// Ask for the data of the new-analysis form.
    AskData,
    /// Run an analysis.
    Analyse(Box<AnalysisRequest>),
    /// Tell the user something went wrong.
    Error(String),
    /// A line for the platform's log (the page's console, which the end-to-end test reads).
    Log(String),
}

/// What the views of an open bundle share: the bundle, the app's selection and settings, and
/// the bundle's models (for live text and scans; none in the browser).
pub struct Shared<'a> {
    /// The open bundle.
    pub ex: &'a Arc<Explorer>,
    /// The universality threshold (starts at the bundle's).
    pub threshold: f64,
    /// The anchor the views show.
    pub anchor: usize,
    /// The neuron shown on the neuron page.
    pub selected: Option<NeuronId>,
    /// Persisted settings (live text, example budget).
    pub settings: &'a mut Settings,
    /// The bundle's models, or why there are none.
    pub models: &'a Result<Arc<Models>, String>,
    /// Heatmaps draw on the GPU (a wgpu renderer is present).
    pub gpu: bool,
}
