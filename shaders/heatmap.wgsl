// Colour-mapped correlation heatmap, drawn by egui's wgpu renderer as a paint callback.
// The map (with its max-|r| pyramid from pool.wgsl) stays on the GPU; per frame only the view
// rectangle changes. Each fragment picks the pyramid level whose cells are about one pixel,
// reads its cell and maps r in [-1, 1] to a diverging blue-white-red scale.

struct View {
    // Shown region in level-0 cells: x0 (column), y0 (row), x1, y1.
    rect: vec4<f32>,
    // cols, rows, number of levels, 1 if the target is sRGB (write linear colour).
    info: vec4<u32>,
    // Per level: offset, rows, cols, unused.
    levels: array<vec4<u32>, 16>,
}

@group(0) @binding(0) var<storage, read> data: array<f32>;
@group(0) @binding(1) var<uniform> view: View;

struct VsOut {
    @builtin(position) pos: vec4<f32>,
    @location(0) uv: vec2<f32>,
}

@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> VsOut {
    // Two triangles covering the callback's viewport.
    var corners = array<vec2<f32>, 6>(
        vec2(0.0, 0.0), vec2(1.0, 0.0), vec2(0.0, 1.0),
        vec2(0.0, 1.0), vec2(1.0, 0.0), vec2(1.0, 1.0),
    );
    let uv = corners[i];
    var out: VsOut;
    out.pos = vec4(uv.x * 2.0 - 1.0, 1.0 - uv.y * 2.0, 0.0, 1.0);
    out.uv = uv;
    return out;
}

fn srgb_to_linear(c: vec3<f32>) -> vec3<f32> {
    let lo = c / 12.92;
    let hi = pow((c + 0.055) / 1.055, vec3(2.4));
    return select(hi, lo, c <= vec3(0.04045));
}

// Diverging scale (ColorBrewer RdBu, reversed): -1 blue, 0 white, +1 red; sRGB values.
fn colormap(v: f32) -> vec3<f32> {
    let t = clamp(v, -1.0, 1.0);
    let stops = array<vec3<f32>, 5>(
        vec3(0.020, 0.188, 0.380),
        vec3(0.263, 0.576, 0.765),
        vec3(0.969, 0.969, 0.969),
        vec3(0.839, 0.376, 0.302),
        vec3(0.404, 0.000, 0.122),
    );
    let x = (t + 1.0) * 2.0;
    let i = u32(clamp(floor(x), 0.0, 3.0));
    return mix(stops[i], stops[i + 1u], x - f32(i));
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let cell = mix(view.rect.xy, view.rect.zw, in.uv);
    // Cells per pixel, from the screen-space derivative (uniform control flow here).
    let w = fwidth(cell);
    let cols = view.info.x;
    let rows = view.info.y;
    let n_levels = view.info.z;
    var level = u32(clamp(floor(log2(max(max(w.x, w.y), 1.0))), 0.0, f32(n_levels - 1u)));
    var rgb = vec3(0.16, 0.16, 0.16);
    if (cell.x >= 0.0 && cell.y >= 0.0 && cell.x < f32(cols) && cell.y < f32(rows)) {
        let l = view.levels[level];
        let scale = f32(1u << level);
        let r = min(u32(cell.y / scale), l.y - 1u);
        let c = min(u32(cell.x / scale), l.z - 1u);
        let v = data[l.x + r * l.z + c];
        // NaN, tested on the bits (compilers may fold `v != v` away): egui's GRAY
        // (160/255), as the CPU twin `heatmap::colormap` draws it.
        if ((bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u) {
            rgb = vec3(0.627451, 0.627451, 0.627451);
        } else {
            rgb = colormap(v);
        }
    }
    if (view.info.w == 1u) {
        rgb = srgb_to_linear(rgb);
    }
    return vec4(rgb, 1.0);
}
