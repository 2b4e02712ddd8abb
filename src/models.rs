//! How commands name models, resolved the same way by every command (`analyze --models`,
//! `eval-loss --models`, `activations --model`, `bench-forward --model`, `bench-refine`): a
//! model directory, a Hugging Face cache entry (`models--org--name`), a preset of the paper's
//! seed families, or an `org/name` repository id, at a revision or training step. Presets and
//! repository ids are looked up in the Hugging Face cache, never downloaded (`seedscope
//! download` fetches them).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use seedscope_hub::{Hub, PRESETS, Revision, repos_of, resolve_cached};

/// The revision flags of a command that names models.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RevisionArgs {
    /// Branch, tag or commit of the models named by preset or repository id (default: main).
    #[arg(long, conflicts_with = "step")]
    pub revision: Option<String>,
    /// The training checkpoint at this step of the models named by preset or repository id
    /// (Stanford CRFM: checkpoint-STEP; Pythia: stepSTEP).
    #[arg(long)]
    pub step: Option<u64>,
}

impl RevisionArgs {
    /// The revision the flags name.
    pub fn revision(&self) -> Revision {
        revision(self.revision.as_deref(), self.step)
    }
}

/// The revision a `--revision` / `--step` pair names.
pub fn revision(revision: Option<&str>, step: Option<u64>) -> Revision {
    match (revision, step) {
        (_, Some(s)) => Revision::Step(s),
        (Some(r), None) => Revision::Named(r.to_string()),
        (None, None) => Revision::default(),
    }
}

/// The model directories `specs` name: an existing directory (or cache entry) as given,
/// otherwise a preset or repository id resolved from the Hugging Face cache at `rev`.
pub fn resolve_models(specs: &[PathBuf], rev: &Revision) -> Result<Vec<PathBuf>> {
    let mut hub = None;
    let mut out = Vec::new();
    for m in specs {
        if m.exists() {
            out.push(m.clone());
            continue;
        }
        let spec = m.to_string_lossy();
        if repos_of(&spec).is_err() {
            bail!(
                "{}: no such model directory, and not a preset ({}) or an org/name repository id",
                m.display(),
                PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let hub = hub.get_or_insert_with(Hub::from_env);
        out.extend(resolve_cached(hub, &spec, rev.clone())?);
    }
    Ok(out)
}

/// The one model `spec` names (default: seed-a of the embedded family); a preset of several
/// seeds is refused with their names.
pub fn resolve_model(spec: Option<&Path>, rev: &Revision) -> Result<PathBuf> {
    let Some(spec) = spec else {
        return Ok(seedscope_analysis::job::family_models().swap_remove(0));
    };
    let mut dirs = resolve_models(&[spec.to_path_buf()], rev)?;
    if dirs.len() != 1 {
        bail!(
            "{} names {} models ({}): give one of them (a directory or org/name)",
            spec.display(),
            dirs.len(),
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(dirs.remove(0))
}
