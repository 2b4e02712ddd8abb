//! A pass that holds its rows ([`crate::plan::Plan::holds_rows`]): each stream's activations
//! are kept as they come, block after block, and every tile is one GEMM over all of them at
//! the end of the pass, centred on the exact means.
//!
//! The CPU path does this in refinement's first stage, whose sample is a few thousand tokens.
//! There the rows take a fraction of the memory of the tiles' f64 sums: GPT-2 small's 2,048
//! sample tokens are 302 MB a stream, against 906 MB of sums for one stream's tiles with one
//! anchor layer. So a pass holds whole streams rather than a few layers' tiles: the 12-layer
//! family's first stage takes 4 passes instead of 85. And one GEMM over all rows, written once,
//! runs faster than one per block merged into f64 sums (about 400 against 290 GFLOP/s for
//! 3,072 × 3,072 tiles on two AVX-512 cores). Its correlations are f32 products of centred
//! f32 values, good to about 1e-6: enough to pick candidates, and the second stage's f64 sums
//! give the values a run reports.

use std::borrow::Cow;

use ndarray::{Array2, ArrayView2, s};
use rayon::prelude::*;

use super::cpu::{PART, sum_parts};
use super::{CpuMoments, missing_stream, plan_mismatch};
use crate::AnalysisError;
use crate::plan::TileSpec;
use seedscope_model::matmul::matmul;

/// Every read stream's rows of one pass.
#[derive(Debug, Clone)]
pub(super) struct HeldRows {
    /// Per stream its rows so far, `[rows, width]` row-major (none for a stream the pass does
    /// not read); centred on their means once [`HeldRows::finish`] ran.
    rows: Vec<Option<Vec<f32>>>,
    widths: Vec<usize>,
    count: usize,
    centred: bool,
}

impl HeldRows {
    /// No rows yet of the `used` streams (`widths`: every stream's), with room for `expected`
    /// rows (a pass knows its tokens; growing by doubling would hold twice the rows for a
    /// moment).
    pub fn new(used: &[bool], widths: &[usize], expected: u64) -> Self {
        Self {
            rows: used
                .iter()
                .zip(widths)
                .map(|(&u, &w)| u.then(|| Vec::with_capacity(expected as usize * w)))
                .collect(),
            widths: widths.to_vec(),
            count: 0,
            centred: false,
        }
    }

    /// Whether [`HeldRows::finish`] ran.
    pub fn is_centred(&self) -> bool {
        self.centred
    }

    /// Keep one block's rows of every read stream; the rows added.
    pub fn append(&mut self, block: &[Option<Array2<f32>>]) -> Result<usize, AnalysisError> {
        if self.centred {
            return Err(AnalysisError::Invalid(
                "a block came after the pass's rows were centred".into(),
            ));
        }
        let mut added = None;
        for (s, rows) in self.rows.iter_mut().enumerate() {
            let Some(rows) = rows else { continue };
            let x = block.get(s).and_then(Option::as_ref);
            let x = x.ok_or_else(missing_stream)?;
            if x.ncols() != self.widths[s] || added.is_some_and(|n| n != x.nrows()) {
                return Err(AnalysisError::Invalid(format!(
                    "a block of {} x {} for stream {s} of {} neurons",
                    x.nrows(),
                    x.ncols(),
                    self.widths[s]
                )));
            }
            added = Some(x.nrows());
            match x.as_slice() {
                Some(v) => rows.extend_from_slice(v),
                None => rows.extend(x.iter().copied()),
            }
        }
        let added = added.unwrap_or(0);
        self.count += added;
        Ok(added)
    }

    /// Every read stream's exact moments (f64 sums over all rows, then the centred squares),
    /// and its rows centred on its means, in place. Once; later calls change nothing.
    pub fn finish(&mut self, moments: &mut [Option<CpuMoments>]) {
        if self.centred {
            return;
        }
        let n = self.count.max(1) as f64;
        for (rows, (m, &w)) in self
            .rows
            .iter_mut()
            .zip(moments.iter_mut().zip(&self.widths))
        {
            let (Some(rows), Some(m)) = (rows, m) else {
                continue;
            };
            if w == 0 {
                continue;
            }
            let mean: Vec<f64> = sum_parts(rows.par_chunks(PART * w).map(|part| {
                let mut s = vec![0.0f64; w];
                for r in part.chunks_exact(w) {
                    s.iter_mut().zip(r).for_each(|(s, &v)| *s += v as f64);
                }
                s
            }))
            .into_iter()
            .map(|s| s / n)
            .collect();
            let m2 = sum_parts(rows.par_chunks_mut(PART * w).map(|part| {
                let mut s = vec![0.0f64; w];
                for r in part.chunks_exact_mut(w) {
                    for ((v, s), &mu) in r.iter_mut().zip(&mut s).zip(&mean) {
                        let d = *v as f64 - mu;
                        *s += d * d;
                        *v = d as f32;
                    }
                }
                s
            }));
            *m = CpuMoments { mean, m2 };
        }
        self.centred = true;
    }

    /// Dense tile `t`'s co-moments, `[a_cols, b_cols]` row-major, written into `out` (resized):
    /// the centred columns' products over every row, one GEMM.
    pub fn product(&self, t: &TileSpec, out: &mut Vec<f32>) -> Result<(), AnalysisError> {
        if !self.centred || t.pairs.is_some() {
            return Err(AnalysisError::Invalid(
                "a pass that holds its rows multiplies dense tiles after its last block".into(),
            ));
        }
        let a = self.columns(t.a_stream)?;
        let b = self.columns(t.b_stream)?;
        if t.a_cols.end > a.ncols() || t.b_cols.end > b.ncols() {
            return Err(plan_mismatch());
        }
        out.resize(t.a_cols.len() * t.b_cols.len(), 0.0);
        matmul(
            a.slice(s![.., t.a_cols.clone()]).t(),
            b.slice(s![.., t.b_cols.clone()]),
            out,
        );
        Ok(())
    }

    /// Stream `s`'s rows as a `[rows, width]` matrix.
    fn columns(&self, s: usize) -> Result<ArrayView2<'_, f32>, AnalysisError> {
        let rows = self.rows.get(s).and_then(Option::as_deref);
        let rows = rows.ok_or_else(missing_stream)?;
        ArrayView2::from_shape((self.count, self.widths[s]), rows).map_err(|_| plan_mismatch())
    }

    /// The rows as they came, lent (a checkpoint within the pass, before
    /// [`HeldRows::finish`]).
    pub fn saved(&self) -> Result<Vec<Option<Cow<'_, [f32]>>>, AnalysisError> {
        if self.centred {
            return Err(AnalysisError::Invalid(
                "a pass's rows are saved before they are centred".into(),
            ));
        }
        Ok(self
            .rows
            .iter()
            .map(|r| r.as_deref().map(Cow::Borrowed))
            .collect())
    }

    /// Continue from [`HeldRows::saved`] rows, `count` of them.
    pub fn restore(
        &mut self,
        rows: &[Option<Cow<'_, [f32]>>],
        count: u64,
    ) -> Result<(), AnalysisError> {
        if rows.len() != self.rows.len() {
            return Err(plan_mismatch());
        }
        for ((mine, saved), &w) in self.rows.iter_mut().zip(rows).zip(&self.widths) {
            match (mine, saved) {
                (Some(mine), Some(saved)) if saved.len() == count as usize * w => {
                    mine.clear();
                    mine.extend_from_slice(saved);
                }
                (None, None) => {}
                _ => return Err(plan_mismatch()),
            }
        }
        self.count = count as usize;
        self.centred = false;
        Ok(())
    }
}
