//! Reading one anchor's part of `anatomy.safetensors`: the per-neuron summaries whole, the
//! examples (most of the file) whole or one neuron's at a time, by range.

use std::path::Path;

use super::index::TensorIndex;
use super::{ANATOMY, BundleSource};
use crate::AnalysisError;
use safetensors::tensor::Dtype;

/// Window token ids stored as u16 use this for "outside the row" (−1 when read).
pub const NO_WINDOW_TOKEN: u16 = u16::MAX;

/// One anchor's part of `anatomy.safetensors`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnatomyFile {
    /// The run's features (ids index this).
    pub features: Vec<crate::features::Feature>,
    /// Tokens before and after each example in `windows`.
    pub context: (usize, usize),
    /// Examples per neuron.
    pub k: usize,
    /// `[width, k]` example activations, descending (empty unless read with the examples).
    pub top_val: Vec<f32>,
    /// `[width, k, before + 1 + after]` token ids around each example (−1 outside its row;
    /// empty unless read with the examples).
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
    /// The file's index, for reading one neuron's examples.
    index: TensorIndex,
    /// Its tensors' name prefix (the anchor's).
    prefix: String,
}

impl AnatomyFile {
    /// Tokens per example window.
    pub fn window(&self) -> usize {
        self.context.0 + 1 + self.context.1
    }

    /// Read anchor `anchor`'s anatomy (`width` neurons) from bundle `dir`; `None` when the
    /// bundle has none (made before it existed, or without it). Without `examples` the example
    /// values and windows (most of the file) are not read ([`AnatomyFile::examples`] reads one
    /// neuron's).
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

    /// [`AnatomyFile::read`] from any [`BundleSource`]: only the tensors asked for are read.
    pub fn read_from(
        source: &BundleSource,
        anchor: usize,
        width: usize,
        examples: bool,
    ) -> Result<Option<Self>, AnalysisError> {
        let Some(index) = TensorIndex::read(source, ANATOMY)? else {
            return Ok(None);
        };
        let path = index.path().clone();
        let corrupt = |message: String| AnalysisError::Corrupt {
            path: path.clone(),
            message,
        };
        let meta = index.metadata();
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
        let k = index
            .entry(&name("top_val"))?
            .shape
            .last()
            .copied()
            .unwrap_or(0);
        let (nb, nt) = (crate::anatomy::BEST_FEATURES, crate::anatomy::TOP_TOKENS);
        let all_f32 = |n: &str, len| index.read_all::<f32>(source, &name(n), Dtype::F32, len);
        let all_i32 = |n: &str, len| index.read_all::<i32>(source, &name(n), Dtype::I32, len);
        let (best_feature, best_vr) = (
            all_i32("best_feature", width * nb)?,
            all_f32("best_vr", width * nb)?,
        );
        let (top_token, top_token_mean) = (
            all_i32("top_token", width * nt)?,
            all_f32("top_token_mean", width * nt)?,
        );
        let pos_mi = all_f32("pos_mi", width)?;
        let mut out = Self {
            top_val: Vec::new(),
            windows: Vec::new(),
            best_feature,
            best_vr,
            top_token,
            top_token_mean,
            pos_mi,
            features,
            context,
            k,
            prefix: prefix.clone(),
            index: index.clone(),
        };
        if examples {
            out.top_val = all_f32("top_val", width * k)?;
            out.windows = out.read_windows(source, 0, width * k)?;
        }
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

    /// Neuron `i`'s examples (`layer * d_mlp + neuron`): their activations `[k]` and windows
    /// `[k, window]`, read by range from `source` (the bundle this was read from).
    pub fn examples(
        &self,
        source: &BundleSource,
        i: usize,
    ) -> Result<(Vec<f32>, Vec<i32>), AnalysisError> {
        let k = self.k;
        let values = self.index.read_elems(
            source,
            &format!("{}top_val", self.prefix),
            Dtype::F32,
            i * k,
            k,
        )?;
        let windows = self.read_windows(source, i * k, k)?;
        Ok((bytemuck::pod_collect_to_vec(&values), windows))
    }

    /// Windows `[first, first + count)` (whole windows), as i32 ids (−1 outside a row) from
    /// either stored width.
    fn read_windows(
        &self,
        source: &BundleSource,
        first: usize,
        count: usize,
    ) -> Result<Vec<i32>, AnalysisError> {
        let name = format!("{}windows", self.prefix);
        let win = self.window();
        let dtype = self.index.entry(&name)?.dtype;
        if !matches!(dtype, Dtype::U16 | Dtype::I32) {
            return Err(AnalysisError::Corrupt {
                path: self.index.path().clone(),
                message: format!("tensor {name} is {dtype:?}, not u16 or i32 token ids"),
            });
        }
        let bytes = self
            .index
            .read_elems(source, &name, dtype, first * win, count * win)?;
        Ok(match dtype {
            Dtype::U16 => bytes
                .chunks_exact(2)
                .map(|b| match u16::from_le_bytes([b[0], b[1]]) {
                    NO_WINDOW_TOKEN => -1,
                    t => i32::from(t),
                })
                .collect(),
            _ => bytemuck::pod_collect_to_vec(&bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An anatomy file of one neuron with two examples of 1 + 1 + 1 tokens, its windows in
    /// `dtype`.
    fn file(dtype: Dtype) -> Vec<u8> {
        let f32s = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
        let i32s = |v: &[i32]| bytemuck::cast_slice::<i32, u8>(v).to_vec();
        let ids = [70_000, 5, -1, -1, 7, 8];
        let windows = match dtype {
            Dtype::U16 => ids
                .iter()
                .flat_map(|&t| u16::try_from(t).unwrap_or(NO_WINDOW_TOKEN).to_le_bytes())
                .collect(),
            _ => i32s(&ids),
        };
        let (nb, nt) = (crate::anatomy::BEST_FEATURES, crate::anatomy::TOP_TOKENS);
        let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("top_val", Dtype::F32, vec![1, 1, 2], f32s(&[2.0, 1.0])),
            ("windows", dtype, vec![1, 1, 2, 3], windows),
            (
                "best_feature",
                Dtype::I32,
                vec![1, 1, nb],
                i32s(&vec![-1; nb]),
            ),
            ("best_vr", Dtype::F32, vec![1, 1, nb], f32s(&vec![0.0; nb])),
            ("top_token", Dtype::I32, vec![1, 1, nt], i32s(&vec![-1; nt])),
            (
                "top_token_mean",
                Dtype::F32,
                vec![1, 1, nt],
                f32s(&vec![0.0; nt]),
            ),
            ("pos_mi", Dtype::F32, vec![1, 1], f32s(&[0.0])),
        ];
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view");
                ((*n).to_owned(), v)
            })
            .collect();
        let meta = HashMap::from([
            ("features".to_owned(), "[]".to_owned()),
            ("context".to_owned(), "[1, 1]".to_owned()),
        ]);
        safetensors::serialize(views, Some(meta)).expect("serialize")
    }

    #[test]
    fn one_neurons_examples_read_by_range_from_either_window_width() {
        for (dtype, first) in [(Dtype::I32, 70_000), (Dtype::U16, -1)] {
            let source = BundleSource::Memory {
                label: "test".into(),
                files: std::sync::Arc::new([(ANATOMY.to_owned(), file(dtype))].into()),
            };
            let a = AnatomyFile::read_from(&source, 0, 1, false)
                .expect("read")
                .expect("present");
            assert!(
                a.windows.is_empty() && a.top_val.is_empty(),
                "examples not read"
            );
            let (values, windows) = a.examples(&source, 0).expect("examples");
            assert_eq!(values, [2.0, 1.0]);
            // An id past u16 is only written as i32; u16 files hold the "none" marker there.
            assert_eq!(windows, [first, 5, -1, -1, 7, 8], "{dtype:?}");
            let whole = AnatomyFile::read_from(&source, 0, 1, true)
                .expect("read")
                .expect("present");
            assert_eq!(whole.windows, windows);
        }
    }
}
