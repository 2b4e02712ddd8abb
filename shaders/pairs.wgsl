// Centred cross products of one block for a list of column pairs, merged into running
// co-moments: the second stage of candidate refinement, where each anchor neuron keeps only its
// k best (and k worst) candidates per stream instead of a dense tile.
//
// Same arithmetic as cross.wgsl, per pair p = (i, j) (absolute columns of A and B):
//
//     sum_t (a[t,i] - mean_a[i]) (b[t,j] - mean_b[j])  +  delta_a[i] delta_b[j] w_cross
//
// merged into the compensated pair c[p] = (hi, lo) standing for hi - lo. One thread per pair;
// consecutive pairs share their anchor column, so a workgroup reads few distinct A columns.

struct Params {
    rows: u32,
    a_row_len: u32,
    b_row_len: u32,
    n_pairs: u32,
    w_cross: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> a_block: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> b_block: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> pairs: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read_write> c: array<vec2<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = gid.x + gid.y * nwg.x * 64u;
    if (k >= p.n_pairs) {
        return;
    }
    let i = pairs[k].x;
    let j = pairs[k].y;
    let ma = a_block[i].x;
    let mb = b_block[j].x;
    var acc = 0.0;
    for (var t = 0u; t < p.rows; t++) {
        acc += (a[t * p.a_row_len + i] - ma) * (b[t * p.b_row_len + j] - mb);
    }
    let v = acc + a_block[i].y * b_block[j].y * p.w_cross;
    let old = c[k];
    let y = v - old.y;
    let s = old.x + y;
    c[k] = vec2<f32>(s, (s - old.x) - y);
}
