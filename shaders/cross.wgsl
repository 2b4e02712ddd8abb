// The co-moment update's block product in f32 (see cross_common.wgsl, which the host places
// before this text, for the update it belongs to and the parameters).
//
// A tiled GEMM: each 16x16 workgroup computes a 128x128 output tile, an 8x8 register tile per
// thread: rows 4 ty .. 4 ty + 3 and 64 + 4 ty .. 64 + 4 ty + 3, columns likewise with tx (two
// strided halves, so the threads of a row of the workgroup read adjacent vec4s of workgroup
// memory). Per token of a slice a thread reads four vec4s from workgroup memory for 64
// multiply-adds (the 4x4 tile of earlier versions read two for 16, which bound it by
// workgroup-memory bandwidth). Slices of 8 tokens are double-buffered: the next slice is
// loaded from global memory into registers while this one is multiplied, then stored in the
// other buffer, one barrier per slice. The accumulators are sixteen vec4 registers, not an
// indexed array: an array indexed in loops can be placed in (slow) local memory by a GPU
// compiler, and this kernel is the engine's hot loop. Out-of-range rows and columns load
// zeros, so any shape works. Workgroup memory: 16 KiB, WebGPU's guaranteed minimum.

const TILE: u32 = 128u;
const TK: u32 = 8u;
// vec4s per token of a slice (TILE / 4) and per buffer (TK * TILE / 4).
const ROW: u32 = 32u;
const BUF: u32 = 256u;

// Two buffers of [TK][ROW] vec4s each: entry buf * BUF + k * ROW + u holds tile columns
// 4u .. 4u + 3 at token k of the slice.
var<workgroup> sa: array<vec4<f32>, 512>;
var<workgroup> sb: array<vec4<f32>, 512>;

// Four adjacent tile columns 4u .. 4u + 3 at token t.
fn ld_a4(t: u32, u: u32) -> vec4<f32> {
    let ci = 4u * u;
    return vec4<f32>(ld_a(t, ci), ld_a(t, ci + 1u), ld_a(t, ci + 2u), ld_a(t, ci + 3u));
}

fn ld_b4(t: u32, u: u32) -> vec4<f32> {
    let cj = 4u * u;
    return vec4<f32>(ld_b(t, cj), ld_b(t, cj + 1u), ld_b(t, cj + 2u), ld_b(t, cj + 3u));
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
    // This thread's staging slot: token li / ROW of a slice, vec4 column li % ROW.
    let sk = li / ROW;
    let su = li % ROW;
    let slot = sk * ROW + su;
    let busy = i0 + 4u * lid.y < p.n_a && j0 + 4u * lid.x < p.n_b;
    // Accumulators: acc_RH holds row (lo rows 4 ty + R, hi rows 64 + 4 ty + R - 4) by the
    // column half H (l: 4 tx .. 4 tx + 3, h: 64 + 4 tx ..).
    var acc0l = vec4<f32>(0.0);
    var acc0h = vec4<f32>(0.0);
    var acc1l = vec4<f32>(0.0);
    var acc1h = vec4<f32>(0.0);
    var acc2l = vec4<f32>(0.0);
    var acc2h = vec4<f32>(0.0);
    var acc3l = vec4<f32>(0.0);
    var acc3h = vec4<f32>(0.0);
    var acc4l = vec4<f32>(0.0);
    var acc4h = vec4<f32>(0.0);
    var acc5l = vec4<f32>(0.0);
    var acc5h = vec4<f32>(0.0);
    var acc6l = vec4<f32>(0.0);
    var acc6h = vec4<f32>(0.0);
    var acc7l = vec4<f32>(0.0);
    var acc7h = vec4<f32>(0.0);
    let slices = (p.rows + TK - 1u) / TK;
    // The first slice, then one barrier per slice.
    sa[slot] = ld_a4(sk, su + wid.y * ROW);
    sb[slot] = ld_b4(sk, su + wid.x * ROW);
    workgroupBarrier();
    for (var s = 0u; s < slices; s++) {
        let cur = (s & 1u) * BUF;
        let more = s + 1u < slices;
        var na = vec4<f32>(0.0);
        var nb = vec4<f32>(0.0);
        if (more) {
            let t = (s + 1u) * TK + sk;
            na = ld_a4(t, su + wid.y * ROW);
            nb = ld_b4(t, su + wid.x * ROW);
        }
        // An invocation whose rows or columns all lie past the tile's edge only stages data
        // (no barrier inside, so skipping is allowed): edge tiles, and most of a workgroup on
        // a tile narrower than 128.
        for (var k = 0u; k < select(0u, TK, busy); k++) {
            let base = cur + k * ROW;
            let al = sa[base + lid.y];
            let ah = sa[base + 16u + lid.y];
            let bl = sb[base + lid.x];
            let bh = sb[base + 16u + lid.x];
            acc0l += al.x * bl;
            acc0h += al.x * bh;
            acc1l += al.y * bl;
            acc1h += al.y * bh;
            acc2l += al.z * bl;
            acc2h += al.z * bh;
            acc3l += al.w * bl;
            acc3h += al.w * bh;
            acc4l += ah.x * bl;
            acc4h += ah.x * bh;
            acc5l += ah.y * bl;
            acc5h += ah.y * bh;
            acc6l += ah.z * bl;
            acc6h += ah.z * bh;
            acc7l += ah.w * bl;
            acc7h += ah.w * bh;
        }
        if (more) {
            let next = BUF - cur;
            sa[next + slot] = na;
            sb[next + slot] = nb;
        }
        workgroupBarrier();
    }
    let il = i0 + 4u * lid.y;
    let ih = il + 64u;
    let jl = j0 + 4u * lid.x;
    let jh = jl + 64u;
    merge_row(il, jl, acc0l);
    merge_row(il, jh, acc0h);
    merge_row(il + 1u, jl, acc1l);
    merge_row(il + 1u, jh, acc1h);
    merge_row(il + 2u, jl, acc2l);
    merge_row(il + 2u, jh, acc2h);
    merge_row(il + 3u, jl, acc3l);
    merge_row(il + 3u, jh, acc3h);
    merge_row(ih, jl, acc4l);
    merge_row(ih, jh, acc4h);
    merge_row(ih + 1u, jl, acc5l);
    merge_row(ih + 1u, jh, acc5h);
    merge_row(ih + 2u, jl, acc6l);
    merge_row(ih + 2u, jh, acc6h);
    merge_row(ih + 3u, jl, acc7l);
    merge_row(ih + 3u, jh, acc7h);
}
