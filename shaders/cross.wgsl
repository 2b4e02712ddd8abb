// Centred cross products of one block, merged into a running co-moment tile.
//
// A is the anchor's activations, B another model's (or its rotated baseline), both row-major
// [rows, row_len] at element offsets `a_offset` / `b_offset`. The tile covers A columns
// [a_col, a_col + n_a) and B columns [b_col, b_col + n_b). For every pair (i, j) this adds
//
//     sum_t (a[t,i] - mean_a[i]) (b[t,j] - mean_b[j])  +  delta_a[i] delta_b[j] w_cross
//
// to the compensated pair c[i * n_b + j] = (hi, lo), standing for hi - lo,: Chan's merge of the block's co-moment into
// the running one (w_cross = n_prev * n_block / n_new). Block means and deltas come from
// moments.wgsl. Centring each block first keeps f32 products small even when activations have
// large means; the Kahan pair keeps thousands of block merges from drifting.
//
// A tiled GEMM: each 16x16 workgroup computes a 64x64 output tile, a 4x4 block of adjacent
// rows and columns per thread, staging 16-token slices of A and B in workgroup memory as vec4s.
// The accumulators are four vec4 registers, not an indexed array: an array indexed in loops
// can be placed in (slow) local memory by a GPU compiler, and this kernel is the engine's
// hot loop. Out-of-range rows and columns load zeros, so any shape works.

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

const TILE: u32 = 64u;
const TK: u32 = 16u;

// [TK][16] vec4s: entry k * 16 + u holds tile columns 4u..4u+3 at token k of the slice.
var<workgroup> sa: array<vec4<f32>, 256>;
var<workgroup> sb: array<vec4<f32>, 256>;

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

fn merge_row(i: u32, j0: u32, v: vec4<f32>) {
    merge(i, j0, v.x);
    merge(i, j0 + 1u, v.y);
    merge(i, j0 + 2u, v.z);
    merge(i, j0 + 3u, v.w);
}

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i0 = wid.y * TILE;
    let j0 = wid.x * TILE;
    // This thread's staging slot: token li / 16, columns 4 (li % 16) .. + 3.
    let sk = li / 16u;
    let su = li % 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.rows; k0 += TK) {
        let t = k0 + sk;
        let ci = i0 + 4u * su;
        let cj = j0 + 4u * su;
        sa[li] = vec4<f32>(ld_a(t, ci), ld_a(t, ci + 1u), ld_a(t, ci + 2u), ld_a(t, ci + 3u));
        sb[li] = vec4<f32>(ld_b(t, cj), ld_b(t, cj + 1u), ld_b(t, cj + 2u), ld_b(t, cj + 3u));
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            let av = sa[k * 16u + lid.y];
            let bv = sb[k * 16u + lid.x];
            acc0 += av.x * bv;
            acc1 += av.y * bv;
            acc2 += av.z * bv;
            acc3 += av.w * bv;
        }
        workgroupBarrier();
    }
    let i = i0 + 4u * lid.y;
    let j = j0 + 4u * lid.x;
    merge_row(i, j, acc0);
    merge_row(i + 1u, j, acc1);
    merge_row(i + 2u, j, acc2);
    merge_row(i + 3u, j, acc3);
}
