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
// A tiled GEMM: each 16x16 workgroup computes a 64x64 output tile, 4x4 per thread, staging
// 16-token slices of A and B in workgroup memory. Out-of-range rows and columns load zeros, so
// any shape works.

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

var<workgroup> sa: array<f32, 1024>; // [TK][TILE]
var<workgroup> sb: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i0 = wid.y * TILE;
    let j0 = wid.x * TILE;
    var acc: array<f32, 16>;
    for (var q = 0u; q < 16u; q++) {
        acc[q] = 0.0;
    }
    for (var k0 = 0u; k0 < p.rows; k0 += TK) {
        for (var q = 0u; q < 4u; q++) {
            let e = li + q * 256u;
            let k = e / TILE;
            let m = e % TILE;
            let t = k0 + k;
            var va = 0.0;
            let ci = i0 + m;
            if (t < p.rows && ci < p.n_a) {
                let col = p.a_col + ci;
                va = a[p.a_offset + t * p.a_row_len + col] - a_block[col].x;
            }
            sa[e] = va;
            var vb = 0.0;
            let cj = j0 + m;
            if (t < p.rows && cj < p.n_b) {
                let col = p.b_col + cj;
                vb = b[p.b_offset + t * p.b_row_len + col] - b_block[col].x;
            }
            sb[e] = vb;
        }
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            var ra: array<f32, 4>;
            var rb: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                ra[r] = sa[k * TILE + lid.y + 16u * r];
                rb[r] = sb[k * TILE + lid.x + 16u * r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var s = 0u; s < 4u; s++) {
                    acc[r * 4u + s] += ra[r] * rb[s];
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + lid.y + 16u * r;
        if (i >= p.n_a) {
            continue;
        }
        let da = a_block[p.a_col + i].y;
        for (var s = 0u; s < 4u; s++) {
            let j = j0 + lid.x + 16u * s;
            if (j >= p.n_b) {
                continue;
            }
            let v = acc[r * 4u + s] + da * b_block[p.b_col + j].y * p.w_cross;
            let idx = i * p.n_b + j;
            let old = c[idx];
            let y = v - old.y;
            let t = old.x + y;
            c[idx] = vec2<f32>(t, (t - old.x) - y);
        }
    }
}
