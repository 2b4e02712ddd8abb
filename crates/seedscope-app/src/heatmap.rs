//! The correlation heatmap: a `[rows, cols]` map uploaded once to the GPU, reduced to a
//! max-|r| pyramid by `shaders/pool.wgsl`, and colour-mapped per fragment by
//! `shaders/heatmap.wgsl` inside egui's wgpu renderer (a paint callback). Per frame only the
//! view rectangle (zoom and pan) is written. Without a wgpu renderer (glow, WebGL) the map is
//! pooled once on the CPU into an egui texture instead; neither path rebuilds an image per frame.

use std::collections::HashMap;
use std::sync::Arc;

use eframe::egui_wgpu::{self, CallbackResources, CallbackTrait, RenderState, ScreenDescriptor};
use egui::{Color32, Pos2, Rect, Sense, Vec2};
use wgpu::util::DeviceExt;

/// Most pyramid levels (2^15 cells per side at level 0).
const MAX_LEVELS: usize = 16;
/// Side of the CPU fallback texture, at most.
const CPU_SIDE: usize = 1024;

/// A map to draw: values in row-major order and an id that changes when the values do.
#[derive(Clone)]
pub struct MapData {
    /// Identifies the content (a hash of the tile name and bundle).
    pub key: u64,
    /// Rows (anchor neurons).
    pub rows: usize,
    /// Columns (the other model's neurons).
    pub cols: usize,
    /// Values, `rows * cols`.
    pub values: Arc<Vec<f32>>,
}

impl MapData {
    /// The value at `(row, col)`.
    pub fn at(&self, row: usize, col: usize) -> Option<f32> {
        (row < self.rows && col < self.cols)
            .then(|| self.values.get(row * self.cols + col).copied())
            .flatten()
    }
}

/// The shapes of the pyramid levels: `(offset, rows, cols)`.
pub fn pyramid(rows: usize, cols: usize) -> Vec<(usize, usize, usize)> {
    let mut out = vec![(0, rows, cols)];
    let (mut r, mut c, mut off) = (rows, cols, rows * cols);
    while (r > 1 || c > 1) && out.len() < MAX_LEVELS {
        r = r.div_ceil(2);
        c = c.div_ceil(2);
        out.push((off, r, c));
        off += r * c;
    }
    out
}

/// The CPU reference of one pooling step (what `pool.wgsl` computes): max-|r| of 2x2 blocks.
pub fn pool_cpu(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let (r2, c2) = (rows.div_ceil(2), cols.div_ceil(2));
    let mut out = vec![0.0f32; r2 * c2];
    for r in 0..r2 {
        for c in 0..c2 {
            let mut best: Option<f32> = None;
            for sr in 2 * r..(2 * r + 2).min(rows) {
                for sc in 2 * c..(2 * c + 2).min(cols) {
                    let v = src[sr * cols + sc];
                    if best.is_none_or(|b| v.abs() > b.abs()) {
                        best = Some(v);
                    }
                }
            }
            out[r * c2 + c] = best.unwrap_or(0.0);
        }
    }
    out
}

/// A reordered tile: its values, and the row and column each displayed position shows.
pub type Ordered = (Vec<f32>, Vec<usize>, Vec<usize>);

/// Reorder a `[rows, cols]` tile so that the maximum-weight one-to-one assignment of rows to
/// columns lies on the diagonal, rows by their partner's correlation (highest first; where the
/// sides differ in size, the rows or columns left without a partner come last); also the row
/// and column each displayed position shows.
pub fn order_by_assignment(values: &[f32], rows: usize, cols: usize) -> Ordered {
    let partner = seedscope_analysis::results::assign(values, rows, cols);
    let corr = |r: usize| partner[r].map_or(f32::NEG_INFINITY, |c| values[r * cols + c]);
    let mut row_of: Vec<usize> = (0..rows).collect();
    row_of.sort_by(|&a, &b| corr(b).total_cmp(&corr(a)));
    let mut col_of: Vec<usize> = row_of.iter().filter_map(|&r| partner[r]).collect();
    let mut used = vec![false; cols];
    for &c in &col_of {
        used[c] = true;
    }
    col_of.extend((0..cols).filter(|&c| !used[c]));
    let out = row_of
        .iter()
        .flat_map(|&r| col_of.iter().map(move |&c| values[r * cols + c]))
        .collect();
    (out, row_of, col_of)
}

/// Reorder a `[rows, cols]` map so that matched pairs lie on the diagonal: rows by their
/// largest value (descending), columns in the order of the rows' best columns (each column once,
/// the unmatched ones after). Returns the reordered values and, per displayed row and column,
/// the original index.
pub fn order_by_match(values: &[f32], rows: usize, cols: usize) -> Ordered {
    let best: Vec<(f32, usize)> = (0..rows)
        .map(|r| {
            values[r * cols..(r + 1) * cols].iter().enumerate().fold(
                (f32::NEG_INFINITY, 0),
                |a, (c, &v)| if v > a.0 { (v, c) } else { a },
            )
        })
        .collect();
    let mut row_of: Vec<usize> = (0..rows).collect();
    row_of.sort_by(|&a, &b| best[b].0.total_cmp(&best[a].0));
    let mut used = vec![false; cols];
    let mut col_of = Vec::with_capacity(cols);
    for &r in &row_of {
        let c = best[r].1;
        if !used[c] {
            used[c] = true;
            col_of.push(c);
        }
    }
    col_of.extend((0..cols).filter(|&c| !used[c]));
    let out = row_of
        .iter()
        .flat_map(|&r| col_of.iter().map(move |&c| values[r * cols + c]))
        .collect();
    (out, row_of, col_of)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ViewUniform {
    rect: [f32; 4],
    info: [u32; 4],
    levels: [[u32; 4]; MAX_LEVELS],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PoolParams {
    src: [u32; 3],
    dst: [u32; 3],
    pad: [u32; 2],
}

struct GpuMap {
    levels: Vec<(usize, usize, usize)>,
    #[cfg_attr(not(test), allow(dead_code))]
    buffer: wgpu::Buffer,
    uniform: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    cols: usize,
    rows: usize,
}

/// Pipelines and uploaded maps, kept in the renderer's callback resources.
struct HeatmapRenderer {
    render: wgpu::RenderPipeline,
    render_layout: wgpu::BindGroupLayout,
    pool: wgpu::ComputePipeline,
    pool_layout: wgpu::BindGroupLayout,
    srgb: bool,
    maps: HashMap<u64, GpuMap>,
}

fn storage_entry(
    binding: u32,
    read_only: bool,
    vis: wgpu::ShaderStages,
) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: vis,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn uniform_entry(binding: u32, vis: wgpu::ShaderStages) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: vis,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// One pipeline's parts: its bind group layout (`entries`), the pipeline layout of that one
/// group, and the WGSL module `source`, all labelled `label`.
fn stage(
    device: &wgpu::Device,
    label: &str,
    entries: &[wgpu::BindGroupLayoutEntry],
    source: &str,
) -> (
    wgpu::BindGroupLayout,
    wgpu::PipelineLayout,
    wgpu::ShaderModule,
) {
    let group = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries,
    });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(&group)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    (group, layout, module)
}

impl HeatmapRenderer {
    fn new(device: &wgpu::Device, format: wgpu::TextureFormat) -> Self {
        let frag = wgpu::ShaderStages::FRAGMENT;
        let (render_layout, layout, shader) = stage(
            device,
            "heatmap",
            &[storage_entry(0, true, frag), uniform_entry(1, frag)],
            include_str!("../../../shaders/heatmap.wgsl"),
        );
        let render = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("heatmap"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format,
                    blend: None,
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        let comp = wgpu::ShaderStages::COMPUTE;
        let (pool_layout, layout, pool_shader) = stage(
            device,
            "pool",
            &[storage_entry(0, false, comp), uniform_entry(1, comp)],
            include_str!("../../../shaders/pool.wgsl"),
        );
        let pool = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("pool"),
            layout: Some(&layout),
            module: &pool_shader,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        Self {
            render,
            render_layout,
            pool,
            pool_layout,
            srgb: format.is_srgb(),
            maps: HashMap::new(),
        }
    }

    /// Upload `map` and record its pyramid's pooling passes into `encoder`.
    fn upload(&mut self, device: &wgpu::Device, encoder: &mut wgpu::CommandEncoder, map: &MapData) {
        let levels = pyramid(map.rows, map.cols);
        let total = levels.last().map_or(0, |(o, r, c)| o + r * c);
        let mut init = vec![0.0f32; total.max(1)];
        init[..map.values.len().min(total)]
            .copy_from_slice(&map.values[..map.values.len().min(total)]);
        let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("heatmap levels"),
            contents: bytemuck::cast_slice(&init),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        for pair in levels.windows(2) {
            let (s, d) = (pair[0], pair[1]);
            let params = PoolParams {
                src: [s.0 as u32, s.1 as u32, s.2 as u32],
                dst: [d.0 as u32, d.1 as u32, d.2 as u32],
                pad: [0; 2],
            };
            let ubuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("pool params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("pool"),
                layout: &self.pool_layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: buffer.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: ubuf.as_entire_binding(),
                    },
                ],
            });
            // One pass per level: each reads what the previous one wrote.
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("pool"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pool);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups((d.2 as u32).div_ceil(8), (d.1 as u32).div_ceil(8), 1);
        }
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("heatmap view"),
            size: std::mem::size_of::<ViewUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("heatmap"),
            layout: &self.render_layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: buffer.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: uniform.as_entire_binding(),
                },
            ],
        });
        // Keep a few maps; drop the rest (switching back re-uploads).
        if self.maps.len() >= 4 {
            self.maps.clear();
        }
        self.maps.insert(
            map.key,
            GpuMap {
                levels,
                buffer,
                uniform,
                bind_group,
                cols: map.cols,
                rows: map.rows,
            },
        );
    }
}

/// Register the heatmap pipelines with egui's wgpu renderer (once, at start-up).
pub fn register(render_state: &RenderState) {
    let renderer = HeatmapRenderer::new(&render_state.device, render_state.target_format);
    render_state
        .renderer
        .write()
        .callback_resources
        .insert(renderer);
}

struct HeatmapCallback {
    map: MapData,
    /// Shown region in cells: x0, y0, x1, y1.
    rect: [f32; 4],
}

impl CallbackTrait for HeatmapCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &ScreenDescriptor,
        encoder: &mut wgpu::CommandEncoder,
        resources: &mut CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(r) = resources.get_mut::<HeatmapRenderer>() else {
            return Vec::new();
        };
        if !r.maps.contains_key(&self.map.key) {
            r.upload(device, encoder, &self.map);
        }
        if let Some(m) = r.maps.get(&self.map.key) {
            let mut levels = [[0u32; 4]; MAX_LEVELS];
            for (l, (o, rows, cols)) in levels.iter_mut().zip(&m.levels) {
                *l = [*o as u32, *rows as u32, *cols as u32, 0];
            }
            let u = ViewUniform {
                rect: self.rect,
                info: [
                    m.cols as u32,
                    m.rows as u32,
                    m.levels.len() as u32,
                    u32::from(r.srgb),
                ],
                levels,
            };
            queue.write_buffer(&m.uniform, 0, bytemuck::bytes_of(&u));
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &CallbackResources,
    ) {
        let Some(r) = resources.get::<HeatmapRenderer>() else {
            return;
        };
        if let Some(m) = r.maps.get(&self.map.key) {
            pass.set_pipeline(&r.render);
            pass.set_bind_group(0, &m.bind_group, &[]);
            pass.draw(0..6, 0..1);
        }
    }
}

/// Zoom and pan of a heatmap, in cells.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatmapView {
    /// Top-left cell shown (column, row).
    pub min: [f32; 2],
    /// Bottom-right cell shown.
    pub max: [f32; 2],
}

impl HeatmapView {
    /// The whole map.
    pub fn whole(rows: usize, cols: usize) -> Self {
        Self {
            min: [0.0, 0.0],
            max: [cols as f32, rows as f32],
        }
    }

    fn cell_at(&self, rect: Rect, p: Pos2) -> [f32; 2] {
        let u = (p - rect.min) / rect.size();
        [
            self.min[0] + u.x * (self.max[0] - self.min[0]),
            self.min[1] + u.y * (self.max[1] - self.min[1]),
        ]
    }
}

/// What the pointer does over the map this frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatmapHover {
    /// Row (anchor neuron, flat index).
    pub row: usize,
    /// Column.
    pub col: usize,
    /// Its value.
    pub value: f32,
    /// Clicked this frame.
    pub clicked: bool,
    /// Clicked with shift held.
    pub shift: bool,
}

/// The CPU fallback texture of a map, built once per map.
pub struct CpuTexture {
    key: u64,
    texture: egui::TextureHandle,
}

/// The colour of `v` on the diverging scale (`seedscope_report::diverging`, the same stops as
/// `heatmap.wgsl`).
pub fn colormap(v: f32) -> Color32 {
    if v.is_nan() {
        return Color32::GRAY;
    }
    let [r, g, b] = seedscope_report::diverging(v);
    Color32::from_rgb(r, g, b)
}

/// Draw `map` in `size`, with zoom (wheel or pinch), pan (drag) and reset (double click).
/// Returns where it was drawn and the hovered cell.
pub fn show(
    ui: &mut egui::Ui,
    map: &MapData,
    view: &mut HeatmapView,
    size: Vec2,
    gpu: bool,
    cpu_texture: &mut Option<CpuTexture>,
) -> (Rect, Option<HeatmapHover>) {
    let (rect, response) = ui.allocate_exact_size(size, Sense::click_and_drag());
    // Zoom around the pointer, pan by dragging, double click resets.
    if response.double_clicked() {
        *view = HeatmapView::whole(map.rows, map.cols);
    }
    if response.dragged() {
        let d = response.drag_delta() / rect.size();
        let w = [view.max[0] - view.min[0], view.max[1] - view.min[1]];
        for k in 0..2 {
            let shift = -d[k] * w[k];
            view.min[k] += shift;
            view.max[k] += shift;
        }
    }
    if let Some(p) = response.hover_pos() {
        let zoom = ui.input(|i| {
            let scroll = i.smooth_scroll_delta.y;
            i.zoom_delta() * (scroll / 200.0).exp()
        });
        if (zoom - 1.0).abs() > 1e-4 {
            let c = view.cell_at(rect, p);
            for ((lo, hi), c) in view.min.iter_mut().zip(view.max.iter_mut()).zip(c) {
                *lo = c - (c - *lo) / zoom;
                *hi = c + (*hi - c) / zoom;
            }
        }
    }
    let painter = ui.painter_at(rect);
    if gpu {
        painter.add(egui_wgpu::Callback::new_paint_callback(
            rect,
            HeatmapCallback {
                map: map.clone(),
                rect: [view.min[0], view.min[1], view.max[0], view.max[1]],
            },
        ));
    } else {
        let tex = match cpu_texture {
            Some(t) if t.key == map.key => t,
            _ => cpu_texture.insert(CpuTexture {
                key: map.key,
                texture: ui.ctx().load_texture(
                    format!("heatmap-{}", map.key),
                    cpu_image(map),
                    egui::TextureOptions::NEAREST,
                ),
            }),
        };
        painter.rect_filled(rect, 0.0, Color32::from_gray(40));
        let uv = Rect::from_min_max(
            Pos2::new(view.min[0] / map.cols as f32, view.min[1] / map.rows as f32),
            Pos2::new(view.max[0] / map.cols as f32, view.max[1] / map.rows as f32),
        );
        // Clip the uv rectangle to the map and shrink the drawn rectangle to match.
        let clipped = uv.intersect(Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)));
        if clipped.is_positive() {
            let to_screen = |u: Pos2| {
                rect.min
                    + Vec2::new(
                        (u.x - uv.min.x) / uv.width() * rect.width(),
                        (u.y - uv.min.y) / uv.height() * rect.height(),
                    )
            };
            painter.image(
                tex.texture.id(),
                Rect::from_min_max(to_screen(clipped.min), to_screen(clipped.max)),
                clipped,
                Color32::WHITE,
            );
        }
    }
    let hover = response.hover_pos().and_then(|p| {
        let c = view.cell_at(rect, p);
        if c[0] < 0.0 || c[1] < 0.0 {
            return None;
        }
        let (row, col) = (c[1] as usize, c[0] as usize);
        let value = map.at(row, col)?;
        Some(HeatmapHover {
            row,
            col,
            value,
            clicked: response.clicked(),
            shift: ui.input(|i| i.modifiers.shift),
        })
    });
    (rect, hover)
}

/// The CPU fallback image: max-|r| pooled to at most [`CPU_SIDE`] per side.
fn cpu_image(map: &MapData) -> egui::ColorImage {
    let (mut v, mut r, mut c) = (map.values.as_ref().clone(), map.rows, map.cols);
    while r > CPU_SIDE || c > CPU_SIDE {
        v = pool_cpu(&v, r, c);
        r = r.div_ceil(2);
        c = c.div_ceil(2);
    }
    egui::ColorImage::new([c, r], v.iter().map(|&x| colormap(x)).collect())
}

/// A horizontal colour bar from -1 to 1 with ticks.
pub fn legend(ui: &mut egui::Ui, width: f32) {
    let (rect, _) = ui.allocate_exact_size(Vec2::new(width, 28.0), Sense::hover());
    let bar = Rect::from_min_size(rect.min, Vec2::new(width, 12.0));
    let mut mesh = egui::Mesh::default();
    let n = 64;
    for i in 0..=n {
        let t = i as f32 / n as f32;
        let x = bar.min.x + t * bar.width();
        let col = colormap(t * 2.0 - 1.0);
        mesh.colored_vertex(Pos2::new(x, bar.min.y), col);
        mesh.colored_vertex(Pos2::new(x, bar.max.y), col);
        if i > 0 {
            let b = 2 * i as u32;
            mesh.add_triangle(b - 2, b - 1, b);
            mesh.add_triangle(b - 1, b, b + 1);
        }
    }
    ui.painter().add(mesh);
    for (t, label) in [(0.0, "-1"), (0.5, "0"), (1.0, "+1")] {
        ui.painter().text(
            Pos2::new(bar.min.x + t * bar.width(), bar.max.y + 1.0),
            match t {
                0.0 => egui::Align2::LEFT_TOP,
                1.0 => egui::Align2::RIGHT_TOP,
                _ => egui::Align2::CENTER_TOP,
            },
            label,
            egui::FontId::proportional(11.0),
            ui.visuals().text_color(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1009) as f32 / 504.5 - 1.0) * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect()
    }

    #[test]
    fn the_pyramid_halves_to_one_cell() {
        let p = pyramid(5, 3);
        assert_eq!(p, vec![(0, 5, 3), (15, 3, 2), (21, 2, 1), (23, 1, 1)]);
    }

    #[test]
    fn cpu_pooling_keeps_the_largest_magnitude_with_its_sign() {
        let v = vec![0.1, -0.9, 0.3, 0.5, 0.2, -0.1, 0.8, 0.0, 0.4];
        assert_eq!(pool_cpu(&v, 3, 3), vec![-0.9, 0.3, 0.8, 0.4]);
    }

    #[test]
    fn ordering_by_match_puts_each_rows_best_column_on_the_diagonal() {
        let v = vec![
            0.1, 0.9, 0.2, /**/ 0.95, 0.1, 0.0, /**/ 0.3, 0.2, 0.5,
        ];
        let (out, rows, cols) = order_by_match(&v, 3, 3);
        assert_eq!(rows, vec![1, 0, 2]);
        assert_eq!(cols, vec![0, 1, 2]);
        for (k, &r) in rows.iter().enumerate() {
            let c = cols[k];
            assert_eq!(out[k * 3 + k], v[r * 3 + c]);
        }
    }

    #[test]
    fn ordering_by_assignment_puts_the_one_to_one_partners_on_the_diagonal() {
        // Rows 0 and 1 both match column 0 best; one-to-one, row 1 keeps it and row 0 takes
        // column 1.
        let v = vec![
            0.9, 0.85, 0.0, /**/ 0.95, 0.1, 0.0, /**/ 0.3, 0.2, 0.5,
        ];
        let (out, rows, cols) = order_by_assignment(&v, 3, 3);
        // Assignment: 0→1 (0.85), 1→0 (0.95), 2→2 (0.5): total 2.3, the best of all six.
        assert_eq!(rows, vec![1, 0, 2]);
        assert_eq!(cols, vec![0, 1, 2]);
        for (k, &r) in rows.iter().enumerate() {
            assert_eq!(out[k * 3 + k], v[r * 3 + cols[k]]);
        }
    }

    #[test]
    fn ordering_a_wider_tile_by_assignment_leaves_the_unmatched_columns_last() {
        // Two anchor neurons, three of the other model's: column 1 is nobody's partner.
        let v = vec![0.2, 0.1, 0.9, /**/ 0.8, 0.7, 0.1];
        let (out, rows, cols) = order_by_assignment(&v, 2, 3);
        assert_eq!(rows, vec![0, 1]);
        assert_eq!(cols, vec![2, 0, 1]);
        assert_eq!(out, vec![0.9, 0.2, 0.1, /**/ 0.1, 0.8, 0.7]);
        // Taller: the row left without a partner comes last.
        let t = vec![0.2, 0.8, /**/ 0.1, 0.7, /**/ 0.9, 0.1];
        let (_, rows, cols) = order_by_assignment(&t, 3, 2);
        assert_eq!((rows, cols), (vec![2, 0, 1], vec![0, 1]));
    }

    #[test]
    fn the_colour_scale_is_blue_white_red() {
        let (lo, mid, hi) = (colormap(-1.0), colormap(0.0), colormap(1.0));
        assert!(lo.b() > lo.r());
        assert!(mid.r() > 240 && mid.g() > 240 && mid.b() > 240);
        assert!(hi.r() > hi.b());
        assert_eq!(colormap(f32::NAN), Color32::GRAY);
    }

    /// pool.wgsl on a real adapter (lavapipe in CI) builds the same pyramid as the CPU.
    #[test]
    fn the_gpu_pyramid_matches_cpu_pooling() {
        let ctx = seedscope_gpu::GpuContext::request()
            .expect("this test needs a wgpu adapter (lavapipe: apt install mesa-vulkan-drivers)");
        let (rows, cols) = (37, 70);
        let values = tile(rows, cols);
        let map = MapData {
            key: 1,
            rows,
            cols,
            values: Arc::new(values.clone()),
        };
        let mut r = HeatmapRenderer::new(&ctx.device, wgpu::TextureFormat::Rgba8Unorm);
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        r.upload(&ctx.device, &mut encoder, &map);
        ctx.queue.submit([encoder.finish()]);
        let m = &r.maps[&1];
        let total = m.levels.last().map(|(o, r, c)| o + r * c).unwrap_or(0);
        let bytes = ctx.read(&m.buffer, (total * 4) as u64).expect("read back");
        let gpu: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        let (mut level, mut lr, mut lc) = (values, rows, cols);
        for &(off, r, c) in &m.levels {
            assert_eq!((r, c), (lr, lc));
            assert_eq!(&gpu[off..off + r * c], &level[..], "level at offset {off}");
            level = pool_cpu(&level, lr, lc);
            lr = lr.div_ceil(2);
            lc = lc.div_ceil(2);
        }
        assert_eq!(m.levels.len(), 8);
    }

    /// heatmap.wgsl's colour map on a real adapter equals [`colormap`], the CPU twin the
    /// legend, the CPU fallback and the SVG export draw with: a 1 × 23 map (r from -1 to 1, and
    /// NaN) rendered one pixel per cell into an RGBA8 (linear) target and read back.
    #[test]
    fn the_gpu_colour_map_matches_the_cpu_one() {
        let ctx = seedscope_gpu::GpuContext::request()
            .expect("this test needs a wgpu adapter (lavapipe: apt install mesa-vulkan-drivers)");
        let cols = 23usize;
        let mut values: Vec<f32> = (0..cols - 1)
            .map(|i| i as f32 / (cols - 2) as f32 * 2.0 - 1.0)
            .collect();
        values.push(f32::NAN);
        let map = MapData {
            key: 7,
            rows: 1,
            cols,
            values: Arc::new(values.clone()),
        };
        let format = wgpu::TextureFormat::Rgba8Unorm;
        let mut r = HeatmapRenderer::new(&ctx.device, format);
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        r.upload(&ctx.device, &mut encoder, &map);
        let m = &r.maps[&7];
        let mut levels = [[0u32; 4]; MAX_LEVELS];
        for (l, (o, rows, c)) in levels.iter_mut().zip(&m.levels) {
            *l = [*o as u32, *rows as u32, *c as u32, 0];
        }
        let view = ViewUniform {
            rect: [0.0, 0.0, cols as f32, 1.0],
            info: [cols as u32, 1, m.levels.len() as u32, 0],
            levels,
        };
        ctx.queue
            .write_buffer(&m.uniform, 0, bytemuck::bytes_of(&view));
        let target = ctx.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("colour map test"),
            size: wgpu::Extent3d {
                width: cols as u32,
                height: 1,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let target_view = target.create_view(&Default::default());
        {
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("colour map test"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &target_view,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                depth_stencil_attachment: None,
                timestamp_writes: None,
                occlusion_query_set: None,
                multiview_mask: None,
            });
            pass.set_pipeline(&r.render);
            pass.set_bind_group(0, &m.bind_group, &[]);
            pass.draw(0..6, 0..1);
        }
        // Rows of a texture copy are padded to 256 bytes.
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("colour map readback"),
            size: 256,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        encoder.copy_texture_to_buffer(
            target.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &readback,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(256),
                    rows_per_image: Some(1),
                },
            },
            wgpu::Extent3d {
                width: cols as u32,
                height: 1,
                depth_or_array_layers: 1,
            },
        );
        ctx.queue.submit([encoder.finish()]);
        let bytes = pollster::block_on(ctx.read_async(&readback, 256)).expect("read back");
        for (c, &v) in values.iter().enumerate() {
            let want = colormap(v);
            let got = &bytes[c * 4..c * 4 + 3];
            for (k, (&g, w)) in got.iter().zip([want.r(), want.g(), want.b()]).enumerate() {
                assert!(
                    (g as i32 - w as i32).abs() <= 1,
                    "cell {c} (r = {v}): channel {k} is {g} on the GPU, {w} on the CPU"
                );
            }
        }
    }
}
