// Pearson correlations of a co-moment tile, reduced per anchor neuron.
//
// For each anchor column i of the tile (one thread per row) and every other column j:
//     corr = C[i, j] / sqrt(M2_a[i] * M2_b[j]),   0 when either neuron has zero variance
// (as the paper's code does for constant neurons). A variance counts as zero when M2 <= 0 or
// the standard deviation is below `rel_zero` times |mean| (below what f32 activations resolve).
// Writes out[i] = (max corr, argmax j as bits, min corr, argmin j as bits); with `write_tile`
// set, also the correlations themselves to `tile` [n_a, n_b] (for heatmaps). Thread t also
// reduces column t of the tile (for t < n_b): cols[t] = (max corr over the anchor rows, its row
// as bits), each other neuron's best anchor neuron (mutual best matches).

struct Params {
    n_a: u32,
    n_b: u32,
    a_col: u32,
    b_col: u32,
    n_total: f32,
    rel_zero: f32,
    write_tile: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> c: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> a_stats: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b_stats: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> tile: array<f32>;
@group(0) @binding(6) var<storage, read_write> cols: array<vec2<f32>>;

// 1/std of a neuron (times 1/sqrt(n) folded out: M2 is used directly), or 0 if constant.
fn inv_scale(s: vec4<f32>) -> f32 {
    let m2 = s.z - s.w;
    let mean = s.x - s.y;
    let floor = p.rel_zero * mean;
    if (m2 <= 0.0 || m2 <= floor * floor * p.n_total) {
        return 0.0;
    }
    return inverseSqrt(m2);
}

// Correlation of tile entry (i, j) given the anchor row's scale.
fn corr_at(i: u32, j: u32, sa: f32) -> f32 {
    let v = c[i * p.n_b + j];
    return clamp((v.x - v.y) * sa * inv_scale(b_stats[p.b_col + j]), -1.0, 1.0);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t < p.n_b) {
        reduce_column(t);
    }
    if (t < p.n_a) {
        reduce_row(t);
    }
}

fn reduce_column(j: u32) {
    var best = -2.0;
    var best_i = 0u;
    for (var i = 0u; i < p.n_a; i++) {
        let corr = corr_at(i, j, inv_scale(a_stats[p.a_col + i]));
        if (corr > best) {
            best = corr;
            best_i = i;
        }
    }
    cols[j] = vec2<f32>(best, bitcast<f32>(best_i));
}

fn reduce_row(i: u32) {
    let sa = inv_scale(a_stats[p.a_col + i]);
    var best = -2.0;
    var best_j = 0u;
    var worst = 2.0;
    var worst_j = 0u;
    for (var j = 0u; j < p.n_b; j++) {
        let corr = corr_at(i, j, sa);
        if (corr > best) {
            best = corr;
            best_j = j;
        }
        if (corr < worst) {
            worst = corr;
            worst_j = j;
        }
        if (p.write_tile != 0u) {
            tile[i * p.n_b + j] = corr;
        }
    }
    out[i] = vec4<f32>(best, bitcast<f32>(best_j), worst, bitcast<f32>(worst_j));
}
