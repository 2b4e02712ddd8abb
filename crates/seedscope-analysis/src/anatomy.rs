//! What each anchor neuron responds to, accumulated in the anchor's first pass next to its
//! histograms: the variance its activation shares with every token feature (eq. 4 of the paper),
//! its max-activating examples, the tokens with its highest mean activation and its mutual
//! information with position. The GPU path runs `shaders/anatomy.wgsl`; the CPU path is the same
//! algorithm in f64.
//!
//! **Variance explained.** For a boolean feature y with n₁ of n positions on, eq. 4 with
//! population variances, `1 − [(1−β)Var(v|y=0) + βVar(v|y=1)]/Var(v)`, equals the squared
//! point-biserial correlation `C²/(M2_y · M2_v)` with the co-moment `C = Σ_{y=1}(v − μ)` and
//! `M2_y = n₁n₀/n`. So one sparse GEMM of feature indicators against activations, plus the
//! neuron's moments, gives every score. (The paper's pandas code uses ddof = 1 inside each
//! group; that differs by the factors n_k/(n_k − 1), below 1e-3 for features on over a
//! thousand positions; `tests/anatomy.rs` compares both with numpy.)

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use ndarray::Array2;
use seedscope_gpu::{
    Anatomy as DevAnatomy, AnatomyState, FeatureTables, GpuContext, Kernels, NO_TOKEN,
};

use crate::AnalysisError;
use crate::features::{FeatureKind, FeatureSet};
use crate::gpu_block::{GpuBlock, rows_per_chunk};

/// Max-activating examples kept per neuron (the paper's 20).
pub const TOP_K: usize = 20;
/// Best features kept per neuron.
pub const BEST_FEATURES: usize = 3;
/// Tokens with the highest mean activation kept per neuron.
pub const TOP_TOKENS: usize = 10;
/// Most position buckets for the mutual information (positions are grouped beyond this).
pub const MAX_POSITIONS: usize = 1024;
/// Variance explained from which a feature defines a family (the paper's 0.5).
pub const FAMILY_VR: f32 = 0.5;
/// Mutual information with position (nats) from which an unexplained neuron is a position
/// neuron.
pub const POSITION_MI: f32 = 0.1;

/// Per anchor neuron facts from the data (flat `[width, …]` arrays).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnatomyResult {
    /// Examples per neuron.
    pub k: usize,
    /// `[width, k]` largest activations, descending (`-inf` where fewer tokens were seen).
    pub top_val: Vec<f32>,
    /// `[width, k]` their token indices in the data (`row * seq_len + position`; `u32::MAX`
    /// where none).
    pub top_idx: Vec<u32>,
    /// `[width, BEST_FEATURES]` best features (ids into the run's [`FeatureSet`]).
    pub best_feature: Vec<u32>,
    /// `[width, BEST_FEATURES]` their variance explained.
    pub best_vr: Vec<f32>,
    /// `[width, TOP_TOKENS]` token ids with the highest mean activation (`u32::MAX` where none).
    pub top_token: Vec<u32>,
    /// `[width, TOP_TOKENS]` those means.
    pub top_token_mean: Vec<f32>,
    /// `[width]` mutual information of `activation > 0` with position, nats.
    pub pos_mi: Vec<f32>,
}

/// The host part of one anchor's running state.
#[derive(Debug, Clone, PartialEq)]
pub struct AnatomySaved<'a> {
    /// The accumulator state in consecutive runs of columns that together cover every neuron:
    /// the CPU path's runs lent where they are, the GPU path's chunks read back, a checkpoint's
    /// parts. Never joined on the way (a join held the state twice: 215 MB more for an anchor
    /// of 36,864 neurons with 581 token features and 256 positions).
    pub parts: Vec<AnatomyPart<'a>>,
    /// Positions each feature was on.
    pub feature_count: Vec<u64>,
    /// Kept tokens per position bucket.
    pub pos_total: Vec<u64>,
}

impl AnatomySaved<'_> {
    /// Whether the state has counted a token (its shifts are set).
    pub fn started(&self) -> bool {
        self.pos_total.iter().any(|&t| t > 0)
    }
}

/// One run of consecutive columns of an anchor's anatomy state ([`AnatomyState`]'s arrays),
/// each lent where it is (a host run's own, a checkpoint's mapped file) or owned (a GPU chunk
/// read back, a merge's sums): a checkpoint resumes and shards merge without a copy of the
/// state on the heap next to the run's own.
#[derive(Debug, Clone, PartialEq)]
pub struct AnatomyPart<'a> {
    /// `[n_feat, n_cols]` feature sums of `v - shift`.
    pub sums: Cow<'a, [f64]>,
    /// `[n_cols]` shifts.
    pub shift: Cow<'a, [f32]>,
    /// `[n_cols, k]` top activations, descending (`-inf` where fewer were seen).
    pub top_val: Cow<'a, [f32]>,
    /// `[n_cols, k]` their token indices ([`NO_TOKEN`] where none).
    pub top_idx: Cow<'a, [u32]>,
    /// `[n_pos, n_cols]` counts of activations above 0.
    pub active: Cow<'a, [u32]>,
}

impl<'a> AnatomyPart<'a> {
    /// `s`'s arrays, lent.
    pub fn lent(s: &'a AnatomyState) -> Self {
        Self {
            sums: Cow::Borrowed(&s.sums),
            shift: Cow::Borrowed(&s.shift),
            top_val: Cow::Borrowed(&s.top_val),
            top_idx: Cow::Borrowed(&s.top_idx),
            active: Cow::Borrowed(&s.active),
        }
    }

    /// `s`'s arrays, owned.
    pub fn owned(s: AnatomyState) -> Self {
        Self {
            sums: Cow::Owned(s.sums),
            shift: Cow::Owned(s.shift),
            top_val: Cow::Owned(s.top_val),
            top_idx: Cow::Owned(s.top_idx),
            active: Cow::Owned(s.active),
        }
    }

    /// Every array owned (copied where lent).
    pub fn into_owned(self) -> AnatomyPart<'static> {
        AnatomyPart::owned(self.into_state())
    }

    /// The state (copied where lent).
    pub fn into_state(self) -> AnatomyState {
        AnatomyState {
            sums: self.sums.into_owned(),
            shift: self.shift.into_owned(),
            top_val: self.top_val.into_owned(),
            top_idx: self.top_idx.into_owned(),
            active: self.active.into_owned(),
        }
    }
}

/// Where a run's anatomy is computed and with which features.
#[derive(Debug, Clone)]
pub struct AnatomySpec {
    /// The features.
    pub features: Arc<FeatureSet>,
    /// Tokens per row (positions).
    pub seq_len: usize,
}

impl AnatomySpec {
    /// Position buckets.
    pub fn n_pos(&self) -> usize {
        self.seq_len.clamp(1, MAX_POSITIONS)
    }

    /// The bucket of position `p`.
    pub fn bucket(&self, p: usize) -> u32 {
        (p * self.n_pos() / self.seq_len.max(1)) as u32
    }
}

/// Where an anchor's anatomy accumulates: [`CpuAnatomy`] (the kernel's twin, f64 sums) or
/// [`GpuAnatomy`] (`shaders/anatomy.wgsl`), each reading its own path's blocks.
#[allow(async_fn_in_trait)]
pub trait AnatomyDevice {
    /// One block of post-activations, `[tokens, width]`.
    type Block;

    /// Accumulate anchor `a`'s block, `info` holding four u32 per row (position bucket, token,
    /// previous token, global index); `first`: its first block.
    fn update(
        &mut self,
        a: usize,
        x: &Self::Block,
        info: &[u32],
        first: bool,
    ) -> Result<(), AnalysisError>;

    /// Anchor `a`'s state over all neurons, in consecutive runs of columns
    /// ([`AnatomySaved::parts`]).
    async fn state(&self, a: usize) -> Result<Vec<AnatomyPart<'_>>, AnalysisError>;

    /// Continue anchor `a` from the state saved in `parts` (any split of its columns;
    /// `started`: its shifts are set).
    fn restore(
        &mut self,
        a: usize,
        parts: &[AnatomyPart<'_>],
        started: bool,
    ) -> Result<(), AnalysisError>;
}

/// The anatomy on the host: [`seedscope_gpu::twin::anatomy_update_columns`] with f64 sums, each
/// anchor's neurons in one run of columns per thread (every column's counts are its own, so
/// the split changes no value).
#[derive(Debug)]
pub struct CpuAnatomy {
    /// Per anchor, its runs of columns and their states.
    runs: Vec<Vec<(Range<usize>, AnatomyState)>>,
    features: Arc<FeatureSet>,
    /// Per anchor, its neurons.
    widths: Vec<usize>,
    n_feat: usize,
    n_pos: usize,
}

impl AnatomyDevice for CpuAnatomy {
    type Block = Array2<f32>;

    fn update(
        &mut self,
        a: usize,
        x: &Array2<f32>,
        info: &[u32],
        first: bool,
    ) -> Result<(), AnalysisError> {
        use rayon::prelude::*;
        let x = x.as_standard_layout();
        let v = x.as_slice().ok_or_else(|| {
            AnalysisError::Invalid("activations are not a contiguous matrix".into())
        })?;
        let (width, features) = (self.widths[a], &self.features);
        self.runs[a].par_iter_mut().for_each(|(cols, state)| {
            seedscope_gpu::twin::anatomy_update_columns(
                state,
                &features.current,
                &features.previous,
                (v, width),
                cols.clone(),
                info,
                first,
            );
        });
        Ok(())
    }

    async fn state(&self, a: usize) -> Result<Vec<AnatomyPart<'_>>, AnalysisError> {
        Ok(self.runs[a]
            .iter()
            .map(|(_, s)| AnatomyPart::lent(s))
            .collect())
    }

    fn restore(
        &mut self,
        a: usize,
        parts: &[AnatomyPart<'_>],
        _: bool,
    ) -> Result<(), AnalysisError> {
        let (width, n_feat, n_pos) = (self.widths[a], self.n_feat, self.n_pos);
        check_parts(parts, width, n_feat, n_pos)?;
        for (cols, run) in &mut self.runs[a] {
            columns_into(parts, cols.clone(), n_feat, n_pos, run);
        }
        Ok(())
    }
}

/// The anatomy on the device (`shaders/anatomy.wgsl`), in column chunks that fit one binding.
#[derive(Debug)]
pub struct GpuAnatomy {
    ctx: GpuContext,
    kernels: Arc<Kernels>,
    tables: FeatureTables,
    /// Per anchor, column chunks.
    chunks: Vec<Vec<DevAnatomy>>,
    n_feat: usize,
    n_pos: usize,
    /// Per anchor, its neurons.
    widths: Vec<usize>,
}

impl AnatomyDevice for GpuAnatomy {
    type Block = GpuBlock;

    fn update(
        &mut self,
        a: usize,
        x: &GpuBlock,
        info: &[u32],
        _first: bool,
    ) -> Result<(), AnalysisError> {
        let (rows, cols) = (x.rows(), x.cols());
        let chunk = rows_per_chunk(&self.ctx, rows, [cols])?;
        for r0 in (0..rows as u64).step_by(chunk as usize) {
            let len = chunk.min(rows as u64 - r0) as u32;
            let part = &info[r0 as usize * 4..(r0 as usize + len as usize) * 4];
            for c in &self.chunks[a] {
                c.update(
                    &self.ctx,
                    &self.kernels,
                    &self.tables,
                    &x.view(r0, len),
                    part,
                )?;
            }
        }
        Ok(())
    }

    async fn state(&self, a: usize) -> Result<Vec<AnatomyPart<'_>>, AnalysisError> {
        let mut parts = Vec::with_capacity(self.chunks[a].len());
        for c in &self.chunks[a] {
            parts.push(AnatomyPart::owned(c.read_async(&self.ctx).await?));
        }
        Ok(parts)
    }

    fn restore(
        &mut self,
        a: usize,
        parts: &[AnatomyPart<'_>],
        started: bool,
    ) -> Result<(), AnalysisError> {
        check_parts(parts, self.widths[a], self.n_feat, self.n_pos)?;
        for c in &self.chunks[a] {
            let c0 = c.col0() as usize;
            let part = columns(parts, c0..c0 + c.n_cols() as usize, self.n_feat, self.n_pos);
            c.restore(&self.ctx, &part, started)?;
        }
        Ok(())
    }
}

/// Anatomy accumulators of some anchors in one pass: the host's counts (features on, tokens
/// per position) and the device part `D`.
#[derive(Debug)]
pub struct Anatomies<D> {
    spec: AnatomySpec,
    dev: D,
    host: Vec<(Vec<u64>, Vec<u64>)>,
    started: Vec<bool>,
}

impl Anatomies<CpuAnatomy> {
    /// Empty accumulators on the host, one per anchor of `widths[a]` neurons.
    pub fn cpu(spec: &AnatomySpec, widths: &[usize]) -> Self {
        let (n_feat, n_pos) = (spec.features.len(), spec.n_pos());
        let threads = rayon::current_num_threads();
        let runs = widths
            .iter()
            .map(|&w| {
                crate::plan::chunks(0, w, threads)
                    .into_iter()
                    .map(|cols| {
                        let n = cols.len() as u32;
                        let state =
                            AnatomyState::empty(n, TOP_K as u32, n_pos as u32, n_feat as u32);
                        (cols, state)
                    })
                    .collect()
            })
            .collect();
        Self::with(spec, widths.len(), CpuAnatomy::new(spec, widths, runs))
    }

    /// The accumulators that saved states describe (a merge of shards), on the host: each
    /// state's parts become its runs of columns as they are, owned ones without a copy, so
    /// the merge holds its anatomy once.
    pub fn cpu_from(
        spec: &AnatomySpec,
        widths: &[usize],
        saved: Vec<AnatomySaved<'_>>,
    ) -> Result<Self, AnalysisError> {
        check_counts(spec, &saved, widths.len())?;
        let (nf, n_pos) = (spec.features.len(), spec.n_pos());
        let mut runs = Vec::with_capacity(saved.len());
        let mut host = Vec::with_capacity(saved.len());
        let started = saved.iter().map(AnatomySaved::started).collect();
        for (s, &width) in saved.into_iter().zip(widths) {
            check_parts(&s.parts, width, nf, n_pos)?;
            let mut c0 = 0;
            let mut anchor_runs = Vec::with_capacity(s.parts.len());
            for part in s.parts {
                let n = part.shift.len();
                anchor_runs.push((c0..c0 + n, part.into_state()));
                c0 += n;
            }
            runs.push(anchor_runs);
            host.push((s.feature_count, s.pos_total));
        }
        let mut this = Self::with(spec, widths.len(), CpuAnatomy::new(spec, widths, runs));
        this.started = started;
        this.host = host;
        Ok(this)
    }
}

impl CpuAnatomy {
    fn new(
        spec: &AnatomySpec,
        widths: &[usize],
        runs: Vec<Vec<(Range<usize>, AnatomyState)>>,
    ) -> Self {
        Self {
            runs,
            features: spec.features.clone(),
            widths: widths.to_vec(),
            n_feat: spec.features.len(),
            n_pos: spec.n_pos(),
        }
    }
}

/// An error unless there are `n` saved states, each with counts of the run's features and
/// positions.
fn check_counts(
    spec: &AnatomySpec,
    saved: &[AnatomySaved<'_>],
    n: usize,
) -> Result<(), AnalysisError> {
    if saved.len() != n {
        return Err(AnalysisError::Invalid(format!(
            "the checkpoint holds {} anatomy states, the pass needs {n}",
            saved.len()
        )));
    }
    let (nf, n_pos) = (spec.features.len(), spec.n_pos());
    if saved
        .iter()
        .any(|s| s.feature_count.len() != nf || s.pos_total.len() != n_pos)
    {
        return Err(AnalysisError::Invalid(
            "saved anatomy counts do not fit this run's features or positions".into(),
        ));
    }
    Ok(())
}

impl Anatomies<GpuAnatomy> {
    /// Empty accumulators on `ctx`'s device, one per anchor of `widths[a]` neurons.
    pub fn gpu(
        ctx: &GpuContext,
        kernels: &Arc<Kernels>,
        spec: &AnatomySpec,
        widths: &[usize],
    ) -> Result<Self, AnalysisError> {
        let nf = spec.features.len() as u32;
        let (k, n_pos) = (TOP_K as u32, spec.n_pos() as u32);
        let tables = FeatureTables::new(ctx, &spec.features.current, &spec.features.previous, nf)?;
        let per = DevAnatomy::max_cols(ctx, k, n_pos, nf).max(1) as usize;
        let chunks = widths
            .iter()
            .map(|&width| {
                (0..width)
                    .step_by(per)
                    .map(|c0| {
                        let len = per.min(width - c0);
                        DevAnatomy::new(ctx, c0 as u32, len as u32, k, n_pos, nf)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dev = GpuAnatomy {
            ctx: ctx.clone(),
            kernels: kernels.clone(),
            tables,
            chunks,
            n_feat: nf as usize,
            n_pos: n_pos as usize,
            widths: widths.to_vec(),
        };
        Ok(Self::with(spec, widths.len(), dev))
    }
}

impl<D: AnatomyDevice> Anatomies<D> {
    fn with(spec: &AnatomySpec, n: usize, dev: D) -> Self {
        Self {
            spec: spec.clone(),
            dev,
            host: vec![(vec![0; spec.features.len()], vec![0; spec.n_pos()]); n],
            started: vec![false; n],
        }
    }

    /// Accumulate anchor `a`'s post-activations `x` (`[kept, width]`) of the kept positions
    /// `kept` (indices into rows `r0..` of `ids`, row-major with `seq_len` per row).
    pub fn update(
        &mut self,
        a: usize,
        x: &D::Block,
        ids: &[u32],
        r0: usize,
        kept: &[i64],
    ) -> Result<(), AnalysisError> {
        let seq = self.spec.seq_len;
        let mut info = Vec::with_capacity(kept.len() * 4);
        for &i in kept {
            let g = r0 * seq + i as usize;
            let pos = g % seq;
            let prev = if pos > 0 { ids[g - 1] } else { NO_TOKEN };
            info.extend_from_slice(&[self.spec.bucket(pos), ids[g], prev, g as u32]);
        }
        let (fcount, ptotal) = &mut self.host[a];
        self.spec.features.count(
            info.chunks_exact(4)
                .map(|r| (r[1], (r[2] != NO_TOKEN).then_some(r[2]))),
            fcount,
        );
        for r in info.chunks_exact(4) {
            ptotal[r[0] as usize] += 1;
        }
        let first = !self.started[a];
        self.started[a] = true;
        self.dev.update(a, x, &info, first)
    }

    /// The running state of every anchor (for a checkpoint), lent where it is on the host.
    pub async fn save(&self) -> Result<Vec<AnatomySaved<'_>>, AnalysisError> {
        let mut out = Vec::with_capacity(self.host.len());
        for (a, (feature_count, pos_total)) in self.host.iter().enumerate() {
            out.push(AnatomySaved {
                parts: self.dev.state(a).await?,
                feature_count: feature_count.clone(),
                pos_total: pos_total.clone(),
            });
        }
        Ok(out)
    }

    /// Continue from saved states.
    pub fn restore(&mut self, saved: &[AnatomySaved<'_>]) -> Result<(), AnalysisError> {
        check_counts(&self.spec, saved, self.host.len())?;
        for (a, s) in saved.iter().enumerate() {
            let started = s.started();
            self.dev.restore(a, &s.parts, started)?;
            self.host[a] = (s.feature_count.clone(), s.pos_total.clone());
            self.started[a] = started;
        }
        Ok(())
    }

    /// Anchor `a`'s result, from its state and the neurons' mean and variance over the same
    /// kept tokens.
    pub async fn finish(
        &self,
        a: usize,
        mean: &[f64],
        var: &[f64],
    ) -> Result<AnatomyResult, AnalysisError> {
        let saved = AnatomySaved {
            parts: self.dev.state(a).await?,
            feature_count: self.host[a].0.clone(),
            pos_total: self.host[a].1.clone(),
        };
        Ok(finish(&saved, &self.spec.features, mean, var))
    }
}

/// An error unless `parts` are states of `nf` features and `n_pos` positions whose columns
/// add up to `width` neurons.
fn check_parts(
    parts: &[AnatomyPart<'_>],
    width: usize,
    nf: usize,
    n_pos: usize,
) -> Result<(), AnalysisError> {
    let fits = |p: &AnatomyPart<'_>| {
        let n = p.shift.len();
        p.sums.len() == nf * n
            && p.active.len() == n_pos * n
            && p.top_val.len() == TOP_K * n
            && p.top_idx.len() == TOP_K * n
    };
    let total: usize = parts.iter().map(|p| p.shift.len()).sum();
    if total != width || !parts.iter().all(fits) {
        return Err(AnalysisError::Invalid(
            "saved anatomy state does not fit this run".into(),
        ));
    }
    Ok(())
}

/// Columns `cols` of the state saved in consecutive `parts` (checked by [`check_parts`]), as
/// one state: every column to merge shards, or a device chunk's share on restore.
fn columns(parts: &[AnatomyPart<'_>], cols: Range<usize>, nf: usize, n_pos: usize) -> AnatomyState {
    let mut out = AnatomyState::empty(cols.len() as u32, TOP_K as u32, n_pos as u32, nf as u32);
    columns_into(parts, cols, nf, n_pos, &mut out);
    out
}

/// [`columns`] written into `out`, a state of `cols.len()` columns (a run's own buffers on
/// restore: no second state is allocated next to it).
fn columns_into(
    parts: &[AnatomyPart<'_>],
    cols: Range<usize>,
    nf: usize,
    n_pos: usize,
    out: &mut AnatomyState,
) {
    let (n, k) = (cols.len(), TOP_K);
    let mut p0 = 0;
    for p in parts {
        let pn = p.shift.len();
        let (lo, hi) = (cols.start.max(p0), cols.end.min(p0 + pn));
        if lo < hi {
            let (src, dst, len) = (lo - p0, lo - cols.start, hi - lo);
            for f in 0..nf {
                out.sums[f * n + dst..f * n + dst + len]
                    .copy_from_slice(&p.sums[f * pn + src..f * pn + src + len]);
            }
            for t in 0..n_pos {
                out.active[t * n + dst..t * n + dst + len]
                    .copy_from_slice(&p.active[t * pn + src..t * pn + src + len]);
            }
            out.shift[dst..dst + len].copy_from_slice(&p.shift[src..src + len]);
            out.top_val[dst * k..(dst + len) * k]
                .copy_from_slice(&p.top_val[src * k..(src + len) * k]);
            out.top_idx[dst * k..(dst + len) * k]
                .copy_from_slice(&p.top_idx[src * k..(src + len) * k]);
        }
        p0 += pn;
    }
}

/// Variance explained of a feature on `n1` of `n` positions with `sum = Σ_{y=1}(v − shift)`,
/// for a neuron of mean `mean` and population variance `var`.
pub fn variance_explained(sum: f64, n1: u64, n: u64, shift: f64, mean: f64, var: f64) -> f64 {
    if n1 == 0 || n1 >= n || var <= 0.0 {
        return 0.0;
    }
    let (n1, nn) = (n1 as f64, n as f64);
    let c = sum - n1 * (mean - shift);
    let m2y = n1 * (nn - n1) / nn;
    (c * c / (m2y * var * nn)).clamp(0.0, 1.0)
}

/// Mutual information (nats) between `activation > 0` and position, from per-position active
/// counts and totals (the paper's `pos_mutual_info`, weighted by each position's tokens).
pub fn position_mi(active: impl Iterator<Item = u32> + Clone, total: &[u64]) -> f64 {
    let n: u64 = total.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let on: u64 = active.clone().map(u64::from).sum();
    let p = on as f64 / n as f64;
    let eps = 1e-9;
    active
        .zip(total)
        .filter(|(_, t)| **t > 0)
        .map(|(a, &t)| {
            let pt = a as f64 / t as f64;
            let w = t as f64 / n as f64;
            w * (pt * ((pt + eps) / (p + eps)).ln()
                + (1.0 - pt) * ((1.0 - pt + eps) / (1.0 - p + eps)).ln())
        })
        .sum::<f64>()
        .max(0.0)
}

/// Merge the anatomy state of another part of the data into `a`: counts add, `b`'s feature
/// sums of `v − shift_b` are moved to `a`'s shift (`+ n_f (shift_b − shift_a)`), the top
/// activations of both are merged (value descending, then token index).
pub fn merge_saved(a: &mut AnatomySaved<'_>, b: &AnatomySaved<'_>) -> Result<(), String> {
    let (nf, n_pos) = (a.feature_count.len(), a.pos_total.len());
    if b.feature_count.len() != nf || b.pos_total.len() != n_pos {
        return Err("anatomy states of different shapes".into());
    }
    if !b.started() {
        return Ok(());
    }
    if !a.started() {
        a.parts = b
            .parts
            .iter()
            .cloned()
            .map(AnatomyPart::into_owned)
            .collect();
        a.feature_count.clone_from(&b.feature_count);
        a.pos_total.clone_from(&b.pos_total);
        return Ok(());
    }
    let width: usize = a.parts.iter().map(|p| p.shift.len()).sum();
    for s in [&*a, b] {
        check_parts(&s.parts, width, nf, n_pos).map_err(|e| e.to_string())?;
    }
    // Part by part in `a`'s split, `b`'s columns gathered for each (shards of one machine
    // split alike): no state is joined whole, which would hold it twice.
    let mut c0 = 0;
    for part in &mut a.parts {
        let n = part.shift.len();
        let sb = columns(&b.parts, c0..c0 + n, nf, n_pos);
        merge_columns(part, &sb, &b.feature_count);
        c0 += n;
    }
    a.feature_count
        .iter_mut()
        .zip(&b.feature_count)
        .for_each(|(x, y)| *x += y);
    a.pos_total
        .iter_mut()
        .zip(&b.pos_total)
        .for_each(|(x, y)| *x += y);
    Ok(())
}

/// `sb` merged into `sa`, the same columns of two parts of the data (`nf_b`: `sb`'s count of
/// each feature).
fn merge_columns(sa: &mut AnatomyPart<'_>, sb: &AnatomyState, nf_b: &[u64]) {
    let width = sa.shift.len();
    let (sums, shift) = (sa.sums.to_mut(), &sa.shift);
    for (f, &n_b) in nf_b.iter().enumerate() {
        for c in 0..width {
            let e = f * width + c;
            sums[e] += sb.sums[e] + n_b as f64 * (sb.shift[c] as f64 - shift[c] as f64);
        }
    }
    let k = sa.top_val.len() / width.max(1);
    let (top_val, top_idx) = (sa.top_val.to_mut(), sa.top_idx.to_mut());
    for c in 0..width {
        let mut all: Vec<(f32, u32)> = (c * k..(c + 1) * k)
            .flat_map(|e| [(top_val[e], top_idx[e]), (sb.top_val[e], sb.top_idx[e])])
            .filter(|(_, i)| *i != NO_TOKEN)
            .collect();
        all.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        for (q, e) in (c * k..(c + 1) * k).enumerate() {
            let (v, i) = all.get(q).copied().unwrap_or((f32::NEG_INFINITY, NO_TOKEN));
            top_val[e] = v;
            top_idx[e] = i;
        }
    }
    sa.active
        .to_mut()
        .iter_mut()
        .zip(&sb.active)
        .for_each(|(x, y)| *x += y);
}

/// The per-neuron result of a finished state, each part of its columns on its own thread
/// (the parts are never joined: that would hold the state twice).
pub fn finish(
    s: &AnatomySaved<'_>,
    features: &FeatureSet,
    mean: &[f64],
    var: &[f64],
) -> AnatomyResult {
    use rayon::prelude::*;
    let starts: Vec<usize> = s
        .parts
        .iter()
        .scan(0, |c0, p| {
            let start = *c0;
            *c0 += p.shift.len();
            Some(start)
        })
        .collect();
    let pieces: Vec<AnatomyResult> = s
        .parts
        .par_iter()
        .zip(starts)
        .map(|(p, c0)| {
            let cols = c0..c0 + p.shift.len();
            finish_part(p, s, features, &mean[cols.clone()], &var[cols])
        })
        .collect();
    let mut out = AnatomyResult {
        k: TOP_K,
        top_val: Vec::new(),
        top_idx: Vec::new(),
        best_feature: Vec::new(),
        best_vr: Vec::new(),
        top_token: Vec::new(),
        top_token_mean: Vec::new(),
        pos_mi: Vec::new(),
    };
    for p in pieces {
        out.top_val.extend(p.top_val);
        out.top_idx.extend(p.top_idx);
        out.best_feature.extend(p.best_feature);
        out.best_vr.extend(p.best_vr);
        out.top_token.extend(p.top_token);
        out.top_token_mean.extend(p.top_token_mean);
        out.pos_mi.extend(p.pos_mi);
    }
    out
}

/// [`finish`] of one part's columns (`mean` and `var` theirs), with the counts of `s`.
fn finish_part(
    part: &AnatomyPart<'_>,
    s: &AnatomySaved<'_>,
    features: &FeatureSet,
    mean: &[f64],
    var: &[f64],
) -> AnatomyResult {
    let width = part.shift.len();
    let n: u64 = s.pos_total.iter().sum();
    let nf = features.len();
    let n_pos = s.pos_total.len();
    let mut best_feature = vec![u32::MAX; width * BEST_FEATURES];
    let mut best_vr = vec![0f32; width * BEST_FEATURES];
    let mut top_token = vec![u32::MAX; width * TOP_TOKENS];
    let mut top_token_mean = vec![f32::NAN; width * TOP_TOKENS];
    let mut pos_mi = vec![0f32; width];
    for c in 0..width {
        let shift = part.shift[c] as f64;
        let mut scored: Vec<(f64, u32)> = (0..nf)
            .map(|f| {
                let vr = variance_explained(
                    part.sums[f * width + c],
                    s.feature_count[f],
                    n,
                    shift,
                    mean[c],
                    var[c],
                );
                (vr, f as u32)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (j, (vr, f)) in scored.iter().take(BEST_FEATURES).enumerate() {
            best_feature[c * BEST_FEATURES + j] = *f;
            best_vr[c * BEST_FEATURES + j] = *vr as f32;
        }
        let mut means: Vec<(f64, u32)> = features
            .token_of
            .iter()
            .filter(|(f, _)| s.feature_count[*f as usize] > 0)
            .map(|&(f, t)| {
                let cnt = s.feature_count[f as usize] as f64;
                (shift + part.sums[f as usize * width + c] / cnt, t)
            })
            .collect();
        means.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (j, (m, t)) in means.iter().take(TOP_TOKENS).enumerate() {
            top_token[c * TOP_TOKENS + j] = *t;
            top_token_mean[c * TOP_TOKENS + j] = *m as f32;
        }
        pos_mi[c] =
            position_mi((0..n_pos).map(|t| part.active[t * width + c]), &s.pos_total) as f32;
    }
    AnatomyResult {
        k: TOP_K,
        top_val: part.top_val.to_vec(),
        top_idx: part.top_idx.to_vec(),
        best_feature,
        best_vr,
        top_token,
        top_token_mean,
        pos_mi,
    }
}

/// A neuron's family from its best feature (the paper's VR > 0.5), its mutual information with
/// position and its activation kurtosis: `unigram`, `alphabet`, `previous-token`, `syntax`,
/// `semantic`, `position` or `unexplained`.
pub fn family(features: &FeatureSet, best: Option<(u32, f32)>, pos_mi: f32) -> &'static str {
    if let Some((f, vr)) = best
        && vr > FAMILY_VR
        && let Some(feat) = features.features.get(f as usize)
    {
        if feat.previous {
            return "previous-token";
        }
        return match feat.kind {
            FeatureKind::Unigram | FeatureKind::Token => "unigram",
            FeatureKind::Alphabet => "alphabet",
            FeatureKind::Syntax => "syntax",
            FeatureKind::Semantic => "semantic",
        };
    }
    if pos_mi >= POSITION_MI {
        return "position";
    }
    "unexplained"
}

#[cfg(test)]
mod tests {
    use super::*;
    use seedscope_gpu::twin::anatomy_update_columns;

    #[test]
    fn variance_explained_is_eq4_with_population_variances() {
        // v = [1, 2, 10, 11], y = [0, 0, 1, 1].
        let v = [1.0f64, 2.0, 10.0, 11.0];
        let mean = v.iter().sum::<f64>() / 4.0;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
        let (var0, var1) = (0.25, 0.25);
        let eq4 = 1.0 - (0.5 * var0 + 0.5 * var1) / var;
        let shift = 2.0;
        let sum = (10.0 - shift) + (11.0 - shift);
        let vr = variance_explained(sum, 2, 4, shift, mean, var);
        assert!((vr - eq4).abs() < 1e-12, "{vr} vs {eq4}");
    }

    /// A 10-neuron layer over two blocks of rows (11 and 12), the features its tokens turn
    /// on, and the state of one run over both blocks.
    struct TwoBlocks {
        width: usize,
        nf: usize,
        np: usize,
        x: Vec<f32>,
        current: Vec<Vec<u32>>,
        previous: Vec<Vec<u32>>,
        info: Vec<u32>,
        whole: AnatomyState,
    }

    impl TwoBlocks {
        const FIRST_ROWS: usize = 11;

        fn new() -> Self {
            let (width, rows, nf, np) = (10, 23, 3, 4);
            let x = (0..rows * width)
                .map(|i| ((i * 37 % 29) as f32 - 11.0) / 7.0)
                .collect();
            // Token t turns feature t % 3 on, and feature 2 at the next position.
            let current = (0..5).map(|t| vec![t % 3]).collect();
            let previous = (0..5).map(|_| vec![2]).collect();
            let info = (0..rows as u32)
                .flat_map(|r| [r % 4, r % 5, if r == 0 { NO_TOKEN } else { (r - 1) % 5 }, r])
                .collect();
            let mut b = Self {
                width,
                nf,
                np,
                x,
                current,
                previous,
                info,
                whole: AnatomyState::empty(0, 0, 0, 0),
            };
            b.whole = b.run(0..width, &[0, 1]);
            b
        }

        /// Block `i`'s rows and their info.
        fn block(&self, i: usize) -> (&[f32], &[u32]) {
            let (x1, x2) = self.x.split_at(Self::FIRST_ROWS * self.width);
            let (i1, i2) = self.info.split_at(4 * Self::FIRST_ROWS);
            [(x1, i1), (x2, i2)][i]
        }

        /// Columns `cols` over `blocks` in order, the first of them setting the shifts.
        fn run(&self, cols: Range<usize>, blocks: &[usize]) -> AnatomyState {
            let (n, k) = (cols.len() as u32, TOP_K as u32);
            let mut s = AnatomyState::empty(n, k, self.np as u32, self.nf as u32);
            for (j, &i) in blocks.iter().enumerate() {
                let (x, info) = self.block(i);
                let (cur, prev, xw) = (&self.current, &self.previous, (x, self.width));
                anatomy_update_columns(&mut s, cur, prev, xw, cols.clone(), info, j == 0);
            }
            s
        }
    }

    /// The host's runs of columns, joined, are the state of one run over every column, for
    /// any split (a column's counts are its own); a state sliced back gives each run's.
    #[test]
    fn runs_of_columns_joined_are_one_run() {
        let b = TwoBlocks::new();
        let (width, nf, np) = (b.width, b.nf, b.np);
        for runs in [1, 2, 3, 7] {
            let states: Vec<AnatomyState> = crate::plan::chunks(0, width, runs)
                .into_iter()
                .map(|cols| b.run(cols, &[0, 1]))
                .collect();
            let parts: Vec<AnatomyPart> = states.iter().map(AnatomyPart::lent).collect();
            check_parts(&parts, width, nf, np).expect("the runs cover every neuron");
            assert_eq!(columns(&parts, 0..width, nf, np), b.whole, "{runs}");
            // Saved in one split, resumed in another (a checkpoint on another thread count).
            for other in [1, 2, 4] {
                for cols in crate::plan::chunks(0, width, other) {
                    assert_eq!(
                        columns(&parts, cols.clone(), nf, np),
                        b.run(cols, &[0, 1]),
                        "{runs} {other}"
                    );
                }
            }
            assert!(check_parts(&parts[1..], width, nf, np).is_err());
        }
        assert!(b.whole.top_idx.iter().any(|&i| i != NO_TOKEN));
        let lent = [AnatomyPart::lent(&b.whole)];
        assert!(check_parts(&lent, width + 1, nf, np).is_err());
        assert!(check_parts(&lent, width, nf + 1, np).is_err());
    }

    /// Two shards' states, each saved in its own split of columns, merged part by part are
    /// the state of one run over both shards' rows (the first shard's shifts; the sums to
    /// rounding, since each shard's are taken from its own shifts), in the first's split.
    #[test]
    fn shards_merged_part_by_part_are_one_run() {
        let b = TwoBlocks::new();
        let (width, nf, np) = (b.width, b.nf, b.np);
        // A shard of `blocks`: each feature its rows turn on, each row's position bucket.
        let saved = |blocks: &[usize], split: usize| {
            let mut feature_count = vec![0u64; nf];
            let mut pos_total = vec![0u64; np];
            for &i in blocks {
                for r in b.block(i).1.chunks_exact(4) {
                    pos_total[r[0] as usize] += 1;
                    let prev = (r[2] != NO_TOKEN).then(|| &b.previous[r[2] as usize]);
                    for &f in b.current[r[1] as usize]
                        .iter()
                        .chain(prev.into_iter().flatten())
                    {
                        feature_count[f as usize] += 1;
                    }
                }
            }
            let parts = crate::plan::chunks(0, width, split)
                .into_iter()
                .map(|cols| AnatomyPart::owned(b.run(cols, blocks)))
                .collect();
            AnatomySaved {
                parts,
                feature_count,
                pos_total,
            }
        };
        let both = saved(&[0, 1], 1);
        for (split_a, split_b) in [(1, 1), (2, 3), (3, 1), (7, 2)] {
            let mut a = saved(&[0], split_a);
            merge_saved(&mut a, &saved(&[1], split_b)).expect("the shards merge");
            assert_eq!(a.parts.len(), split_a);
            assert_eq!(a.feature_count, both.feature_count);
            assert_eq!(a.pos_total, both.pos_total);
            let merged = columns(&a.parts, 0..width, nf, np);
            assert_eq!(merged.shift, b.whole.shift);
            assert_eq!(merged.active, b.whole.active);
            assert_eq!(merged.top_val, b.whole.top_val);
            assert_eq!(merged.top_idx, b.whole.top_idx);
            for (m, w) in merged.sums.iter().zip(&b.whole.sums) {
                // Each difference (v − shift) is rounded to f32 before it is summed.
                assert!((m - w).abs() <= 1e-6 * w.abs().max(1.0), "{m} {w}");
            }
        }
        // An empty shard changes nothing; a shard of other widths is refused.
        let mut a = saved(&[0], 2);
        let before = a.clone();
        merge_saved(&mut a, &saved(&[], 3)).expect("an empty shard merges");
        assert_eq!(a, before);
        let mut narrow = saved(&[0], 2);
        narrow.parts.pop();
        assert!(merge_saved(&mut a, &narrow).is_err());
    }

    #[test]
    fn position_mi_is_zero_when_independent_and_high_when_determined() {
        assert!(position_mi([5u32, 5].into_iter(), &[10, 10]).abs() < 1e-9);
        let mi = position_mi([10u32, 0].into_iter(), &[10, 10]);
        assert!((mi - std::f64::consts::LN_2).abs() < 1e-6, "{mi}");
    }
}
