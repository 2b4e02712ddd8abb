//! The explorer at the paper's sizes: a synthetic bundle of five seeds with GPT-2 small's 12 x
//! 3,072 = 36,864 neurons (and GPT-2 medium's 24 x 4,096 = 98,304) is written with the real
//! bundle writer and opened in the real app through egui_kittest (no renderer: the frame times
//! are the app's and egui's work). Timed as a user meets it: the bundle to the overview, table
//! frames while sorting, filtering and searching (p95), and a row click to the neuron page.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use seedscope_analysis::bundle::{Manifest, ModelEntry, bundle_files, write_bundle_files};
use seedscope_analysis::results::{AnchorResult, Results};
use seedscope_analysis::{AnalysisOptions, Shape, plan::Plan};
use seedscope_app::{Launch, SeedscopeApp, Tab};

/// A hash in [0, 1).
fn unit(i: u64) -> f32 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

/// A bundle of `n_models` seeds with `n_layers` x `d_mlp` neurons in `dir` (written afresh):
/// matches, baselines, moments and histograms from a hash (2 % of neurons with a strong twin).
fn synthetic_bundle(dir: &Path, n_layers: usize, d_mlp: usize, n_models: usize) -> PathBuf {
    let out = dir.join(format!("bundle-{n_layers}x{d_mlp}"));
    let width = n_layers * d_mlp;
    let shapes = vec![Shape { n_layers, d_mlp }; n_models];
    let mut a = AnchorResult::empty(0, &shapes, false);
    for (o, (real, base)) in a.real.iter_mut().zip(&mut a.baseline).enumerate() {
        for i in 0..width {
            let h = (o * width + i) as u64 * 4;
            let twin = unit(h) < 0.02;
            real.max[i] = if twin {
                0.8 + 0.2 * unit(h + 1)
            } else {
                0.2 + 0.4 * unit(h + 1)
            };
            real.argmax[i] = (unit(h + 2) * width as f32) as u32;
            real.min[i] = -0.1 - 0.3 * unit(h + 3);
            real.argmin[i] = (unit(h + 3) * width as f32) as u32;
            base.max[i] = 0.15 + 0.2 * unit(h + 5);
            base.argmax[i] = (unit(h + 6) * width as f32) as u32;
            base.min[i] = -0.2;
            base.argmin[i] = 0;
        }
    }
    a.mean = (0..width).map(|i| unit(i as u64 + 7) as f64).collect();
    a.var = (0..width)
        .map(|i| 0.1 + unit(i as u64 + 9) as f64)
        .collect();
    a.pre_hist = (0..width * seedscope_gpu::HIST_BINS)
        .map(|i| (unit(i as u64) * 100.0) as u32)
        .collect();
    let results = Results {
        n_tokens: 1_000_000,
        shapes,
        anchors: vec![a],
        plan: Plan {
            passes: Vec::new(),
            activation_bytes: 0,
            max_tile_bytes: 0,
            reserved_bytes: 0,
            rotation_bytes: 0,
            reuse: Default::default(),
            reuse_bytes: 0,
            holds_rows: false,
        },
        cost: Default::default(),
        notes: Vec::new(),
    };
    let names: Vec<String> = (0..n_models).map(|m| format!("seed-{m}")).collect();
    let manifest = Manifest {
        seedscope_version: "test".into(),
        command: vec!["synthetic".into()],
        models: names
            .iter()
            .map(|n| ModelEntry {
                name: n.clone(),
                path: format!("/nonexistent/{n}"),
                files: Vec::new(),
                shape: None,
            })
            .collect(),
        data_source: "synthetic".into(),
        data_sha256: String::new(),
        data_shape: [1, 1],
        dropped_ids: Vec::new(),
        data_seed: 0,
        n_tokens: results.n_tokens,
        n_layers,
        d_mlp,
        options: AnalysisOptions::default(),
        baseline: "synthetic".into(),
        null: String::new(),
        one_to_one: String::new(),
        device: "none".into(),
        passes: 1,
        peak_memory_bytes: 0,
        seconds: 0.0,
        cost: Default::default(),
        fraction_universal: 0.0,
        fraction_universal_per_layer: vec![0.0; n_layers],
    };
    let tokenizer = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/family/tokenizer.json"),
    )
    .expect("tokenizer");
    let files = bundle_files(
        &results,
        &names,
        &manifest,
        &vec![None; n_models],
        &[None],
        None,
        Some(&tokenizer),
    )
    .expect("bundle files");
    write_bundle_files(&out, &files).expect("write bundle");
    out
}

fn p95(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[(t.len() * 95 / 100).min(t.len() - 1)]
}

/// Step one frame and time it.
fn frame(h: &mut Harness<'_, SeedscopeApp>) -> Duration {
    let t = Instant::now();
    h.step();
    t.elapsed()
}

struct Timings {
    open: Duration,
    table_p95: Duration,
    table_max: Duration,
    neuron: Duration,
}

/// The app started on `bundle` (rendered by wgpu when `wgpu`), stepped until it is open.
fn open(bundle: PathBuf, wgpu: bool) -> Harness<'static, SeedscopeApp> {
    let builder = Harness::builder().with_size([1280.0, 860.0]);
    let builder = if wgpu { builder.wgpu() } else { builder };
    let mut h = builder.build_eframe(move |cc| {
        SeedscopeApp::new(
            cc,
            Launch {
                bundle: Some(bundle),
                embedded_bundle: PathBuf::from("/nonexistent"),
                analyse_embedded: false,
                ..Launch::default()
            },
        )
    });
    step_until(&mut h, Duration::from_secs(60), |app| app.ex.is_some());
    h.step();
    h
}

/// Step the UI until `done` holds (background tasks report through channels), failing with
/// the app's messages after `limit`.
fn step_until(
    h: &mut Harness<'_, SeedscopeApp>,
    limit: Duration,
    done: impl Fn(&SeedscopeApp) -> bool,
) {
    let t0 = Instant::now();
    while !done(h.state()) {
        assert!(t0.elapsed() < limit, "{:?}", h.state().messages);
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
}

fn explore(bundle: PathBuf, neurons: usize) -> Timings {
    let t0 = Instant::now();
    let mut h = open(bundle, false);
    let open = t0.elapsed();
    assert_eq!(h.state().tab, Tab::Overview);

    // The table: open it, sort by two columns both ways, filter with a search, clear it.
    let mut frames = Vec::new();
    h.get_by_label("Table").click();
    frames.push(frame(&mut h));
    assert_eq!(h.state().tab, Tab::Table);
    assert_eq!(h.state().table.order.len(), neurons);
    for column in ["max r", "max r", "neuron", "act var"] {
        // The sorted column's header carries an arrow.
        [
            column.to_owned(),
            format!("{column} v"),
            format!("{column} ^"),
        ]
        .iter()
        .find_map(|l| h.query_by_label(l))
        .unwrap_or_else(|| panic!("no header {column}"))
        .click();
        for _ in 0..3 {
            frames.push(frame(&mut h));
        }
    }
    let search = h.get_by_label("search:");
    search.click();
    search.type_text("L5.1");
    for _ in 0..3 {
        frames.push(frame(&mut h));
    }
    assert!(h.state().table.order.len() < neurons);
    for _ in 0..4 {
        h.key_press(egui::Key::Backspace);
        frames.push(frame(&mut h));
    }
    frames.push(frame(&mut h));
    assert_eq!(h.state().table.order.len(), neurons);
    // The top row to its neuron page.
    let ex = h.state().ex.clone().expect("open");
    let id = ex.id_of_row(h.state().table.order[0]).expect("a row");
    h.get_by_label(&id.short()).click();
    // The click is a frame; the page is drawn in the next.
    let t = Instant::now();
    for _ in 0..3 {
        h.step();
    }
    let neuron = t.elapsed();
    assert_eq!(h.state().tab, Tab::Neuron);
    assert_eq!(h.state().selected, Some(id));
    // Back to the table, and scroll it.
    h.get_by_label("Table").click();
    frames.push(frame(&mut h));
    for _ in 0..10 {
        h.event(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Page,
            delta: egui::vec2(0.0, -1.0),
            modifiers: egui::Modifiers::NONE,
            phase: egui::TouchPhase::Move,
            source: egui::MouseWheelSource::Wheel,
        });
        frames.push(frame(&mut h));
    }
    Timings {
        open,
        table_max: *frames.iter().max().expect("frames"),
        table_p95: p95(frames),
        neuron,
    }
}

/// Whether every model a bundle's manifest names is where it says (live text needs them).
fn models_on_disk(bundle: &Path) -> bool {
    seedscope_analysis::Bundle::read(bundle).is_ok_and(|b| {
        b.manifest
            .models
            .iter()
            .all(|m| Path::new(&m.path).join("config.json").exists())
    })
}

/// Type `text` into the neuron page's live text field (T, select all, type) and step until its
/// traces are shown: the time from the first key to the traces.
fn live_text(h: &mut Harness<'_, SeedscopeApp>, text: &str) -> Duration {
    h.key_press(egui::Key::T);
    h.run_steps(2);
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    let t = Instant::now();
    h.get_by_label("Live text").type_text(text);
    step_until(h, Duration::from_secs(900), |app| {
        app.neuron.live.as_ref().is_some_and(|(l, _)| l == text)
    });
    let took = t.elapsed();
    h.key_press(egui::Key::Escape);
    h.run_steps(1);
    took
}

/// Live text on a real bundle's neuron page: the first text loads every model (in the
/// background, once) and runs them; the second only runs them.
fn live_twice(bundle: PathBuf) -> (Duration, Duration) {
    let mut h = open(bundle, false);
    let ex = h.state().ex.clone().expect("open");
    let id = ex.id_of_row(0).expect("a row");
    h.state_mut().open_neuron(id);
    h.run_steps(2);
    assert_eq!(h.state().tab, Tab::Neuron);
    let first = live_text(&mut h, "Who is there? Nay, answer me.");
    let second = live_text(&mut h, "Stand, and unfold yourself.");
    let (_, live) = h.state().neuron.live.clone().expect("traces");
    assert_eq!(live.traces.len(), ex.names.len(), "a trace per seed");
    (first, second)
}

#[test]
fn the_explorer_at_gpt2_small_and_medium_sizes() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale-timing");
    // SEEDSCOPE_SCALE_BUNDLE=DIR times a real bundle too (scripts/bench_scale.py passes the
    // GPT-2-small-shaped family's).
    if let Some(real) = std::env::var_os("SEEDSCOPE_SCALE_BUNDLE") {
        let real = PathBuf::from(real);
        let neurons = seedscope_analysis::Bundle::read(&real)
            .expect("SEEDSCOPE_SCALE_BUNDLE")
            .neurons
            .len();
        let t = explore(real.clone(), neurons);
        eprintln!(
            "{} ({neurons} neurons): open to overview {:.2} s, table frames p95 {:.1} ms \
             (max {:.1} ms), neuron page {:.1} ms",
            real.display(),
            t.open.as_secs_f64(),
            t.table_p95.as_secs_f64() * 1e3,
            t.table_max.as_secs_f64() * 1e3,
            t.neuron.as_secs_f64() * 1e3
        );
        if models_on_disk(&real) {
            let (first, second) = live_twice(real.clone());
            eprintln!(
                "{}: live text {:.1} s with the models' loading, {:.1} s for the next text",
                real.display(),
                first.as_secs_f64(),
                second.as_secs_f64()
            );
        }
    }
    for (layers, d, what) in [(12, 3072, "GPT-2 small"), (24, 4096, "GPT-2 medium")] {
        let t = Instant::now();
        let bundle = synthetic_bundle(&dir, layers, d, 5);
        let written = t.elapsed();
        let t = explore(bundle, layers * d);
        eprintln!(
            "{what} ({} neurons, 5 seeds; bundle written in {:.1} s): open to overview {:.2} s, \
             table frames p95 {:.1} ms (max {:.1} ms), neuron page {:.1} ms",
            layers * d,
            written.as_secs_f64(),
            t.open.as_secs_f64(),
            t.table_p95.as_secs_f64() * 1e3,
            t.table_max.as_secs_f64() * 1e3,
            t.neuron.as_secs_f64() * 1e3
        );
        // The goals (overview within 3 s, table frames within 33 ms at p95, the neuron page
        // within 100 ms; measured here 0.14 / 0.40 s, 8 / 20 ms, 7 ms) are read off this line by
        // scripts/bench_scale.py, not asserted: a timed test would fail on a busy machine.
    }
}

#[test]
fn the_overview_and_a_neuron_read_well_at_24_layers() {
    // GPT-2 medium's depth and width, rendered (wgpu; lavapipe in CI) and compared with the
    // committed snapshots (`UPDATE_SNAPSHOTS=1` rewrites them).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale-snapshots");
    let mut h = open(synthetic_bundle(&dir, 24, 4096, 5), true);
    h.run_steps(4);
    h.snapshot("overview_24_layers");
    let ex = h.state().ex.clone().expect("open");
    let id = ex
        .id_of_row(ex.anchors[0].rows[23 * 4096 + 7])
        .expect("a neuron");
    h.state_mut().open_neuron(id);
    h.run_steps(4);
    h.snapshot("neuron_24_layers");
}
