// cross.wgsl on cooperative matrices (tensor cores through wgpu): the same centred cross
// products of one block, merged into the same running co-moment tile with the same Chan
// correction and Kahan pairs (cross_common.wgsl, which the host places after the `enable`
// directives below). Only the block's GEMM differs: its inputs are the block-centred activations rounded to f16 (the paper itself stored
// activations in fp16), multiplied by the adapter's matrix units with f32 accumulation. A
// product of two f16 values is exact in f32, so the rounding of the centred inputs (relative
// 2^-11) and the f32 sums over one block are all that differ from cross.wgsl; each block is
// merged into the compensated totals exactly as there.
//
// Fragments are S x S (16: NVIDIA tensor cores, AMD WMMA through VK_KHR_cooperative_matrix;
// 8: Apple SIMD-group matrices through Metal). The host compiles this text for the size the
// adapter lists with f16 inputs and an f32 accumulator, replacing `16x16` in the three aliases
// and the value of S (`seedscope_gpu::CrossKernel`). A workgroup computes a T x T output tile,
// T = 4 S, as a 4 x 4 grid of accumulator fragments held in registers, over slices of TK = 2 S
// tokens staged in workgroup memory: every invocation centres and converts its share of the
// slice, then the subgroup multiplies. The workgroup has WG invocations, the adapter's largest
// subgroup (set by the host), so it is one subgroup wherever subgroups have one size (NVIDIA,
// Apple). Where a workgroup holds several subgroups, each computes the same fragments and
// stores the same values: the result is the same, only the work is repeated. At the end the
// fragments go to workgroup memory and every invocation merges its share of the tile.
// Out-of-range rows and columns load zeros, so any shape works. Workgroup memory:
// 2 TK T f16 + T^2 f32, 24 KiB at S = 16.

enable f16;
enable wgpu_cooperative_matrix;

const S: u32 = 16u;
alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias FragC = coop_mat16x16<f32, C>;

const T: u32 = 4u * S;
const TK: u32 = 2u * S;
const SLICE: u32 = TK * T;
const OUT: u32 = T * T;
// The largest finite f16: a centred activation beyond it is clamped, not turned into inf.
const F16_MAX: f32 = 65504.0;

override WG: u32 = 32u;

// A slice [TK][T] of centred f16 activations: entry k * T + u is tile column u at token k.
var<workgroup> sa: array<f16, SLICE>;
var<workgroup> sb: array<f16, SLICE>;
// The block's co-moments, row-major [T][T].
var<workgroup> sc: array<f32, OUT>;

// A centred activation as the matrix units take it: clamped to f16's finite range, rounded
// (twin::coop_input on the host).
fn to_f16(v: f32) -> f16 {
    return f16(clamp(v, -F16_MAX, F16_MAX));
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i0 = wid.y * T;
    let j0 = wid.x * T;
    let stride = T;
    // Accumulator fragment cRC covers tile rows R S .. R S + S - 1 and columns C S ...
    var c00 = FragC();
    var c01 = FragC();
    var c02 = FragC();
    var c03 = FragC();
    var c10 = FragC();
    var c11 = FragC();
    var c12 = FragC();
    var c13 = FragC();
    var c20 = FragC();
    var c21 = FragC();
    var c22 = FragC();
    var c23 = FragC();
    var c30 = FragC();
    var c31 = FragC();
    var c32 = FragC();
    var c33 = FragC();
    for (var t0 = 0u; t0 < p.rows; t0 += TK) {
        for (var e = li; e < SLICE; e += WG) {
            let k = e / T;
            let u = e % T;
            sa[e] = to_f16(ld_a(t0 + k, i0 + u));
            sb[e] = to_f16(ld_b(t0 + k, j0 + u));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk += S) {
            // The anchor's fragment R is the slice's transpose: rows are tile columns R S ..,
            // columns are tokens kk .., so it loads column-major. The other's loads row-major.
            let base = kk * T;
            let a0 = coopLoad<FragA>(&sa[base], stride);
            let a1 = coopLoad<FragA>(&sa[base + S], stride);
            let a2 = coopLoad<FragA>(&sa[base + 2u * S], stride);
            let a3 = coopLoad<FragA>(&sa[base + 3u * S], stride);
            let b0 = coopLoadT<FragB>(&sb[base], stride);
            let b1 = coopLoadT<FragB>(&sb[base + S], stride);
            let b2 = coopLoadT<FragB>(&sb[base + 2u * S], stride);
            let b3 = coopLoadT<FragB>(&sb[base + 3u * S], stride);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c02 = coopMultiplyAdd(a0, b2, c02);
            c03 = coopMultiplyAdd(a0, b3, c03);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
            c12 = coopMultiplyAdd(a1, b2, c12);
            c13 = coopMultiplyAdd(a1, b3, c13);
            c20 = coopMultiplyAdd(a2, b0, c20);
            c21 = coopMultiplyAdd(a2, b1, c21);
            c22 = coopMultiplyAdd(a2, b2, c22);
            c23 = coopMultiplyAdd(a2, b3, c23);
            c30 = coopMultiplyAdd(a3, b0, c30);
            c31 = coopMultiplyAdd(a3, b1, c31);
            c32 = coopMultiplyAdd(a3, b2, c32);
            c33 = coopMultiplyAdd(a3, b3, c33);
        }
        workgroupBarrier();
    }
    // Fragment RC to rows R S .., columns C S .. of the row-major tile.
    let row = S * T;
    coopStoreT(c00, &sc[0u], stride);
    coopStoreT(c01, &sc[S], stride);
    coopStoreT(c02, &sc[2u * S], stride);
    coopStoreT(c03, &sc[3u * S], stride);
    coopStoreT(c10, &sc[row], stride);
    coopStoreT(c11, &sc[row + S], stride);
    coopStoreT(c12, &sc[row + 2u * S], stride);
    coopStoreT(c13, &sc[row + 3u * S], stride);
    coopStoreT(c20, &sc[2u * row], stride);
    coopStoreT(c21, &sc[2u * row + S], stride);
    coopStoreT(c22, &sc[2u * row + 2u * S], stride);
    coopStoreT(c23, &sc[2u * row + 3u * S], stride);
    coopStoreT(c30, &sc[3u * row], stride);
    coopStoreT(c31, &sc[3u * row + S], stride);
    coopStoreT(c32, &sc[3u * row + 2u * S], stride);
    coopStoreT(c33, &sc[3u * row + 3u * S], stride);
    workgroupBarrier();
    for (var e = li; e < OUT; e += WG) {
        merge(i0 + e / T, j0 + e % T, sc[e]);
    }
}
