// Per-neuron anatomy of the anchor's activations, accumulated block by block in the streaming
// pass (one invocation per neuron column; each owns its column of every output, so no atomics):
//
// - feature sums: for every token feature f active on the current token (or, for the
//   previous-token features, on the previous token), sums[f] += v - shift. This is the sparse
//   GEMM  Fᵀ (X - shift)  of the feature indicators against the activations; with the feature
//   counts it gives each feature's co-moment with the neuron, hence the variance explained
//   (eq. 4 of the paper equals the squared point-biserial correlation). The shift (the
//   neuron's first value) keeps f32 sums away from cancellation; the sums are Kahan (hi, lo)
//   pairs whose value is hi - lo.
// - top-k: the k largest activations and their token indices, sorted descending (ties keep the
//   earlier token; NaN never enters).
// - active: per position bucket, how often the activation is > 0 (GELU(x) > 0 iff x > 0), for
//   the mutual information with position.

struct Params {
    rows: u32,
    row_len: u32,
    col0: u32,
    n_cols: u32,
    k: u32,
    n_pos: u32,
    n_feat: u32,
    vocab: u32,
    // 1 on the pass's first update: the shift is set from row 0.
    first: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// Per row: position bucket, token id, previous token id (0xffffffff: none), global index.
@group(0) @binding(2) var<storage, read> info: array<u32>;
// Feature lists per token id as CSR: offsets of the current-token lists [0, vocab], offsets of
// the previous-token lists [vocab + 1, 2 vocab + 1], then the feature ids the offsets index
// (counted from the start of the buffer).
@group(0) @binding(3) var<storage, read> csr: array<u32>;
// [n_feat * n_cols] (hi, lo) pairs, then [n_cols] shifts.
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;
// [n_cols * k] top values (f32 bits), [n_cols * k] their token indices, [n_pos * n_cols] counts.
@group(0) @binding(5) var<storage, read_write> counts: array<u32>;

const NONE: u32 = 0xffffffffu;

fn add(i: u32, v: f32) {
    let y = v - sums[i + 1u];
    let t = sums[i] + y;
    sums[i + 1u] = (t - sums[i]) - y;
    sums[i] = t;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if (c >= p.n_cols) {
        return;
    }
    let shift_at = p.n_feat * p.n_cols * 2u + c;
    if (p.first == 1u && p.rows > 0u) {
        sums[shift_at] = x[p.col0 + c];
    }
    let shift = sums[shift_at];
    let top = c * p.k;
    let top_idx = p.n_cols * p.k + top;
    let act_at = 2u * p.n_cols * p.k;
    for (var r = 0u; r < p.rows; r = r + 1u) {
        let v = x[r * p.row_len + p.col0 + c];
        let pos = info[4u * r];
        let tok = info[4u * r + 1u];
        let prev = info[4u * r + 2u];
        let index = info[4u * r + 3u];
        if (v > 0.0) {
            counts[act_at + pos * p.n_cols + c] += 1u;
        }
        if (p.k > 0u && v > bitcast<f32>(counts[top + p.k - 1u])) {
            var j = p.k - 1u;
            loop {
                if (j == 0u) {
                    break;
                }
                if (bitcast<f32>(counts[top + j - 1u]) >= v) {
                    break;
                }
                counts[top + j] = counts[top + j - 1u];
                counts[top_idx + j] = counts[top_idx + j - 1u];
                j = j - 1u;
            }
            counts[top + j] = bitcast<u32>(v);
            counts[top_idx + j] = index;
        }
        let d = v - shift;
        if (tok < p.vocab) {
            for (var q = csr[tok]; q < csr[tok + 1u]; q = q + 1u) {
                add((csr[q] * p.n_cols + c) * 2u, d);
            }
        }
        if (prev < p.vocab) {
            let o = p.vocab + 1u;
            for (var q = csr[o + prev]; q < csr[o + prev + 1u]; q = q + 1u) {
                add((csr[q] * p.n_cols + c) * 2u, d);
            }
        }
    }
}
