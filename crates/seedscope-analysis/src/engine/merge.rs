//! Combining the shards of a sharded run: per pass, the shards' sums are merged exactly
//! (Chan's formula in f64) and reduced on the CPU as a whole run's pass would be.

use std::path::PathBuf;

use super::pass::{anchor_widths, counted_anchors};
use super::refine::pair_plan;
use super::{CANDIDATES, Run, finished, pass_file};
use crate::accum::{Accumulate, merge_states};
use crate::compute::{Compute, Cpu};
use crate::hist::Histograms;
use crate::results::Results;
use crate::{AnalysisError, checkpoint};

impl Run<'_> {
    /// Combine the shards a [`Run::run_shard`] of this same analysis wrote into `dirs` (each a
    /// shard's work directory, checkpoints written under `fingerprints[i]`) into the result of
    /// the whole run: per pass, the shards' sums are merged exactly (Chan's formula in f64)
    /// and reduced on the CPU as a whole run's pass would be.
    pub fn merge(
        &self,
        dirs: &[PathBuf],
        fingerprints: &[String],
        max_binding: u64,
    ) -> Result<Results, AnalysisError> {
        let shapes = self.family.shapes()?;
        if dirs.is_empty() || dirs.len() != fingerprints.len() {
            return Err(AnalysisError::Invalid("no shards to merge".into()));
        }
        let mut first_tiles = None;
        let plan = if self.options.refine.is_some() {
            let mut lists = Vec::new();
            for (d, f) in dirs.iter().zip(fingerprints) {
                let path = d.join(CANDIDATES);
                let ck = checkpoint::load(&path, f)?.ok_or_else(|| {
                    AnalysisError::Invalid(format!("{} is missing", path.display()))
                })?;
                lists.push(ck.results);
            }
            if lists.iter().any(|l| {
                l.iter()
                    .zip(&lists[0])
                    .any(|(a, b)| a.candidates != b.candidates)
            }) {
                return Err(AnalysisError::Invalid(
                    "the shards' prefix stages chose different candidates (different \
                     hardware or backend?): run every shard on the same kind of device"
                        .into(),
                ));
            }
            let anchors = lists.swap_remove(0);
            first_tiles = Some(anchors.iter().map(|a| a.tiles.clone()).collect::<Vec<_>>());
            pair_plan(
                &anchors,
                &shapes,
                self.block_tokens(),
                self.reserved_bytes(self.options.refine.map(|r| r.k))?,
                self.on_cpu(),
            )?
        } else {
            self.plan_for(max_binding)?
        };
        let mut results = self.initial_results(&shapes);
        let widths = self.family.stream_widths()?;
        let mut n_tokens = 0;
        for (pass_idx, specs) in plan.passes.iter().enumerate() {
            let missing = |path: &std::path::Path| {
                AnalysisError::Invalid(format!(
                    "{} is missing: the shard did not finish pass {pass_idx}",
                    path.display()
                ))
            };
            // Each shard's sums lent from its mapped file (the first is copied as it merges).
            let mut files = Vec::new();
            for (d, f) in dirs.iter().zip(fingerprints) {
                let path = d.join(pass_file(pass_idx));
                files.push(checkpoint::load(&path, f)?.ok_or_else(|| missing(&path))?);
            }
            let mut states = Vec::new();
            for ck in &files {
                let path = &ck.path;
                states.push(ck.accumulators()?.ok_or_else(|| missing(path))?);
            }
            let merged = merge_states(specs, &widths, states)?;
            n_tokens = merged.count;
            let mut acc = Cpu.accumulator(specs.clone(), &widths, None)?;
            acc.restore(&merged)?;
            let counted = counted_anchors(&results, &acc.streams());
            let counted_widths = anchor_widths(&results, &counted, &widths);
            let mut hists = Cpu.hists(&counted_widths)?;
            if !counted.is_empty() {
                hists.restore(&merged.hists)?;
            }
            let anatomy = match &self.anatomy {
                Some(spec) if !counted.is_empty() => {
                    let mut a = Cpu.anatomies(spec, &counted_widths)?;
                    a.restore(&merged.anatomy)?;
                    Some(a)
                }
                _ => None,
            };
            // CPU statistics: the future is ready at once.
            pollster::block_on(self.finish_pass(
                &acc,
                &mut results,
                None,
                &counted,
                &hists,
                anatomy.as_ref(),
            ))?;
        }
        if let Some(tiles) = first_tiles {
            for (r, t) in results.iter_mut().zip(tiles) {
                r.tiles = t;
            }
        }
        Ok(*finished(n_tokens, shapes, results, plan))
    }
}
