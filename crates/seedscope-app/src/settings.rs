//! What the explorer remembers across restarts (eframe's storage; the browser's local storage).

use std::path::PathBuf;

/// Settings kept across restarts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The bundle open when the app last closed.
    pub last_bundle: Option<PathBuf>,
    /// Rows of the bundle's data scanned for max-activating examples.
    pub examples_rows: usize,
    /// Examples kept per neuron.
    pub examples_k: usize,
    /// Tokens shown before the max token of an example.
    pub window_before: usize,
    /// Tokens shown after it.
    pub window_after: usize,
    /// The live-text input.
    pub live_text: String,
    /// Dark theme.
    pub dark: bool,
    /// Recently opened bundles, newest first.
    pub recent: Vec<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            last_bundle: None,
            examples_rows: 256,
            examples_k: 20,
            window_before: 12,
            window_after: 4,
            live_text: "The king of France said that he would come to the castle on Monday.".into(),
            dark: true,
            recent: Vec::new(),
        }
    }
}
