//! Reading one anchor's part of `anatomy.safetensors`.

use std::path::Path;

use super::{ANATOMY, BundleSource, read_tensor};
use crate::AnalysisError;
use safetensors::tensor::Dtype;

/// One anchor's part of `anatomy.safetensors`, read whole.
#[derive(Debug, Clone, PartialEq)]
pub struct AnatomyFile {
    /// The run's features (ids index this).
    pub features: Vec<crate::features::Feature>,
    /// Tokens before and after each example in `windows`.
    pub context: (usize, usize),
    /// Examples per neuron.
    pub k: usize,
    /// `[width, k]` example activations, descending.
    pub top_val: Vec<f32>,
    /// `[width, k, before + 1 + after]` token ids around each example (−1 outside its row).
    pub windows: Vec<i32>,
    /// `[width, BEST_FEATURES]` best feature ids (−1: none).
    pub best_feature: Vec<i32>,
    /// Their variance explained.
    pub best_vr: Vec<f32>,
    /// `[width, TOP_TOKENS]` tokens with the highest mean activation (−1: none).
    pub top_token: Vec<i32>,
    /// Their means.
    pub top_token_mean: Vec<f32>,
    /// `[width]` mutual information with position.
    pub pos_mi: Vec<f32>,
}

impl AnatomyFile {
    /// Tokens per example window.
    pub fn window(&self) -> usize {
        self.context.0 + 1 + self.context.1
    }

    /// Read anchor `anchor`'s anatomy (`width` neurons) from bundle `dir`; `None` when the
    /// bundle has none (made before it existed, or without it). Without `examples` the example
    /// values and windows (most of the file) are left empty.
    pub fn read(
        dir: &Path,
        anchor: usize,
        width: usize,
        examples: bool,
    ) -> Result<Option<Self>, AnalysisError> {
        Self::read_from(
            &BundleSource::Dir(dir.to_path_buf()),
            anchor,
            width,
            examples,
        )
    }

    /// [`AnatomyFile::read`] from any [`BundleSource`].
    pub fn read_from(
        source: &BundleSource,
        anchor: usize,
        width: usize,
        examples: bool,
    ) -> Result<Option<Self>, AnalysisError> {
        let path = source.path(ANATOMY);
        let Some(bytes) = source.read(ANATOMY)? else {
            return Ok(None);
        };
        let corrupt = |message: String| AnalysisError::Corrupt {
            path: path.clone(),
            message,
        };
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let features: Vec<crate::features::Feature> = meta
            .get("features")
            .ok_or_else(|| corrupt("no features metadata".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| corrupt(format!("features: {e}"))))?;
        let context: (usize, usize) = meta
            .get("context")
            .ok_or_else(|| corrupt("no context metadata".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| corrupt(format!("context: {e}"))))?;
        let prefix = if anchor == 0 {
            String::new()
        } else {
            format!("anchor{anchor}/")
        };
        let name = |n: &str| format!("{prefix}{n}");
        let k = st
            .tensor(&name("top_val"))
            .map_err(|e| corrupt(format!("tensor {}: {e}", name("top_val"))))?
            .shape()
            .last()
            .copied()
            .unwrap_or(0);
        let win = context.0 + 1 + context.1;
        let (nb, nt) = (crate::anatomy::BEST_FEATURES, crate::anatomy::TOP_TOKENS);
        let out = Self {
            top_val: if examples {
                read_tensor(&st, &name("top_val"), &path, width * k, Dtype::F32)?
            } else {
                Vec::new()
            },
            windows: if examples {
                read_tensor(&st, &name("windows"), &path, width * k * win, Dtype::I32)?
            } else {
                Vec::new()
            },
            best_feature: read_tensor(&st, &name("best_feature"), &path, width * nb, Dtype::I32)?,
            best_vr: read_tensor(&st, &name("best_vr"), &path, width * nb, Dtype::F32)?,
            top_token: read_tensor(&st, &name("top_token"), &path, width * nt, Dtype::I32)?,
            top_token_mean: read_tensor(
                &st,
                &name("top_token_mean"),
                &path,
                width * nt,
                Dtype::F32,
            )?,
            pos_mi: read_tensor(&st, &name("pos_mi"), &path, width, Dtype::F32)?,
            features,
            context,
            k,
        };
        if let Some(f) = out
            .best_feature
            .iter()
            .find(|&&f| f >= out.features.len() as i32)
        {
            return Err(corrupt(format!(
                "best feature {f} of {} features",
                out.features.len()
            )));
        }
        Ok(Some(out))
    }
}
