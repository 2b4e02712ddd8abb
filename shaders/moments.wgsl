// Per-neuron moments of one block of activations, merged into running totals.
//
// Activations are a row-major matrix [rows, row_len] of f32 starting at element `x_offset` of
// `x`; this kernel handles columns [0, n_cols) (one thread per column). For each column it
// computes the block mean with a corrected two-pass sum, the block's centred sum of squares, and
// merges both into the running mean and M2 with Chan et al.'s parallel formula. Running values
// are stored as compensated (Kahan) pairs, so millions of tokens merge without drift.
//
// Outputs per column j:
//   stats[j] = (mean, mean_compensation, m2, m2_compensation)      running, updated in place
//   block[j] = (block_mean, delta = block_mean - previous mean)      read by cross.wgsl
// Blocks are at most MAX_BLOCK_ROWS (4096) rows: long single-workgroup loops are slow to
// schedule and some drivers (lavapipe) drop dispatches that run too long.
// The host passes the merge weights in f64-derived f32: w_mean = n_block / n_new,
// w_m2 = n_prev * n_block / n_new, inv_block = 1 / n_block.

struct Params {
    rows: u32,
    row_len: u32,
    x_offset: u32,
    n_cols: u32,
    inv_block: f32,
    w_mean: f32,
    w_m2: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> block: array<vec2<f32>>;

// Kahan addition of v to the pair (hi, lo); returns the new pair. The value a pair stands for
// is hi - lo (lo holds the negated rounding error).
fn kahan_add(hi: f32, lo: f32, v: f32) -> vec2<f32> {
    let y = v - lo;
    let t = hi + y;
    return vec2<f32>(t, (t - hi) - y);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.n_cols) {
        return;
    }
    var s = 0.0;
    for (var t = 0u; t < p.rows; t++) {
        s += x[p.x_offset + t * p.row_len + j];
    }
    var m = s * p.inv_block;
    // Second pass: the residual sum corrects the mean; the centred sum of squares is M2.
    var r = 0.0;
    var q = 0.0;
    for (var t = 0u; t < p.rows; t++) {
        let d = x[p.x_offset + t * p.row_len + j] - m;
        r += d;
        q += d * d;
    }
    let m2_block = max(q - r * r * p.inv_block, 0.0);
    m = m + r * p.inv_block;

    let old = stats[j];
    let delta = m - (old.x - old.y);
    block[j] = vec2<f32>(m, delta);
    let mean = kahan_add(old.x, old.y, delta * p.w_mean);
    let m2 = kahan_add(old.z, old.w, m2_block + delta * delta * p.w_m2);
    stats[j] = vec4<f32>(mean.x, mean.y, m2.x, m2.y);
}
