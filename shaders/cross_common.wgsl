// What cross.wgsl and cross_coop.wgsl share, the part of the co-moment update around the
// block's product: the parameters and bindings (the same for both kernels, so one dispatch
// serves either), the centred loads and the merge of a product into the running totals.
// WGSL has no includes: the host (`seedscope_gpu::CrossKernel::source`) places this text after
// a kernel's `enable` directives and before the kernel.
//
// A is the anchor's activations, B another model's (or its rotated baseline), both row-major
// [rows, row_len] at element offsets `a_offset` / `b_offset`. The tile covers A columns
// [a_col, a_col + n_a) and B columns [b_col, b_col + n_b). For every pair (i, j) a kernel adds
//
//     sum_t (a[t,i] - mean_a[i]) (b[t,j] - mean_b[j])  +  delta_a[i] delta_b[j] w_cross
//
// to the compensated pair c[i * n_b + j] = (hi, lo), standing for hi - lo: Chan's merge of the
// block's co-moment into the running one (w_cross = n_prev * n_block / n_new). Block means and
// deltas come from moments.wgsl. Centring each block first keeps f32 products small even when
// activations have large means; the Kahan pair keeps thousands of block merges from drifting.

struct Params {
    rows: u32,
    a_row_len: u32,
    a_offset: u32,
    a_col: u32,
    n_a: u32,
    b_row_len: u32,
    b_offset: u32,
    b_col: u32,
    n_b: u32,
    w_cross: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> a_block: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> b_block: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> c: array<vec2<f32>>;

// One block-centred activation of A (row t, tile column ci), zero outside the block or tile.
fn ld_a(t: u32, ci: u32) -> f32 {
    if (t >= p.rows || ci >= p.n_a) {
        return 0.0;
    }
    let col = p.a_col + ci;
    return a[p.a_offset + t * p.a_row_len + col] - a_block[col].x;
}

fn ld_b(t: u32, cj: u32) -> f32 {
    if (t >= p.rows || cj >= p.n_b) {
        return 0.0;
    }
    let col = p.b_col + cj;
    return b[p.b_offset + t * p.b_row_len + col] - b_block[col].x;
}

// Merge v into the compensated pair at (i, j), if it lies in the tile.
fn merge(i: u32, j: u32, v: f32) {
    if (i >= p.n_a || j >= p.n_b) {
        return;
    }
    let w = v + a_block[p.a_col + i].y * b_block[p.b_col + j].y * p.w_cross;
    let idx = i * p.n_b + j;
    let old = c[idx];
    let y = w - old.y;
    let t = old.x + y;
    c[idx] = vec2<f32>(t, (t - old.x) - y);
}
