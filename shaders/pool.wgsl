// Max-|r| pooling of a correlation map for display: level k+1 of the map pyramid from level k.
// Each output cell keeps the signed value with the largest magnitude of its 2x2 source block,
// so a strong correlation (or anti-correlation) stays visible when the map is zoomed out.
// All levels live in one buffer; `p` gives the offsets and shapes of source and destination.

struct Params {
    src_offset: u32,
    src_rows: u32,
    src_cols: u32,
    dst_offset: u32,
    dst_rows: u32,
    dst_cols: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> levels: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.y;
    let c = id.x;
    if (r >= p.dst_rows || c >= p.dst_cols) {
        return;
    }
    var best = 0.0;
    var found = false;
    for (var dr = 0u; dr < 2u; dr++) {
        for (var dc = 0u; dc < 2u; dc++) {
            let sr = 2u * r + dr;
            let sc = 2u * c + dc;
            if (sr < p.src_rows && sc < p.src_cols) {
                let v = levels[p.src_offset + sr * p.src_cols + sc];
                if (!found || abs(v) > abs(best)) {
                    best = v;
                    found = true;
                }
            }
        }
    }
    levels[p.dst_offset + r * p.dst_cols + c] = best;
}
