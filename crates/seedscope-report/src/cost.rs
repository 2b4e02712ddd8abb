//! How an analysis's cost grows: several bundles' runs side by side, from their manifests alone
//! (`seedscope cost BUNDLE...`): tokens per second, and where the time went — the models'
//! forwards with the rotation baseline's mixing, the correlation accumulators (co-moments), the
//! activation statistics (histograms, anatomy), waiting for the device, finishing each pass
//! (correlations, best matches, the one-to-one assignment), checkpoints, the weight statistics,
//! and the rest (loading models and data, planning, the bundle's rows).

use std::path::{Path, PathBuf};

use seedscope_analysis::bundle::{Manifest, read_json};

use crate::{Bars, ReportError};

/// The parts a run's time is split into, in [`CostRow::parts`]' order.
pub const PARTS: [&str; 8] = [
    "forwards",
    "co-moments",
    "statistics",
    "device wait",
    "finishing passes",
    "checkpoints",
    "weights",
    "other",
];

/// One analysis's cost, read from its bundle's manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct CostRow {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Models analysed (the anchor and the others).
    pub models: usize,
    /// The anchor's layers.
    pub n_layers: usize,
    /// The anchor's neurons per layer.
    pub d_mlp: usize,
    /// Kept tokens of a refined run's first stage; `None` for an exhaustive run.
    pub refine: Option<u64>,
    /// Kept tokens.
    pub tokens: u64,
    /// What ran it.
    pub device: String,
    /// The run's seconds: its passes (with loading and planning) and the weight statistics.
    pub seconds: f64,
    /// Seconds per part, in [`PARTS`]' order ("other" last: the rest of `seconds`).
    pub parts: [f64; 8],
}

impl CostRow {
    /// The cost of the run that wrote bundle `dir` (its `manifest.json`).
    pub fn read(dir: &Path) -> Result<Self, ReportError> {
        let path = dir.join("manifest.json");
        let m: Manifest = read_json(&path)?.ok_or_else(|| {
            ReportError::Invalid(format!(
                "{}: no manifest.json (not a bundle written by seedscope analyze)",
                dir.display()
            ))
        })?;
        let c = m.cost;
        let seconds = m.seconds + c.weights_seconds;
        let timed = [
            c.time.forward,
            c.time.accumulate,
            c.time.statistics,
            c.time.wait,
            c.finish_seconds,
            c.checkpoint_seconds,
            c.weights_seconds,
        ];
        if timed[..4].iter().all(|&t| t == 0.0) {
            return Err(ReportError::Invalid(format!(
                "{}: the manifest does not say where the run's time went (a bundle from before \
                 seedscope recorded it: analyse again)",
                path.display()
            )));
        }
        // The timed parts, then the rest of the run.
        let mut parts = [0.0; 8];
        parts[..7].copy_from_slice(&timed);
        parts[7] = (seconds - timed.iter().sum::<f64>()).max(0.0);
        Ok(Self {
            bundle: dir.to_path_buf(),
            models: m.models.len(),
            n_layers: m.n_layers,
            d_mlp: m.d_mlp,
            refine: m.options.refine.map(|r| r.prefix_tokens),
            tokens: m.n_tokens,
            device: m.device,
            seconds,
            parts,
        })
    }

    /// Kept tokens per second of the whole run.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }

    /// The run in words: `2 × 512 neurons, 5 models` (`, refined over N` when it was).
    pub fn label(&self) -> String {
        let refined = self
            .refine
            .map(|n| format!(", refined over {n}"))
            .unwrap_or_default();
        format!(
            "{} × {} neurons, {} models{refined}",
            self.n_layers, self.d_mlp, self.models
        )
    }
}

/// `rows` as a Markdown table: the run, tokens, seconds, tokens/s and the share of each part.
pub fn cost_table(rows: &[CostRow]) -> String {
    let mut out = format!(
        "| run | device | kept tokens | seconds | tokens/s | {} |\n|---|---|---|---|---|{}\n",
        PARTS.join(" | "),
        "---|".repeat(PARTS.len())
    );
    for r in rows {
        let shares: Vec<String> = r
            .parts
            .iter()
            .map(|p| format!("{:.0} %", 100.0 * p / r.seconds.max(1e-9)))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.0} | {} |\n",
            r.label(),
            r.device,
            r.tokens,
            r.seconds,
            r.tokens_per_s(),
            shares.join(" | ")
        ));
    }
    out
}

/// Draw `rows` into `out`: `cost-time`, the share of each part of every run's time, as PNG and
/// SVG (the tokens/s span orders of magnitude between sizes: the table has them). Returns the
/// files written.
pub fn write_cost_figures(rows: &[CostRow], out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    if rows.is_empty() {
        return Err(ReportError::Invalid("no runs to draw".into()));
    }
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let labels: Vec<String> = rows
        .iter()
        .map(|r| format!("{} ({:.0} tok/s)", r.label(), r.tokens_per_s()))
        .collect();
    let share: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            r.parts
                .iter()
                .map(|p| 100.0 * p / r.seconds.max(1e-9))
                .collect()
        })
        .collect();
    let width = 260 + 190 * rows.len() as u32;
    let mut written = Vec::new();
    let mut save = |name: &str, fig: &Bars<'_>| -> Result<(), ReportError> {
        for (ext, bytes) in [
            ("svg", crate::svg(fig, width, 520)?.into_bytes()),
            ("png", crate::png(fig, width, 520)?),
        ] {
            let path = out.join(format!("{name}.{ext}"));
            std::fs::write(&path, bytes).map_err(|source| ReportError::Io {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(())
    };
    save(
        "cost-time",
        &Bars {
            title: "seedscope analyze: where the time goes (% of each run)",
            y_desc: "% of the run",
            labels: &labels,
            series: &PARTS,
            values: &share,
        },
    )?;
    Ok(written)
}
