//! What to accumulate, pass by pass: co-moment tiles (anchor columns × another stream's
//! columns, all pairs or a list of candidate pairs) grouped into passes under a memory budget
//! and the device's buffer limits.

use std::ops::Range;
use std::sync::Arc;

use crate::AnalysisError;

/// What a stream holds for its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The activations.
    Real,
    /// The rotation baseline: each layer's activations times a random rotation.
    Rotated,
    /// The permutation null: the activations in a permuted token order (each block's tokens
    /// rotated, [`crate::engine::null_order`]), made from the real activations of the block.
    Permuted,
}

impl Kind {
    /// Every kind, in stream order.
    pub const ALL: [Kind; KINDS] = [Kind::Real, Kind::Rotated, Kind::Permuted];

    /// The kind of stream `s`.
    pub fn of(s: usize) -> Kind {
        Self::ALL[s % KINDS]
    }
}

/// Streams per model: [`Kind::ALL`].
pub const KINDS: usize = 3;

/// Stream index of model `model`'s stream of kind `kind`.
pub fn stream(model: usize, kind: Kind) -> usize {
    KINDS * model + kind as usize
}

/// The model of stream `s`.
pub fn model_of(s: usize) -> usize {
    s / KINDS
}

/// One co-moment tile to accumulate: anchor model columns × another stream's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileSpec {
    /// Stream of the anchor (its real activations).
    pub a_stream: usize,
    /// Anchor columns (`layer * d_mlp + neuron`).
    pub a_cols: Range<usize>,
    /// The other stream (a model's activations, or its rotated baseline).
    pub b_stream: usize,
    /// Its columns.
    pub b_cols: Range<usize>,
    /// Candidate refinement's sparse form: for each anchor column in order, the same number
    /// of other-stream columns (absolute, within `b_cols`); only these pairs are accumulated.
    pub pairs: Option<Arc<Vec<u32>>>,
}

impl TileSpec {
    /// A dense tile.
    pub fn dense(
        a_stream: usize,
        a_cols: Range<usize>,
        b_stream: usize,
        b_cols: Range<usize>,
    ) -> Self {
        Self {
            a_stream,
            a_cols,
            b_stream,
            b_cols,
            pairs: None,
        }
    }

    /// Entries accumulated: every pair of the dense tile, or the candidate pairs.
    pub fn entries(&self) -> usize {
        match &self.pairs {
            Some(p) => p.len(),
            None => self.a_cols.len() * self.b_cols.len(),
        }
    }

    /// Accumulator bytes of the tile (8 per entry on both paths; a pair list adds 8 more).
    pub fn bytes(&self) -> u64 {
        let per = if self.pairs.is_some() { 16 } else { 8 };
        (self.entries() * per) as u64
    }

    /// Whether the tile's correlations feed the one-to-one assignment (and so come back to the
    /// host at the end of its pass): a real stream's same-layer block, or candidate pairs.
    pub fn assigns(&self, d_mlp: usize) -> bool {
        Kind::of(self.b_stream) == Kind::Real
            && (self.pairs.is_some() || self.a_cols.start / d_mlp == self.b_cols.start / d_mlp)
    }

    /// The `(anchor column, other column)` pairs of a sparse tile.
    pub fn pair_list(&self) -> Vec<[u32; 2]> {
        let Some(p) = &self.pairs else {
            return Vec::new();
        };
        let k = p.len() / self.a_cols.len().max(1);
        p.iter()
            .enumerate()
            .map(|(e, &j)| [(self.a_cols.start + e / k.max(1)) as u32, j])
            .collect()
    }
}

/// What to accumulate, pass by pass: every pass streams the whole token set once.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The tiles of each pass.
    pub passes: Vec<Vec<TileSpec>>,
    /// Estimated bytes of one block's activations (all streams of a pass, with the model's
    /// intermediates).
    pub activation_bytes: u64,
    /// The most accumulator bytes any pass holds.
    pub max_tile_bytes: u64,
    /// Bytes held for the whole run: the models' weights and the per-anchor results.
    pub reserved_bytes: u64,
    /// Where the passes after the first find the activations the first computed.
    pub reuse: Reuse,
    /// Bytes of those activations (every stream a later pass reads, over every kept token).
    pub reuse_bytes: u64,
}

/// How a plan of several passes runs each model once per block: the first pass keeps the
/// activations (real, rotated, and the pre-activations a later pass counts) and the others read
/// them instead of running the models again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reuse {
    /// One pass: nothing to reuse.
    #[default]
    Single,
    /// Kept in memory on the models' device, within the budget (the tiles get the rest).
    Memory,
    /// Too large for the budget: written to the work directory and read back by each later
    /// pass; without a work directory (the browser) each pass runs the models again.
    Disk,
}

impl Plan {
    /// Estimated peak memory of the run: the weights and results it holds throughout, one
    /// block's activations, the largest pass's tiles and, in memory, the reused activations.
    pub fn peak_bytes(&self) -> u64 {
        let reused = if self.reuse == Reuse::Memory {
            self.reuse_bytes
        } else {
            0
        };
        self.reserved_bytes + self.activation_bytes + self.max_tile_bytes + reused
    }
}

/// Shape of the family and the limits to respect.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// Models in the family.
    pub n_models: usize,
    /// Anchor models (model 0 alone, or all with `--all-anchors`).
    pub anchors: Vec<usize>,
    /// Layers per model.
    pub n_layers: usize,
    /// Neurons per layer.
    pub d_mlp: usize,
    /// Kept tokens per block, at most.
    pub block_tokens: usize,
    /// Kept tokens a pass streams (all blocks).
    pub tokens: u64,
    /// Memory budget in bytes: everything below and the tiles.
    pub budget: u64,
    /// Bytes held for the whole run (the models' weights, the per-anchor results).
    pub reserved: u64,
    /// The kinds of other-model streams compared with the anchors: real and rotated, and with
    /// `--null permutation` the permuted.
    pub kinds: Vec<Kind>,
    /// Whether a pass's dense tiles come back to the host as correlations at its end
    /// (candidates, saved tiles): 4 more bytes per pair while they are reduced.
    pub read_back: bool,
    /// The largest single buffer the device binds.
    pub max_binding: u64,
}

/// Split `[0, n)` into `k` nearly equal chunks.
pub(crate) fn chunks(start: usize, n: usize, k: usize) -> Vec<std::ops::Range<usize>> {
    let k = k.max(1);
    (0..k)
        .map(|i| start + n * i / k..start + n * (i + 1) / k)
        .filter(|r| !r.is_empty())
        .collect()
}

/// Tiles are one anchor layer × one other layer, split further where one tile would exceed the
/// device's largest binding; passes take tiles in order until the budget (less what the run
/// holds throughout and the block's activations) is full. When that makes several passes, the
/// activations are reused ([`Reuse`]): in memory if they take at most half of what the tiles
/// would have (the tiles are then packed into the rest), else on disk.
pub fn plan(input: &PlanInput) -> Result<Plan, AnalysisError> {
    let width = input.n_layers * input.d_mlp;
    // Each pass may need every model and its rotation: forward intermediates are about the
    // size of the activations again.
    let activation_bytes = (input.block_tokens * width * 4) as u64
        * (input.kinds.len() as u64 * input.n_models as u64 + 2);
    let tile_budget = input
        .budget
        .saturating_sub(input.reserved + activation_bytes);
    let too_small = |left: u64| {
        AnalysisError::Invalid(format!(
            "a memory budget of {} MiB leaves {} MiB for correlations after {} MiB of model \
             weights and results and {} MiB of activations per block: not enough for one row \
             of a {}-neuron layer; raise --gpu-memory or lower --batch-size",
            input.budget >> 20,
            left >> 20,
            input.reserved >> 20,
            activation_bytes >> 20,
            input.d_mlp
        ))
    };
    let tiles = tiles(input, tile_budget).ok_or_else(|| too_small(tile_budget))?;
    let passes = pack(input, &tiles, tile_budget);
    let reuse_bytes = reused_bytes(input, &passes);
    let (passes, reuse) = if passes.len() <= 1 {
        (passes, Reuse::Single)
    } else if reuse_bytes <= tile_budget / 2 {
        let rest = tile_budget - reuse_bytes;
        let tiles = self::tiles(input, rest).ok_or_else(|| too_small(rest))?;
        (pack(input, &tiles, rest), Reuse::Memory)
    } else {
        (passes, Reuse::Disk)
    };
    let max_tile_bytes = passes
        .iter()
        .map(|p| p.iter().map(|t| cost(input, t)).sum())
        .max()
        .unwrap_or(0);
    Ok(Plan {
        passes,
        activation_bytes,
        max_tile_bytes,
        reserved_bytes: input.reserved,
        reuse,
        reuse_bytes,
    })
}

/// Every tile of the input, each at most `tile_budget` bytes and the device's largest binding
/// (none if one row of a layer does not fit).
fn tiles(input: &PlanInput, tile_budget: u64) -> Option<Vec<TileSpec>> {
    let d = input.d_mlp;
    let cap = input.max_binding.min(tile_budget);
    // Split the anchor side until one anchor chunk × one other layer fits `cap`.
    let mut a_split = 1;
    // Same-layer tiles come back for the one-to-one assignment.
    let per_pair = 12;
    while a_split <= d && (d.div_ceil(a_split) * d * per_pair) as u64 > cap {
        a_split += 1;
    }
    if a_split > d {
        return None;
    }
    let mut tiles = Vec::new();
    for &a in &input.anchors {
        for b in (0..input.n_models).filter(|&b| b != a) {
            for &kind in &input.kinds {
                for la in 0..input.n_layers {
                    for a_cols in chunks(la * d, d, a_split) {
                        for lb in 0..input.n_layers {
                            tiles.push(TileSpec::dense(
                                stream(a, Kind::Real),
                                a_cols.clone(),
                                stream(b, kind),
                                lb * d..(lb + 1) * d,
                            ));
                        }
                    }
                }
            }
        }
    }
    Some(tiles)
}

/// A tile's bytes while its pass runs and ends: its accumulators and, read back, its
/// correlations.
fn cost(input: &PlanInput, t: &TileSpec) -> u64 {
    let read_back = if (input.read_back && t.pairs.is_none()) || t.assigns(input.d_mlp) {
        4 * t.entries() as u64
    } else {
        0
    };
    t.bytes() + read_back
}

/// Tiles taken in order into passes of at most `budget` bytes.
fn pack(input: &PlanInput, tiles: &[TileSpec], budget: u64) -> Vec<Vec<TileSpec>> {
    let mut passes: Vec<Vec<TileSpec>> = Vec::new();
    let mut used = u64::MAX;
    for t in tiles {
        let bytes = cost(input, t);
        if used.saturating_add(bytes) > budget {
            passes.push(Vec::new());
            used = 0;
        }
        used += bytes;
        if let Some(p) = passes.last_mut() {
            p.push(t.clone());
        }
    }
    passes
}

/// Bytes of the activations later passes read: every stream some pass reads (a permuted
/// stream reads its model's real activations), and one more stream (pre-activations) per
/// anchor whose histograms a later pass counts, over every token.
fn reused_bytes(input: &PlanInput, passes: &[Vec<TileSpec>]) -> u64 {
    let streams = KINDS * input.n_models;
    let mut read = vec![false; streams];
    for t in passes.iter().flatten() {
        for s in [t.a_stream, t.b_stream] {
            match Kind::of(s) {
                Kind::Permuted => read[stream(model_of(s), Kind::Real)] = true,
                _ => read[s] = true,
            }
        }
    }
    let first: Vec<bool> = passes
        .first()
        .map(|p| crate::accum::used_streams(p, streams))
        .unwrap_or_default();
    let late = input
        .anchors
        .iter()
        .filter(|&&a| !first.get(stream(a, Kind::Real)).copied().unwrap_or(false))
        .count();
    let n = read.iter().filter(|&&r| r).count() + late;
    input.tokens * (input.n_layers * input.d_mlp * 4 * n) as u64
}

/// Parse a size such as `4GiB`, `512MiB`, `2G`, `1000000` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4GiB, 512MiB)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("`{s}`: unknown unit (use KiB, MiB or GiB)")),
    };
    Ok((value * scale) as u64)
}

/// Pairs per sparse tile at most: 32 MiB of totals and 32 MiB of pair list, under WebGPU's
/// default 128 MiB binding.
pub const MAX_PAIRS_PER_TILE: usize = 1 << 22;

#[cfg(test)]
mod tests {
    use super::*;

    fn input(n_layers: usize, d_mlp: usize, budget: u64) -> PlanInput {
        PlanInput {
            n_models: 2,
            anchors: vec![0],
            n_layers,
            d_mlp,
            // One 512-token row, as `analyze` picks for GPT-2 shapes under 4 GiB.
            block_tokens: 512,
            tokens: 2048,
            budget,
            reserved: 0,
            read_back: false,
            kinds: vec![Kind::Real, Kind::Rotated],
            max_binding: 128 << 20,
        }
    }

    #[test]
    fn every_pair_is_covered_once_within_budget() {
        for (layers, d, budget) in [
            (2, 512, 1u64 << 30),
            (12, 3072, 4 << 30),
            (24, 4096, 4 << 30),
            (3, 100, 1 << 22),
        ] {
            let p = plan(&input(layers, d, budget)).expect("plan");
            let mut seen = std::collections::HashMap::new();
            for pass in &p.passes {
                let bytes: u64 = pass.iter().map(TileSpec::bytes).sum();
                assert!(bytes + p.activation_bytes <= budget, "pass over budget");
                for t in pass {
                    assert!(t.bytes() <= 128 << 20);
                    for i in t.a_cols.clone() {
                        *seen.entry((t.b_stream, i, t.b_cols.start)).or_insert(0) += 1;
                    }
                }
            }
            // Every anchor neuron meets every layer of both streams exactly once.
            assert_eq!(seen.len(), 2 * layers * d * layers);
            assert!(seen.values().all(|&c| c == 1));
        }
    }

    #[test]
    fn a_budget_below_the_activations_is_an_error() {
        let e = plan(&input(24, 4096, 100 << 20)).expect_err("too small");
        assert!(e.to_string().contains("--gpu-memory"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }
}
