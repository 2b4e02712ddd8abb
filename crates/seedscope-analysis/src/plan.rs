//! What to accumulate, pass by pass: co-moment tiles (anchor columns × another stream's
//! columns, all pairs or a list of candidate pairs) grouped into passes under a memory budget
//! and the device's buffer limits.

use std::ops::Range;
use std::sync::Arc;

use crate::AnalysisError;
use crate::accum::MAX_PRODUCT;

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

/// A model's MLP shape: its layers and neurons per layer. A neuron's column in the model's
/// activations is `layer * d_mlp + neuron`. Models compared with each other may differ in
/// both (they share a tokenizer, not a shape).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Shape {
    /// Layers.
    pub n_layers: usize,
    /// Neurons per layer.
    pub d_mlp: usize,
}

impl Shape {
    /// Neurons over all layers.
    pub fn width(&self) -> usize {
        self.n_layers * self.d_mlp
    }

    /// The columns of layer `l`.
    pub fn layer(&self, l: usize) -> Range<usize> {
        l * self.d_mlp..(l + 1) * self.d_mlp
    }

    /// The layer of column `col`.
    pub fn layer_of(&self, col: usize) -> usize {
        col / self.d_mlp.max(1)
    }

    /// `(layer, neuron)` of column `col`.
    pub fn split(&self, col: usize) -> (usize, usize) {
        let d = self.d_mlp.max(1);
        (col / d, col % d)
    }

    /// The layer of a model of shape `other` at the same relative depth as this model's layer
    /// `l` (the same layer when the depths agree): the layer whose neurons `l`'s are assigned
    /// to one-to-one.
    pub fn paired_layer(&self, l: usize, other: &Shape) -> usize {
        l * other.n_layers / self.n_layers.max(1)
    }
}

/// Models' shapes in words: "12 layers x 3072 neurons" when they share one, else each model's
/// ("a: 12 layers x 3072 neurons, b: 24 layers x 4096 neurons").
pub fn shapes_in_words(names: &[String], shapes: &[Shape]) -> String {
    let words = |s: &Shape| format!("{} layers x {} neurons", s.n_layers, s.d_mlp);
    match shapes.first() {
        Some(first) if shapes.iter().all(|s| s == first) => words(first),
        _ => names
            .iter()
            .zip(shapes)
            .map(|(n, s)| format!("{n}: {}", words(s)))
            .collect::<Vec<_>>()
            .join(", "),
    }
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

    /// The covariance of a stream's columns with themselves: what the rotation baseline of
    /// those columns is derived from ([`derives_baseline`]). It compares no anchor with
    /// anything (an anchor never meets its own stream), so no result reads it directly.
    pub fn covariance(stream: usize, cols: Range<usize>) -> Self {
        Self::dense(stream, cols.clone(), stream, cols)
    }

    /// Whether this is a [`TileSpec::covariance`] tile.
    pub fn is_covariance(&self) -> bool {
        self.a_stream == self.b_stream && self.a_cols == self.b_cols && self.pairs.is_none()
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
    /// host at the end of its pass): a real stream's block of paired layers
    /// ([`Shape::paired_layer`]), or candidate pairs. `shapes`: every model's.
    pub fn assigns(&self, shapes: &[Shape]) -> bool {
        let (a, b) = (
            shapes[model_of(self.a_stream)],
            shapes[model_of(self.b_stream)],
        );
        Kind::of(self.b_stream) == Kind::Real
            && !self.is_covariance()
            && (self.pairs.is_some()
                || a.paired_layer(a.layer_of(self.a_cols.start), &b)
                    == b.layer_of(self.b_cols.start))
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
    /// Bytes of the rotations the forwards draw for the baselines the passes stream: a
    /// `[d_mlp, d_mlp]` f32 matrix per layer of every model some tile reads rotated (36 MiB a
    /// layer at GPT-2 small, 1.77 GiB for four seeds). Held while the models run.
    pub rotation_bytes: u64,
    /// Where the passes after the first find the activations the first computed.
    pub reuse: Reuse,
    /// Bytes of those activations (every stream a later pass reads, over every kept token).
    pub reuse_bytes: u64,
    /// Each pass holds its streams' rows and multiplies every tile once at its end, instead
    /// of summing co-moments block by block (the CPU path's refined first stage, where the
    /// rows take less memory than the sums: [`PlanInput::may_hold_rows`]).
    pub holds_rows: bool,
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
    /// Estimated peak memory of the run: the weights and results it holds throughout, the
    /// baseline's rotations, one block's activations, the largest pass's tiles and, in
    /// memory, the reused activations.
    pub fn peak_bytes(&self) -> u64 {
        let reused = if self.reuse == Reuse::Memory {
            self.reuse_bytes
        } else {
            0
        };
        self.reserved_bytes
            + self.rotation_bytes
            + self.activation_bytes
            + self.max_tile_bytes
            + reused
    }
}

/// Shape of the family and the limits to respect.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// Every model's shape.
    pub shapes: Vec<Shape>,
    /// Anchor models (model 0 alone, or all with `--all-anchors`).
    pub anchors: Vec<usize>,
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
    /// (candidates, saved tiles): one tile at a time, so the largest one's 4 bytes per pair
    /// are held back from the budget once.
    pub read_back: bool,
    /// The largest single buffer the device binds.
    pub max_binding: u64,
    /// Whether passes may hold their rows rather than sums ([`Plan::holds_rows`]): a stage on
    /// the CPU that only screens (refinement's first). They do where the rows of every stream
    /// take less memory than every tile's sums.
    pub may_hold_rows: bool,
    /// Whether the statistics run on the host, which centres a copy of each block's streams
    /// ([`activation_bytes`]).
    pub on_host: bool,
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
    let activation_bytes = activation_bytes(
        &input.shapes,
        input.kinds.len(),
        input.block_tokens,
        input.on_host,
    );
    // What the correlations get: the budget less the weights and results and a block.
    let left = input
        .budget
        .saturating_sub(input.reserved + activation_bytes);
    let too_small = |tile_budget: u64, rotations: u64| {
        AnalysisError::Invalid(format!(
            "a memory budget of {} MiB leaves {} MiB for correlations after {} MiB of model \
             weights and results, {} MiB of the rotation baseline's matrices and {} MiB of \
             activations per block: not enough for one row of a {}-neuron layer; raise \
             --gpu-memory or lower --batch-size",
            input.budget >> 20,
            tile_budget >> 20,
            input.reserved >> 20,
            rotations >> 20,
            activation_bytes >> 20,
            input.shapes.iter().map(|s| s.d_mlp).max().unwrap_or(0)
        ))
    };
    // Passes that hold their rows, where they take less memory than the sums and fit (they
    // stream every baseline).
    if input.may_hold_rows
        && let Some(tiles) = self::tiles(input, u64::MAX, false)
    {
        let sums: u64 = tiles.iter().map(|t| cost(input, t)).sum();
        let rotations = rotation_bytes(&input.shapes, &tiles);
        if held_bytes(input, &tiles) < sums
            && let Some(plan) = plan_rows(
                input,
                tiles,
                (activation_bytes, left.saturating_sub(rotations)),
            )
        {
            return Ok(Plan {
                rotation_bytes: rotations,
                ..plan
            });
        }
    }
    // The rotations of the baselines the passes stream leave less for the tiles, and less
    // room streams more baselines: set aside what the last plan streamed until it is enough
    // (it only grows, to every model's at most).
    let tiles = |budget: u64| self::tiles(input, budget, true);
    let sums = |p: &[TileSpec]| {
        p.iter().map(|t| cost(input, t)).sum::<u64>() + pass_product_bytes(input, p)
    };
    let mut rotations = 0;
    loop {
        let tile_budget = left.saturating_sub(rotations);
        let all = tiles(tile_budget).ok_or_else(|| too_small(tile_budget, rotations))?;
        let mut plan = packed(
            input,
            (activation_bytes, tile_budget),
            |budget| tiles(budget).map(|t| pack(input, &t, budget)),
            sums,
        )
        .ok_or_else(|| too_small(tile_budget, rotations))?;
        let streamed = rotation_bytes(&input.shapes, plan.passes.iter().flatten());
        if streamed <= rotations {
            plan.max_tile_bytes += read_back_bytes(input, all.iter());
            plan.rotation_bytes = streamed;
            return Ok(plan);
        }
        rotations = streamed;
    }
}

/// Bytes of the rotations for the streamed baselines of `tiles`: a `[d_mlp, d_mlp]` f32
/// matrix per layer of every model some tile reads rotated ([`Plan::rotation_bytes`]).
pub(crate) fn rotation_bytes<'a>(
    shapes: &[Shape],
    tiles: impl IntoIterator<Item = &'a TileSpec>,
) -> u64 {
    let mut rotated = vec![false; shapes.len()];
    for t in tiles {
        if Kind::of(t.b_stream) == Kind::Rotated {
            rotated[model_of(t.b_stream)] = true;
        }
    }
    rotations_of(shapes, &rotated)
}

/// Bytes of the rotations of the models `rotated` marks: a `[d_mlp, d_mlp]` f32 matrix per
/// layer of each.
pub(crate) fn rotations_of(shapes: &[Shape], rotated: &[bool]) -> u64 {
    shapes
        .iter()
        .zip(rotated)
        .filter(|(_, r)| **r)
        .map(|(s, _)| (s.n_layers * s.d_mlp * s.d_mlp * 4) as u64)
        .sum()
}

/// The plan of the passes `pack` makes under a budget (none where nothing fits), `pass_bytes`
/// what one of them holds. One pass, or several where the first keeps the activations the
/// others read: in memory where they take at most half of `budget` and the passes still pack
/// into the rest, else on disk.
fn packed(
    input: &PlanInput,
    (activation_bytes, budget): (u64, u64),
    pack: impl Fn(u64) -> Option<Vec<Vec<TileSpec>>>,
    pass_bytes: impl Fn(&[TileSpec]) -> u64,
) -> Option<Plan> {
    let passes = pack(budget)?;
    let reuse_bytes = reused_bytes(input, &passes);
    let in_memory = (passes.len() > 1 && reuse_bytes <= budget / 2)
        .then(|| pack(budget - reuse_bytes))
        .flatten();
    let (passes, reuse) = match in_memory {
        _ if passes.len() <= 1 => (passes, Reuse::Single),
        Some(rest) => (rest, Reuse::Memory),
        None => (passes, Reuse::Disk),
    };
    Some(Plan {
        max_tile_bytes: passes.iter().map(|p| pass_bytes(p)).max().unwrap_or(0),
        passes,
        activation_bytes,
        reserved_bytes: input.reserved,
        rotation_bytes: 0,
        reuse,
        reuse_bytes,
        holds_rows: false,
    })
}

/// Bytes of the rows of the streams `tiles` read, over every token of a pass.
fn held_bytes<'a>(input: &PlanInput, tiles: impl IntoIterator<Item = &'a TileSpec>) -> u64 {
    let streams = KINDS * input.shapes.len();
    let mut read = vec![false; streams];
    for t in tiles {
        read[t.a_stream] = true;
        read[t.b_stream] = true;
    }
    let widths: usize = (0..streams)
        .filter(|&s| read[s])
        .map(|s| input.shapes[model_of(s)].width())
        .sum();
    input.tokens * 4 * widths as u64
}

/// The plan of passes that hold their rows ([`Plan::holds_rows`]): `tiles` (dense, one anchor
/// layer by one other layer) taken in order, a pass holding the rows of every stream its tiles
/// read, one tile's product and, coming back, its correlations; activations reused as
/// [`packed`] says. None where two streams' rows do not fit (sums of a few tiles at a time
/// still do).
fn plan_rows(
    input: &PlanInput,
    tiles: Vec<TileSpec>,
    (activation_bytes, budget): (u64, u64),
) -> Option<Plan> {
    // The product a tile is multiplied into, and its correlations coming back.
    let largest = tiles
        .iter()
        .map(|t| 4 * t.entries() as u64)
        .max()
        .unwrap_or(0);
    let per_pass = largest * if input.read_back { 2 } else { 1 };
    let pack = |budget: u64| -> Option<Vec<Vec<TileSpec>>> {
        let mut passes: Vec<Vec<TileSpec>> = Vec::new();
        for t in &tiles {
            let fits =
                |p: &Vec<TileSpec>| held_bytes(input, p.iter().chain([t])) + per_pass <= budget;
            match passes.last_mut() {
                Some(p) if fits(p) => p.push(t.clone()),
                _ if fits(&Vec::new()) => passes.push(vec![t.clone()]),
                _ => return None,
            }
        }
        Some(passes)
    };
    let plan = packed(input, (activation_bytes, budget), pack, |p| {
        held_bytes(input, p) + per_pass
    })?;
    Some(Plan {
        holds_rows: true,
        ..plan
    })
}

/// Estimated bytes of one block's activations: every model's streams of `kinds` kinds, twice
/// where the statistics run on the host (`on_host`: the CPU accumulator centres a copy of
/// each stream it reads, side by side for its GEMMs or in chunks of columns for its pairs),
/// and, for the widest model, forward intermediates about the size of its activations twice.
pub fn activation_bytes(shapes: &[Shape], kinds: usize, block_tokens: usize, on_host: bool) -> u64 {
    let copies = if on_host { 2 } else { 1 };
    let streams: usize = shapes.iter().map(|s| s.width() * kinds).sum();
    let widest = shapes.iter().map(Shape::width).max().unwrap_or(0);
    (block_tokens * (copies * streams + 2 * widest) * 4) as u64
}

/// Kept tokens per neuron of a layer from which a model's rotation baseline is derived rather
/// than streamed ([`derives_baseline`]).
pub const DERIVE_TOKENS_PER_NEURON: u64 = 2;

/// Whether the rotation baseline of model `b` is derived from its real tiles instead of
/// streamed: the run compares with the baseline, the data has at least
/// [`DERIVE_TOKENS_PER_NEURON`] tokens per neuron of one of `b`'s layers, and one layer's
/// covariance fits the device's largest binding and half of `tile_budget` (a pass holds it
/// next to its real tiles).
///
/// Streamed, every block of each layer is mixed by its rotation `R` and the mixed columns get
/// co-moment tiles of their own. But the co-moments of anchor columns with the mixed layer are
/// the real ones times `Rᵀ` (`C Rᵀ`, exactly, centring included), and the mixed columns'
/// sums of squares are the diagonal of `R Σ Rᵀ`, `Σ` the layer's own co-moments (a
/// [`TileSpec::covariance`] tile). Derived, a pass accumulates `Σ` next to the real tiles
/// and ends with one `[anchor columns, d] × [d, d]` product per real tile (f32, its rows'
/// extremes settled in f64) and the layer's scales (f64): its cost no longer grows with the
/// tokens. Per other layer, in units of d³ flops with `a·d` anchor columns and `τ·d` tokens,
/// streaming costs `2τa + 2τ` and deriving about `2.5a + 1.1τ + 3.6` (the product and its
/// settling, the covariance, the scales, at the rates measured on two CPU cores): deriving wins
/// from τ = 2.1 at one anchor layer, 1.75 at two, 1.35 at twelve. Two tokens per neuron is
/// near the crossover for narrow anchors and leaves the band from 1.35 to 2 to streaming at
/// twelve layers. On a GPU the streamed work runs on the device and the derivation on the host,
/// so there the crossover lies higher (unmeasured: no GPU has run it).
pub fn derives_baseline(input: &PlanInput, b: usize, tile_budget: u64) -> bool {
    let d = input.shapes[b].d_mlp as u64;
    let covariance = d * d * 8;
    input.kinds.contains(&Kind::Rotated)
        && input.tokens >= DERIVE_TOKENS_PER_NEURON * d
        && covariance <= input.max_binding
        && covariance <= tile_budget / 2
}

/// Every tile of the input, each at most `tile_budget` bytes and the device's largest binding
/// (none if one row of a layer does not fit), with `derive`, none for the rotated streams
/// whose baseline is derived ([`derives_baseline`]): stream by stream of the other model (a
/// pass then reads few streams), and within one, other layer by other layer (the tiles a
/// derived baseline reads from one covariance follow each other).
fn tiles(input: &PlanInput, tile_budget: u64, derive: bool) -> Option<Vec<TileSpec>> {
    let cap = input.max_binding.min(tile_budget);
    // Same-layer tiles come back for the one-to-one assignment; on the host a tile is also
    // multiplied into an f32 product ([`product_bytes`]).
    let per_pair = if input.on_host { 16 } else { 12 };
    let mut tiles = Vec::new();
    for &a in &input.anchors {
        let sa = input.shapes[a];
        for b in (0..input.shapes.len()).filter(|&b| b != a) {
            let sb = input.shapes[b];
            let (da, db) = (sa.d_mlp, sb.d_mlp);
            let derived = derive && derives_baseline(input, b, tile_budget);
            // A derived baseline's pass holds the layer's covariance next to its tiles.
            let room = if derived {
                input.max_binding.min(tile_budget - (db * db * 8) as u64)
            } else {
                cap
            };
            // Split the anchor side until one anchor chunk × one other layer fits.
            let a_split = (1..=da).find(|&k| (da.div_ceil(k) * db * per_pair) as u64 <= room)?;
            for &kind in &input.kinds {
                if kind == Kind::Rotated && derived {
                    continue;
                }
                for lb in 0..sb.n_layers {
                    for la in 0..sa.n_layers {
                        for a_cols in chunks(la * da, da, a_split) {
                            tiles.push(TileSpec::dense(
                                stream(a, Kind::Real),
                                a_cols,
                                stream(b, kind),
                                sb.layer(lb),
                            ));
                        }
                    }
                }
            }
        }
    }
    Some(tiles)
}

/// A tile's bytes while its pass runs and ends: its accumulators and, for a same-layer tile,
/// its correlations, held in the layer's block until its one-to-one assignment.
fn cost(input: &PlanInput, t: &TileSpec) -> u64 {
    let held = if t.assigns(&input.shapes) {
        4 * t.entries() as u64
    } else {
        0
    };
    t.bytes() + held
}

/// Bytes of the correlations of the largest of `tiles` that comes back to the host with them
/// ([`PlanInput::read_back`]): a pass's tiles come back one at a time, each into the buffer of
/// the one before.
fn read_back_bytes<'a>(input: &PlanInput, tiles: impl IntoIterator<Item = &'a TileSpec>) -> u64 {
    if !input.read_back {
        return 0;
    }
    tiles
        .into_iter()
        .filter(|t| t.pairs.is_none() && !t.is_covariance())
        .map(|t| 4 * t.entries() as u64)
        .max()
        .unwrap_or(0)
}

/// Tiles taken in order into passes of at most `budget` bytes, less the one tile's
/// correlations that come back at a time. A real tile of a model whose baseline is derived
/// ([`derives_baseline`]) brings its layer's covariance into its pass, once per pass.
fn pack(input: &PlanInput, tiles: &[TileSpec], budget: u64) -> Vec<Vec<TileSpec>> {
    let derived: Vec<bool> = (0..input.shapes.len())
        .map(|b| derives_baseline(input, b, budget))
        .collect();
    let budget = budget.saturating_sub(read_back_bytes(input, tiles));
    let mut passes: Vec<Vec<TileSpec>> = Vec::new();
    // The current pass's tile bytes, its dense entries and its largest dense tile's.
    let (mut used, mut dense, mut largest) = (u64::MAX, 0, 0);
    for t in tiles {
        let covariance = (t.pairs.is_none()
            && Kind::of(t.b_stream) == Kind::Real
            && derived[model_of(t.b_stream)])
        .then(|| TileSpec::covariance(t.b_stream, t.b_cols.clone()));
        let missing = |p: &Vec<TileSpec>| covariance.as_ref().filter(|c| !p.contains(c)).cloned();
        let extra = match passes.last() {
            Some(p) => missing(p),
            None => covariance.clone(),
        };
        let new: Vec<&TileSpec> = extra.iter().chain([t]).collect();
        let bytes: u64 = new.iter().map(|t| cost(input, t)).sum();
        let (d, l) = new.iter().fold((dense, largest), |(d, l), t| {
            (d + dense_entries(t), l.max(dense_entries(t)))
        });
        if used
            .saturating_add(bytes)
            .saturating_add(product_bytes(input, d, l))
            > budget
        {
            passes.push(Vec::new());
            (used, dense, largest) = (0, 0, 0);
        }
        let Some(p) = passes.last_mut() else {
            continue;
        };
        for t in missing(p).into_iter().chain([t.clone()]) {
            used += cost(input, &t);
            dense += dense_entries(&t);
            largest = largest.max(dense_entries(&t));
            p.push(t);
        }
    }
    passes
}

/// Entries of a dense tile (a sparse one is not multiplied as one product).
fn dense_entries(t: &TileSpec) -> u64 {
    if t.pairs.is_none() {
        t.entries() as u64
    } else {
        0
    }
}

/// Bytes of the f32 product a pass's dense tiles are multiplied into on the host, kept from
/// one block to the next: tiles side by side up to [`MAX_PRODUCT`] values, or the largest
/// alone (`dense` entries in all, the largest tile `largest`). None on a device.
fn product_bytes(input: &PlanInput, dense: u64, largest: u64) -> u64 {
    if input.on_host {
        4 * dense.min(largest.max(MAX_PRODUCT as u64))
    } else {
        0
    }
}

/// [`product_bytes`] of the pass `tiles`.
fn pass_product_bytes(input: &PlanInput, tiles: &[TileSpec]) -> u64 {
    let dense = tiles.iter().map(dense_entries).sum();
    let largest = tiles.iter().map(dense_entries).max().unwrap_or(0);
    product_bytes(input, dense, largest)
}

/// Bytes of the activations later passes read: every stream some pass reads (a permuted
/// stream reads its model's real activations), and one more stream (pre-activations) per
/// anchor whose histograms a later pass counts, over every token.
fn reused_bytes(input: &PlanInput, passes: &[Vec<TileSpec>]) -> u64 {
    let streams = KINDS * input.shapes.len();
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
    let late: usize = input
        .anchors
        .iter()
        .filter(|&&a| !first.get(stream(a, Kind::Real)).copied().unwrap_or(false))
        .map(|&a| input.shapes[a].width())
        .sum();
    let read: usize = (0..streams)
        .filter(|&s| read[s])
        .map(|s| input.shapes[model_of(s)].width())
        .sum();
    input.tokens * ((read + late) * 4) as u64
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
            shapes: vec![Shape { n_layers, d_mlp }; 2],
            anchors: vec![0],
            // One 512-token row, as `analyze` picks for GPT-2 shapes under 4 GiB.
            block_tokens: 512,
            tokens: 2048,
            budget,
            reserved: 0,
            read_back: false,
            kinds: vec![Kind::Real, Kind::Rotated],
            max_binding: 128 << 20,
            may_hold_rows: false,
            on_host: false,
        }
    }

    #[test]
    fn every_pair_is_covered_once_within_budget() {
        // 2,048 tokens: the baseline of the 512- and 100-neuron layers is derived, that of
        // the wider ones streamed. On the host a pass also holds its tiles' f32 product.
        // (The host centres a copy of each block: the smallest case needs more room there.)
        let cases = [
            (2, 512, [1u64 << 30; 2], true),
            (12, 3072, [4 << 30; 2], false),
            (24, 4096, [4 << 30; 2], false),
            (3, 100, [1 << 22, 1 << 23], true),
        ];
        for ((layers, d, budgets, derived), on_host) in
            cases.into_iter().flat_map(|c| [(c, false), (c, true)])
        {
            let budget = budgets[usize::from(on_host)];
            let inp = PlanInput {
                on_host,
                ..input(layers, d, budget)
            };
            let p = plan(&inp).expect("plan");
            assert!(p.peak_bytes() <= budget, "{} over {budget}", p.peak_bytes());
            assert_eq!(derives_baseline(&inp, 1, budget), derived);
            let mut seen = std::collections::HashMap::new();
            for pass in &p.passes {
                let product = pass_product_bytes(&inp, pass);
                assert_eq!(product > 0, on_host);
                let bytes = pass.iter().map(|t| cost(&inp, t)).sum::<u64>() + product;
                assert!(bytes + p.activation_bytes <= budget, "pass over budget");
                assert!(bytes <= p.max_tile_bytes);
                for t in pass {
                    assert!(t.bytes() <= 128 << 20);
                    if t.is_covariance() {
                        assert!(derived, "a covariance only where the baseline is derived");
                        assert!(!t.assigns(&inp.shapes));
                        continue;
                    }
                    // A derived baseline's layer has its covariance in the pass.
                    let covariance = TileSpec::covariance(t.b_stream, t.b_cols.clone());
                    assert_eq!(pass.contains(&covariance), derived);
                    assert!(pass.iter().filter(|c| **c == covariance).count() <= 1);
                    for i in t.a_cols.clone() {
                        *seen.entry((t.b_stream, i, t.b_cols.start)).or_insert(0) += 1;
                    }
                }
            }
            // Every anchor neuron meets every layer of each streamed kind exactly once.
            let kinds = if derived { 1 } else { 2 };
            assert_eq!(seen.len(), kinds * layers * d * layers);
            assert!(seen.values().all(|&c| c == 1));
        }
    }

    /// Correlations read back at a pass's end (refinement's first stage) are held one tile at
    /// a time: the budget keeps room for the largest tile's once, not for every tile's.
    #[test]
    fn correlations_come_back_one_tile_at_a_time() {
        let budget = 4u64 << 30;
        let mut inp = input(12, 3072, budget);
        inp.read_back = true;
        let p = plan(&inp).expect("plan");
        let largest = p
            .passes
            .iter()
            .flatten()
            .filter(|t| !t.is_covariance())
            .map(|t| 4 * t.entries() as u64)
            .max()
            .expect("tiles");
        let sums: Vec<u64> = p
            .passes
            .iter()
            .map(|pass| pass.iter().map(|t| cost(&inp, t)).sum())
            .collect();
        for &bytes in &sums {
            assert!(
                bytes + largest + p.activation_bytes <= budget,
                "pass over budget"
            );
        }
        assert_eq!(
            p.max_tile_bytes,
            sums.iter().max().expect("passes") + largest
        );
        // Charged per tile, the first pass's pairs (8 bytes of accumulators and 4 of
        // correlations each) would not have fitted.
        let pairs: u64 = p.passes[0].iter().map(|t| t.entries() as u64).sum();
        assert!(12 * pairs + p.activation_bytes + p.rotation_bytes > budget);
        // Without read-back, nothing is held back.
        inp.read_back = false;
        let q = plan(&inp).expect("plan");
        assert!(q.passes.len() <= p.passes.len());
    }

    #[test]
    fn a_derived_baseline_needs_the_tokens_and_the_room() {
        let mut inp = input(2, 512, 1 << 30);
        assert!(derives_baseline(&inp, 1, 1 << 30));
        // Fewer tokens than twice the layer's width: streamed.
        inp.tokens = 1023;
        assert!(!derives_baseline(&inp, 1, 1 << 30));
        inp.tokens = 1024;
        // A covariance over half the tiles' budget, or over one binding: streamed.
        assert!(!derives_baseline(&inp, 1, 2 * 512 * 512 * 8 - 1));
        inp.max_binding = 512 * 512 * 8 - 1;
        assert!(!derives_baseline(&inp, 1, 1 << 30));
        // No baseline asked for.
        inp.max_binding = 128 << 20;
        inp.kinds = vec![Kind::Real];
        assert!(!derives_baseline(&inp, 1, 1 << 30));
        let p = plan(&inp).expect("plan");
        assert!(p.passes.iter().flatten().all(|t| !t.is_covariance()));
    }

    #[test]
    fn models_of_different_shapes_meet_every_layer_of_each_other() {
        let (small, wide) = (
            Shape {
                n_layers: 3,
                d_mlp: 128,
            },
            Shape {
                n_layers: 4,
                d_mlp: 192,
            },
        );
        // 100 tokens stream the baselines, 2,048 derive them.
        for (tokens, kinds) in [(100, 2), (2048, 1)] {
            let p = plan(&PlanInput {
                shapes: vec![small, wide],
                anchors: vec![0, 1],
                block_tokens: 32,
                tokens,
                ..input(1, 1, 1 << 22)
            })
            .expect("plan");
            assert!(p.passes.len() > 1, "a small budget splits the plan");
            let mut seen = std::collections::HashMap::new();
            for t in p.passes.iter().flatten() {
                let (a, b) = (model_of(t.a_stream), model_of(t.b_stream));
                let (sa, sb) = ([small, wide][a], [small, wide][b]);
                assert_eq!(t.b_cols.len(), sb.d_mlp, "a whole layer of the other model");
                assert!(t.a_cols.end <= sa.width());
                let (la, lb) = (sa.layer_of(t.a_cols.start), sb.layer_of(t.b_cols.start));
                assert_eq!(
                    t.assigns(&[small, wide]),
                    Kind::of(t.b_stream) == Kind::Real
                        && !t.is_covariance()
                        && sa.paired_layer(la, &sb) == lb
                );
                if !t.is_covariance() {
                    for i in t.a_cols.clone() {
                        *seen.entry((t.b_stream, i, lb)).or_insert(0) += 1;
                    }
                }
            }
            // Each anchor neuron meets every layer of the other model's streams once.
            assert_eq!(seen.len(), kinds * (small.width() * 4 + wide.width() * 3));
            assert!(seen.values().all(|&c| c == 1));
        }
        // Layers pair at the same relative depth, in both directions.
        assert_eq!(
            (0..3)
                .map(|l| small.paired_layer(l, &wide))
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(
            (0..4)
                .map(|l| wide.paired_layer(l, &small))
                .collect::<Vec<_>>(),
            [0, 0, 1, 2]
        );
    }

    /// A screening stage on the CPU over few tokens (GPT-2 small's five seeds, 2,048 sample
    /// tokens, 6 GiB less 2.5 GB of weights, 1.77 GiB of rotations and a block) holds its
    /// rows: every tile once, whole streams a pass, far fewer passes than sums would take,
    /// each within the budget with one tile's product and correlations. Over many tokens the
    /// rows would outweigh the sums, and under a budget below two streams' rows they do not
    /// fit: there it sums.
    #[test]
    fn a_screening_stage_over_few_tokens_holds_its_rows() {
        let gpt2 = PlanInput {
            shapes: vec![
                Shape {
                    n_layers: 12,
                    d_mlp: 3072
                };
                5
            ],
            block_tokens: 256,
            reserved: 2_500 << 20,
            read_back: true,
            max_binding: u64::MAX,
            may_hold_rows: true,
            on_host: true,
            ..input(12, 3072, 6 << 30)
        };
        let held = plan(&gpt2).expect("plan");
        let sums = plan(&PlanInput {
            may_hold_rows: false,
            ..gpt2.clone()
        })
        .expect("plan");
        assert!(held.holds_rows && !sums.holds_rows);
        assert!(
            held.passes.len() * 10 < sums.passes.len(),
            "{} passes holding rows, {} summing",
            held.passes.len(),
            sums.passes.len()
        );
        assert!(held.peak_bytes() <= gpt2.budget, "{}", held.peak_bytes());
        let tile = 3072 * 3072 * 4;
        let mut seen = std::collections::HashSet::new();
        for pass in &held.passes {
            assert!(held_bytes(&gpt2, pass) + 2 * tile <= held.max_tile_bytes);
            for t in pass {
                assert!(t.pairs.is_none() && t.a_cols.len() == 3072 && t.b_cols.len() == 3072);
                assert!(seen.insert((t.b_stream, t.a_cols.start, t.b_cols.start)));
            }
        }
        // Four other seeds, real and rotated, 12 × 12 layer pairs each.
        assert_eq!(seen.len(), 8 * 144);
        let many = plan(&PlanInput {
            tokens: 1 << 20,
            ..gpt2.clone()
        })
        .expect("plan");
        assert!(!many.holds_rows, "a million tokens' rows outweigh the sums");
        // Room for one and a half streams' rows (288 MiB each) past the weights, the rotations
        // (four seeds' twelve 3,072 x 3,072 f32 matrices) and a block.
        assert_eq!(held.rotation_bytes, 4 * 12 * 3072 * 3072 * 4);
        let stream_rows = 2048 * 12 * 3072 * 4;
        let tight = plan(&PlanInput {
            budget: gpt2.reserved
                + held.rotation_bytes
                + held.activation_bytes
                + 3 * stream_rows / 2,
            ..gpt2
        })
        .expect("sums fit where two streams' rows do not");
        assert!(!tight.holds_rows);
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
