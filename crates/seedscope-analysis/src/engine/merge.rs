//! Combining the shards of a sharded run: per pass, the shards' sums are merged exactly
//! (Chan's formula in f64) and reduced on the CPU as a whole run's pass would be.

use std::path::PathBuf;

use super::pass::{anchor_widths, counted_anchors};
use super::refine::pair_plan;
use super::{CANDIDATES, Run, finished, pass_file};
use crate::accum::{Accumulate, CpuAccumulator, merge_state};
use crate::anatomy::Anatomies;
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
            // Each shard's candidates (151 MB for GPT-2 small) read in turn, against the first's.
            let candidates = |(d, f): (&PathBuf, &String)| {
                let path = d.join(CANDIDATES);
                checkpoint::load(&path, f)?
                    .map(|ck| ck.results)
                    .ok_or_else(|| AnalysisError::Invalid(format!("{} is missing", path.display())))
            };
            let anchors = candidates((&dirs[0], &fingerprints[0]))?;
            for shard in dirs.iter().zip(fingerprints).skip(1) {
                let other = candidates(shard)?;
                if other.len() != anchors.len()
                    || other
                        .iter()
                        .zip(&anchors)
                        .any(|(a, b)| a.candidates != b.candidates)
                {
                    return Err(AnalysisError::Invalid(
                        "the shards' prefix stages chose different candidates (different \
                         hardware or backend?): run every shard on the same kind of device"
                            .into(),
                    ));
                }
            }
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
            // Each shard's sums lent from its mapped file, one shard at a time: the first's
            // are copied as the second merges into them.
            let load = |d: &PathBuf, f: &String| {
                let path = d.join(pass_file(pass_idx));
                checkpoint::load(&path, f)?.ok_or_else(|| missing(&path))
            };
            let first = load(&dirs[0], &fingerprints[0])?;
            let mut merged = first.accumulators()?.ok_or_else(|| missing(&first.path))?;
            for (d, f) in dirs.iter().zip(fingerprints).skip(1) {
                let ck = load(d, f)?;
                let state = ck.accumulators()?.ok_or_else(|| missing(&ck.path))?;
                merge_state(specs, &widths, &mut merged, &state)?;
            }
            n_tokens = merged.count;
            let (saved_hists, saved_anatomy) = (
                std::mem::take(&mut merged.hists),
                std::mem::take(&mut merged.anatomy),
            );
            // The merged sums become the accumulator's own: one copy of the pass's sums.
            let acc = CpuAccumulator::from_saved(specs.clone(), &widths, merged)?;
            let counted = counted_anchors(&results, &acc.streams());
            let counted_widths = anchor_widths(&results, &counted, &widths);
            let mut hists = Cpu.hists(&counted_widths)?;
            if !counted.is_empty() {
                hists.restore(&saved_hists)?;
            }
            // So does the merged anatomy.
            let anatomy = match &self.anatomy {
                Some(spec) if !counted.is_empty() => {
                    Some(Anatomies::cpu_from(spec, &counted_widths, saved_anatomy)?)
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
