//! Candidate refinement in two stages: all pairs over a sample of the rows keep each anchor
//! neuron's best and worst candidates per stream; one pass over all tokens then accumulates
//! exactly those pairs.

use std::sync::Arc;

use super::block::blocks;
use super::{AnalysisOptions, CANDIDATES, Family, Refine, Run, TokenSet};
use crate::AnalysisError;
use crate::compute::Compute;
use crate::plan::{
    KINDS, Kind, MAX_PAIRS_PER_TILE, Plan, Reuse, Shape, TileSpec, activation_bytes, chunks,
    rotation_bytes, rotations_of, stream,
};
use crate::results::{AnchorResult, Outcome, Progress};

impl Run<'_> {
    /// The prefix stage (in `work_dir/prefix`, whose checkpoint stays until the bundle is
    /// written, so that a rerun after a failed write skips it), then the candidate stage.
    pub(super) async fn run_refined<C: Compute>(
        &self,
        compute: &C,
        refine: Refine,
        shard: Option<(usize, usize)>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Outcome, AnalysisError> {
        let work_dir = self.need_dir("refinement")?;
        let shapes = self.family.shapes()?;
        // At most half the narrowest model's neurons at each end.
        let narrowest = shapes.iter().map(Shape::width).min().unwrap_or(0);
        let k = refine.k.clamp(1, (narrowest / 2).max(1));
        let (sample, prefix_options) = self.first_stage(refine);
        let prefix_dir = work_dir.join(super::PREFIX);
        std::fs::create_dir_all(&prefix_dir).map_err(|source| AnalysisError::Io {
            path: prefix_dir.clone(),
            source,
        })?;
        let prefix = Run {
            family: Family {
                models: self.family.models,
                device: self.family.device,
            },
            tokens: &sample,
            options: &prefix_options,
            fingerprint: format!("{}/prefix", self.fingerprint),
            work_dir: Some(&prefix_dir),
            cancel: self.cancel.clone(),
            checkpoint_every: self.checkpoint_every,
            rotations: self.rotations.clone(),
            anatomy: None,
        };
        let prefix_plan = prefix.plan_holding(self.max_binding(), Some(k))?;
        let n_first = prefix_plan.passes.len();
        let mut first = match prefix
            .run_passes(compute, prefix_plan, Some(k), None, &mut |p: Progress| {
                progress(Progress {
                    passes: p.passes + 1,
                    ..p
                })
            })
            .await?
        {
            Outcome::Done(r) => r,
            interrupted => return Ok(interrupted),
        };
        if shard.is_some() {
            self.save(&work_dir.join(CANDIDATES), 0, 0, &first.anchors, None)?;
        }
        let plan = pair_plan(
            &first.anchors,
            &shapes,
            self.block_tokens(),
            self.reserved_bytes(Some(k))?,
            self.on_cpu(),
        )?;
        // The candidates are in the plan now (151 MB for GPT-2 small): free them.
        for a in &mut first.anchors {
            a.candidates = Vec::new();
        }
        let out = self
            .run_passes(compute, plan, None, shard, &mut |p: Progress| {
                progress(Progress {
                    pass: p.pass + n_first,
                    passes: n_first + 1,
                    ..p
                })
            })
            .await?;
        let Outcome::Done(mut results) = out else {
            return Ok(out);
        };
        results.cost += first.cost;
        results.notes.splice(0..0, first.notes.iter().cloned());
        // Heatmap tiles come from the prefix, the only stage with dense tiles.
        for (r, f) in results.anchors.iter_mut().zip(&first.anchors) {
            r.tiles = f.tiles.clone();
        }
        Ok(Outcome::Done(results))
    }

    /// The first stage's tokens and options: all pairs over the sample, no refinement.
    fn first_stage(&self, refine: Refine) -> (TokenSet, AnalysisOptions) {
        let options = AnalysisOptions {
            max_tokens: Some(
                self.options
                    .max_tokens
                    .map_or(refine.prefix_tokens, |m| m.min(refine.prefix_tokens)),
            ),
            refine: None,
            ..self.options.clone()
        };
        (self.sample(refine.prefix_tokens), options)
    }

    /// With refinement, the plan of its first stage (all pairs over the sample); `None`
    /// without.
    pub fn first_stage_plan(&self) -> Result<Option<crate::plan::Plan>, AnalysisError> {
        let Some(refine) = self.options.refine else {
            return Ok(None);
        };
        let (sample, options) = self.first_stage(refine);
        let prefix = Run {
            family: Family {
                models: self.family.models,
                device: self.family.device,
            },
            tokens: &sample,
            options: &options,
            fingerprint: String::new(),
            work_dir: self.work_dir,
            cancel: self.cancel.clone(),
            checkpoint_every: self.checkpoint_every,
            rotations: None,
            anatomy: None,
        };
        prefix
            .plan_holding(self.max_binding(), Some(refine.k))
            .map(Some)
    }

    /// Estimated peak bytes of the candidate stage, before the first stage ran: what
    /// [`pair_plan`]'s plan counts for candidate lists of this run's size (per anchor neuron
    /// and compared stream, `2k` pairs at 16 bytes, and 4 more for a real stream's, which
    /// come back for the one-to-one assignment), with the run's results, the rotations of
    /// every other model's baseline and a block.
    pub fn second_stage_bytes(&self) -> Result<Option<u64>, AnalysisError> {
        let Some(refine) = self.options.refine else {
            return Ok(None);
        };
        let shapes = self.family.shapes()?;
        let kinds = self.options.kinds();
        let mut pairs = 0u64;
        let mut rotated = vec![false; shapes.len()];
        for a in self.anchors() {
            let per_stream = (shapes[a].width() * 2 * refine.k) as u64;
            for b in (0..shapes.len()).filter(|&b| b != a) {
                for &kind in &kinds {
                    pairs += per_stream * if kind == Kind::Real { 20 } else { 16 };
                    rotated[b] |= kind == Kind::Rotated;
                }
            }
        }
        let rotations = rotations_of(&shapes, &rotated);
        let block = activation_bytes(&shapes, kinds.len(), self.block_tokens(), self.on_cpu());
        Ok(Some(
            self.reserved_bytes(Some(refine.k))? + rotations + block + pairs,
        ))
    }

    /// Whether the budget holds every stage: the run's plan, refinement's first stage, the
    /// estimate of its second ([`Run::second_stage_bytes`]) and the weight statistics after
    /// the passes ([`crate::weights::stats_bytes`]); the error of the first that does not.
    pub fn check_budget(&self) -> Result<(), AnalysisError> {
        self.plan()?;
        self.first_stage_plan()?;
        let stats = self.reserved_bytes(None)?
            + self
                .family
                .models
                .iter()
                .map(crate::weights::stats_bytes)
                .max()
                .unwrap_or(0);
        if stats > self.options.memory_budget {
            return Err(AnalysisError::Invalid(format!(
                "a memory budget of {} MiB is less than the {} MiB the weight statistics need \
                 after the passes (model weights and results, and one model's processed \
                 weights and vocabulary projection); raise --gpu-memory",
                self.options.memory_budget >> 20,
                stats.div_ceil(1 << 20)
            )));
        }
        match self.second_stage_bytes()? {
            Some(need) if need > self.options.memory_budget => {
                Err(AnalysisError::Invalid(format!(
                    "a memory budget of {} MiB is less than the {} MiB refinement's second stage \
                 needs (model weights and results, the rotation baseline's matrices, a block \
                 and the candidate pairs); raise --gpu-memory or lower --candidates",
                    self.options.memory_budget >> 20,
                    need >> 20
                )))
            }
            _ => Ok(()),
        }
    }

    /// The first stage's rows: spread evenly over the data (every s-th row), not its
    /// beginning, since data sets ordered by source (documents, books) would otherwise pick
    /// candidates from one kind of text.
    fn sample(&self, prefix_tokens: u64) -> TokenSet {
        let used = blocks(self.tokens, self.options);
        let total: u64 = used.iter().map(|b| b.kept).sum();
        let n_rows = used.last().map_or(0, |b| b.r1);
        let stride = (total / prefix_tokens.max(1)).max(1) as usize;
        let seq = self.tokens.seq_len;
        TokenSet {
            ids: (0..n_rows)
                .step_by(stride)
                .flat_map(|r| self.tokens.ids[r * seq..(r + 1) * seq].iter().copied())
                .collect(),
            n_rows: n_rows.div_ceil(stride),
            seq_len: seq,
            drop_ids: self.tokens.drop_ids.clone(),
        }
    }
}

/// The candidate stage of refinement: one pass whose sparse tiles hold, for every anchor neuron
/// and every stream, the candidate pairs the prefix stage kept in `anchors` (models of
/// `shapes`); anchor rows are split into tiles of at most
/// [`MAX_PAIRS_PER_TILE`] pairs (a fixed size, so every device splits alike and shards merge);
/// `on_host`: the statistics run on the host ([`activation_bytes`]).
pub(super) fn pair_plan(
    anchors: &[AnchorResult],
    shapes: &[Shape],
    block_tokens: usize,
    reserved_bytes: u64,
    on_host: bool,
) -> Result<Plan, AnalysisError> {
    let mut specs = Vec::new();
    for r in anchors {
        if r.candidates.len() != KINDS * r.others.len() {
            return Err(AnalysisError::Invalid(format!(
                "the prefix stage left candidates for {} of {} streams of anchor {}",
                r.candidates.len(),
                KINDS * r.others.len(),
                r.anchor
            )));
        }
        let width = shapes[r.anchor].width();
        for (oi, &b) in r.others.iter().enumerate() {
            let other_width = shapes[b].width();
            for kind in Kind::ALL {
                let c = &r.candidates[KINDS * oi + kind as usize];
                if c.val.is_empty() {
                    // A kind the run does not compare.
                    continue;
                }
                let per_row = 2 * c.k;
                if c.col.len() != width * per_row
                    || c.col.iter().any(|&j| j as usize >= other_width)
                {
                    return Err(AnalysisError::Invalid(format!(
                        "the prefix stage left incomplete candidates for anchor {} and model {b}",
                        r.anchor
                    )));
                }
                let rows_per = (MAX_PAIRS_PER_TILE / per_row.max(1)).clamp(1, width);
                for a_cols in chunks(0, width, width.div_ceil(rows_per)) {
                    let pairs = c.col[a_cols.start * per_row..a_cols.end * per_row].to_vec();
                    specs.push(TileSpec {
                        a_stream: stream(r.anchor, Kind::Real),
                        a_cols,
                        b_stream: stream(b, kind),
                        b_cols: 0..other_width,
                        pairs: Some(Arc::new(pairs)),
                    });
                }
            }
        }
    }
    let mut kinds: Vec<Kind> = specs.iter().map(|t| Kind::of(t.b_stream)).collect();
    kinds.dedup();
    kinds.sort_by_key(|&k| k as usize);
    kinds.dedup();
    let activation_bytes = activation_bytes(shapes, kinds.len(), block_tokens, on_host);
    // The real streams' pair correlations come back for the one-to-one assignment.
    let max_tile_bytes = specs
        .iter()
        .map(|t| {
            t.bytes()
                + if t.assigns(shapes) {
                    4 * t.entries() as u64
                } else {
                    0
                }
        })
        .sum();
    Ok(Plan {
        rotation_bytes: rotation_bytes(shapes, &specs),
        passes: vec![specs],
        activation_bytes,
        max_tile_bytes,
        reserved_bytes,
        reuse: Reuse::Single,
        reuse_bytes: 0,
        holds_rows: false,
    })
}
