// Per-neuron histogram of pre-activations on the paper's fixed edges (linspace(-10, 15, 256)),
// counted like numpy.searchsorted(edges, x, side="left"): bin b holds edges[b-1] < x <= edges[b],
// bin 0 everything at or below -10 and bin 256 everything above 15 (257 bins). One invocation
// per (token, neuron); counts are atomic u32 per (neuron, bin).

struct Params {
    rows: u32,
    row_len: u32,
    // Offset of the first element, in f32s, inside `x`.
    x_offset: u32,
    pad: u32,
}

const EDGES: u32 = 256u;
const BINS: u32 = 257u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> counts: array<atomic<u32>>;
// The 256 edges, uploaded from the host so that every comparison uses the same f32 values as
// the CPU path (computing them here could round an edge differently, e.g. through FMA).
@group(0) @binding(3) var<storage, read> edges: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let col = id.x;
    let row = id.y;
    if (col >= p.row_len || row >= p.rows) {
        return;
    }
    let v = x[p.x_offset + row * p.row_len + col];
    var bin: u32;
    // NaN (tested on the bits: compilers may fold `v != v` away): numpy sorts it last.
    if ((bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u) {
        bin = EDGES;
    } else {
        // The first edge >= v (searchsorted, side="left").
        var lo = 0u;
        var hi = EDGES;
        loop {
            if (lo >= hi) {
                break;
            }
            let mid = (lo + hi) / 2u;
            if (edges[mid] < v) {
                lo = mid + 1u;
            } else {
                hi = mid;
            }
        }
        bin = lo;
    }
    atomicAdd(&counts[col * BINS + bin], 1u);
}
