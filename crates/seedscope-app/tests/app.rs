//! The explorer driven through its real views with egui_kittest, rendered with wgpu (lavapipe
//! in CI): a bundle of the embedded family is analysed once (CPU path, 4,096 tokens, all tiles)
//! and opened as a user would; snapshots of the main views are compared with the committed
//! images in `tests/snapshots/` (`UPDATE_SNAPSHOTS=1` rewrites them).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use egui::{Key, Modifiers, PointerButton};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use seedscope_analysis::job::{AnalysisRequest, JobEnd, run_analysis};
use seedscope_app::data::NeuronId;
use seedscope_app::inspect::Models;
use seedscope_app::views::neuron::page_neurons;
use seedscope_app::{Explorer, Launch, SeedscopeApp, Tab};
use seedscope_model::BackendKind;

/// The fixture bundle, made once per test binary.
fn bundle() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-fixture/bundle");
        let request = AnalysisRequest {
            out: out.clone(),
            max_tokens: Some(4096),
            save_tiles: Some("all".into()),
            permutation_null: true,
            backend: BackendKind::Cpu,
            command: vec!["seedscope-app tests".into()],
            ..AnalysisRequest::default()
        };
        let end = run_analysis(&request, Arc::new(AtomicBool::new(false)), |_| {})
            .expect("analysing the embedded family");
        assert_eq!(end, JobEnd::Written(out.clone()));
        out
    })
    .clone()
}

/// The embedded family's training series and its trajectory, made once per test binary: every
/// seed's shipped checkpoints (steps 200 and 800) and final weights, each step analysed over
/// 4,096 of the family's eval tokens, the trajectory written into the last step's bundle (as
/// `seedscope analyze --steps 200,800,final` does).
fn series_bundle() -> PathBuf {
    use seedscope_analysis::bundle::{TRAJECTORY, Trajectory};
    use seedscope_analysis::job::family_models;
    use seedscope_model::train::step_dir;
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-series");
        let _ = std::fs::remove_dir_all(&root);
        let mut bundles = Vec::new();
        for (label, step) in [("200", Some(200usize)), ("800", Some(800)), ("final", None)] {
            let dir = step.map_or("final".to_string(), |s| format!("step-{s}"));
            let models = family_models()
                .iter()
                .map(|s| step.map_or(s.clone(), |n| step_dir(s, n)))
                .collect();
            let request = AnalysisRequest {
                models,
                max_tokens: Some(4096),
                out: root.join(&dir),
                backend: BackendKind::Cpu,
                command: vec!["seedscope-app tests: series".into()],
                ..AnalysisRequest::default()
            };
            run_analysis(&request, Arc::new(AtomicBool::new(false)), |_| {}).expect("step");
            let bundle = seedscope_analysis::Bundle::read(&root.join(&dir)).expect("bundle");
            bundles.push((label.to_string(), step.map(|s| s as u64), dir, bundle));
        }
        let t = Trajectory::from_bundles(&bundles).expect("trajectory");
        let last = root.join("final");
        std::fs::write(last.join(TRAJECTORY), t.to_json().expect("json")).expect("write");
        last
    })
    .clone()
}

/// The app as started with `launch`, in a 1280x860 window (rendered by wgpu when `wgpu`).
fn app_with(launch: Launch, wgpu: bool) -> Harness<'static, SeedscopeApp> {
    let builder = Harness::builder().with_size([1280.0, 860.0]);
    let builder = if wgpu { builder.wgpu() } else { builder };
    builder.build_eframe(move |cc| SeedscopeApp::new(cc, launch))
}

/// The app with the fixture bundle open.
fn harness() -> Harness<'static, SeedscopeApp> {
    let mut h = app_with(
        Launch {
            bundle: Some(bundle()),
            embedded_bundle: PathBuf::from("/nonexistent"),
            analyse_embedded: false,
            ..Launch::default()
        },
        true,
    );
    wait(&mut h, "the bundle to open", |app| app.ex.is_some());
    h
}

/// Step the UI until `done` holds (background threads report through channels).
fn wait(h: &mut Harness<'_, SeedscopeApp>, what: &str, done: impl Fn(&SeedscopeApp) -> bool) {
    let t0 = Instant::now();
    while !done(h.state()) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}; messages: {:?}",
            h.state().messages
        );
        std::thread::sleep(Duration::from_millis(20));
        h.step();
    }
    h.run_steps(4);
}

/// Step the UI until the correlation map's tile is read (a background task) and drawn.
fn wait_for_tile(h: &mut Harness<'_, SeedscopeApp>) {
    wait(h, "the correlation tile", |app| {
        app.map.tile.is_some() && !app.map.is_loading() && app.map.rect.is_some()
    });
}

/// A primary click (press, one frame, release) at `pos`.
fn click_at(h: &Harness<'_, SeedscopeApp>, pos: egui::Pos2) {
    for pressed in [true, false] {
        h.event(egui::Event::PointerButton {
            pos,
            button: PointerButton::Primary,
            pressed,
            modifiers: Modifiers::NONE,
        });
    }
}

fn explorer(h: &Harness<'_, SeedscopeApp>) -> Arc<Explorer> {
    h.state().ex.clone().expect("a bundle is open")
}

#[test]
fn a_table_row_opens_the_neuron_page_and_arrow_keys_step_through_the_table() {
    let mut h = harness();
    h.get_by_label("Table").click();
    h.run_steps(4);
    assert_eq!(h.state().tab, Tab::Table);
    let ex = explorer(&h);
    let order = h.state().table.order.clone();
    assert_eq!(order.len(), ex.n_layers() * ex.d_mlp());
    // Sorted by excess correlation, highest first.
    assert!(ex.rows()[order[0]].excess_corr >= ex.rows()[order[1]].excess_corr);
    let first = ex.id_of_row(order[0]).expect("row 0");
    h.get_by_label(&first.short()).click();
    h.run_steps(4);
    assert_eq!(h.state().tab, Tab::Neuron);
    assert_eq!(h.state().selected, Some(first));
    assert!(
        h.query_all_by_label(&format!("seed-a {}", first.short()))
            .count()
            >= 1
    );
    // Its best matches are listed with links.
    for m in ex.matches(first) {
        assert!(h.query_all_by_label(&m.id.short()).count() >= 1);
    }
    h.key_press(Key::ArrowRight);
    h.run_steps(4);
    let second = ex.id_of_row(order[1]).expect("row 1");
    assert_eq!(h.state().selected, Some(second));
    assert!(
        h.query_all_by_label(&format!("seed-a {}", second.short()))
            .count()
            >= 1
    );
    h.key_press(Key::ArrowLeft);
    h.run_steps(4);
    assert_eq!(h.state().selected, Some(first));
    // `/` jumps to the table's search; typing a neuron id filters to it.
    h.key_press(Key::Slash);
    h.run_steps(4);
    assert_eq!(h.state().tab, Tab::Table);
    let search = h.get_by_label("search:");
    search.click();
    search.type_text("L1.7");
    h.run_steps(4);
    let order = h.state().table.order.clone();
    assert_eq!(order.len(), 1);
    assert_eq!(
        ex.id_of_row(order[0]),
        Some(NeuronId {
            model: 0,
            layer: 1,
            neuron: 7
        })
    );
}

#[test]
fn dragging_the_threshold_line_updates_the_counts() {
    let mut h = harness();
    let ex = explorer(&h);
    let count_label = |t: f64| {
        let (u, n) = ex
            .counts(0, t)
            .iter()
            .fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
        format!(
            "universal: {u} of {n} ({:.2}%)",
            100.0 * u as f64 / n as f64
        )
    };
    h.get_by_label(&count_label(0.5));
    // Fig. 3's medians cover exactly the universal neurons.
    let n_universal: usize = ex.counts(0, 0.5).iter().map(|c| c.0).sum();
    h.get_by_label(&format!("over {n_universal} universal neurons"));
    // Press on the Fig. 2a plot at a quarter of its width: the threshold follows the pointer.
    let rect = h.state().plot_rect().expect("the fig. 2a plot was drawn");
    let pos = rect.left_center() + egui::vec2(rect.width() * 0.3, 0.0);
    h.hover_at(pos);
    click_at(&h, pos);
    h.run_steps(4);
    let t = h.state().threshold;
    assert!(t < 0.45, "threshold {t} did not follow the pointer");
    assert_ne!(
        count_label(t),
        count_label(0.5),
        "the counts should change at {t}"
    );
    h.get_by_label(&count_label(t));
    // And the per-layer table filter agrees.
    h.state_mut().table.only_universal = true;
    h.get_by_label("Table").click();
    h.run_steps(4);
    let n: usize = ex.counts(0, t).iter().map(|c| c.0).sum();
    assert_eq!(h.state().table.order.len(), n);
}

#[test]
fn hovering_the_heatmap_names_both_neurons_and_r_and_a_click_opens_the_neuron() {
    let mut h = harness();
    h.get_by_label("Correlation map").click();
    h.run_steps(4);
    wait_for_tile(&mut h);
    let ex = explorer(&h);
    let rect = h.state().map.rect.expect("the heatmap was drawn");
    let d = ex.d_mlp();
    // The cell under a point a third of the way across and two thirds down.
    let pos = rect.min + egui::vec2(rect.width() / 3.0 + 0.1, rect.height() * 2.0 / 3.0 + 0.1);
    let col = ((pos.x - rect.min.x) / rect.width() * d as f32) as usize;
    let row = ((pos.y - rect.min.y) / rect.height() * d as f32) as usize;
    let tile = ex.read_tile(&ex.tile_name(0, 0, 1, 0)).expect("tile L0-L0");
    let expected = format!(
        "seed-a L0.{row} × seed-b L0.{col}: r = {:.3}",
        tile[row * d + col]
    );
    h.hover_at(pos);
    h.run_steps(4);
    assert_eq!(h.state().map.hover_text.as_deref(), Some(expected.as_str()));
    assert!(
        h.query_all_by_label(&expected).count() >= 1,
        "tooltip {expected:?} not shown"
    );
    click_at(&h, pos);
    h.run_steps(4);
    assert_eq!(h.state().tab, Tab::Neuron);
    assert_eq!(
        h.state().selected,
        Some(NeuronId {
            model: 0,
            layer: 0,
            neuron: row
        })
    );
}

/// Models of different shapes (tests/fixtures: gpt2-plain, 3 layers of 128 neurons; gpt2-wide,
/// 4 of 160): the map draws a tile of the two models' layers with each one's neurons on its
/// axis, and its hover names both.
#[test]
fn the_map_of_models_of_different_shapes_names_each_axis() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-unequal/bundle");
    let request = AnalysisRequest {
        models: vec![fixtures.join("gpt2-plain"), fixtures.join("gpt2-wide")],
        data: seedscope_analysis::job::DataSource::Tokens(fixtures.join("analysis/tokens.npy")),
        out: out.clone(),
        save_tiles: Some("all".into()),
        backend: BackendKind::Cpu,
        ..AnalysisRequest::default()
    };
    let end = run_analysis(&request, Arc::new(AtomicBool::new(false)), |_| {}).expect("analysis");
    assert_eq!(end, JobEnd::Written(out.clone()));
    let mut h = app_with(
        Launch {
            bundle: Some(out),
            embedded_bundle: PathBuf::from("/nonexistent"),
            analyse_embedded: false,
            ..Launch::default()
        },
        true,
    );
    wait(&mut h, "the bundle to open", |app| app.ex.is_some());
    h.get_by_label("Correlation map").click();
    h.run_steps(2);
    let (a, b) = (
        NeuronId {
            model: 0,
            layer: 2,
            neuron: 0,
        },
        NeuronId {
            model: 1,
            layer: 3,
            neuron: 0,
        },
    );
    h.state_mut().map.show_pair(a, b);
    h.run_steps(2);
    wait_for_tile(&mut h);
    let ex = explorer(&h);
    let data = &h.state().map.tile.as_ref().expect("tile").data;
    assert_eq!((data.rows, data.cols), (128, 160));
    assert!(
        h.query_all_by_label_contains(
            "gpt2-plain L2 neurons (rows, 128) × gpt2-wide L3 neurons (columns, 160)"
        )
        .count()
            >= 1,
        "the map names each axis's model, layer and neurons"
    );
    // Back to the whole tile, then hover a cell two thirds across and one third down.
    h.state_mut().map.view = seedscope_app::heatmap::HeatmapView::whole(128, 160);
    h.run_steps(2);
    let rect = h.state().map.rect.expect("the heatmap was drawn");
    let pos = rect.min + egui::vec2(rect.width() * 2.0 / 3.0 + 0.1, rect.height() / 3.0 + 0.1);
    let col = ((pos.x - rect.min.x) / rect.width() * 160.0) as usize;
    let row = ((pos.y - rect.min.y) / rect.height() * 128.0) as usize;
    let tile = ex.read_tile(&ex.tile_name(0, 2, 1, 3)).expect("tile L2-L3");
    let expected = format!(
        "gpt2-plain L2.{row} × gpt2-wide L3.{col}: r = {:.3}",
        tile[row * 160 + col]
    );
    h.hover_at(pos);
    h.run_steps(4);
    assert_eq!(h.state().map.hover_text.as_deref(), Some(expected.as_str()));
}

/// Exports handed to a [`PageLike`] platform: `(file name, bytes)`.
type Downloads = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A platform like the browser page, natively: no paths (exports are downloads, recorded
/// here), and the bundle's models handed over after it opens, already loaded, with its data in
/// memory (as the page does with the embedded family it fetched).
struct PageLike {
    native: seedscope_app::native::Native,
    downloads: Downloads,
    /// Models to hand over at the next poll.
    pending: Option<Arc<seedscope_app::inspect::Models>>,
}

impl seedscope_app::platform::Platform for PageLike {
    fn analyse_embedded(
        &mut self,
        launch: &Launch,
        ctx: &egui::Context,
    ) -> Result<seedscope_app::jobs::Task<seedscope_app::jobs::AnalysisDone>, seedscope_app::AppError>
    {
        self.native.analyse_embedded(launch, ctx)
    }
    fn open_url(
        &mut self,
        url: &str,
        ctx: &egui::Context,
    ) -> Result<seedscope_app::platform::Opening, seedscope_app::AppError> {
        self.native.open_url(url, ctx)
    }
    fn pick_bundle(&mut self, _: &egui::Context) -> Option<seedscope_app::platform::Opening> {
        None
    }
    fn dropped(
        &mut self,
        files: Vec<egui::DroppedFileHandle>,
        ctx: &egui::Context,
    ) -> Vec<seedscope_app::platform::Opening> {
        self.native.dropped(files, ctx)
    }
    fn browse(
        &self,
        _: &str,
        _: seedscope_app::jobs::Pick,
        _: &egui::Context,
    ) -> Option<seedscope_app::jobs::Task<Option<PathBuf>>> {
        None
    }
    fn has_files(&self) -> bool {
        false
    }
    fn drop_hint(&self) -> &'static str {
        "drop"
    }
    fn models(&self, _: &Explorer) -> Result<Arc<seedscope_app::inspect::Models>, String> {
        Err("fetching the models…".into())
    }
    fn download(&self, name: &str, bytes: &[u8]) -> Result<String, seedscope_app::AppError> {
        let mut d = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        d.push((name.to_owned(), bytes.to_vec()));
        Ok(format!("downloaded {name}"))
    }
    fn opened(&mut self, ex: &Arc<Explorer>, _: &egui::Context) {
        // As the page does: the files' bytes in memory, loaded by `Models::from_memory`.
        let device = seedscope_model::ComputeDevice::open(BackendKind::Cpu).expect("cpu");
        let models = Models::from_memory(ex, device, &memory_inputs(ex)).expect("models");
        assert!(models.has_data(), "the bundle's own data");
        self.pending = Some(Arc::new(models));
    }
    fn poll(
        &mut self,
        _: Option<&Arc<Explorer>>,
        _: &egui::Context,
    ) -> seedscope_app::platform::Polled {
        seedscope_app::platform::Polled {
            models: self.pending.take().map(Ok),
            ..Default::default()
        }
    }
}

/// The inputs of `ex`'s analysis as the page holds them: its models' `config.json` and
/// `model.safetensors`, the anchor's tokenizer and the data file, as bytes.
fn memory_inputs(ex: &Explorer) -> seedscope_analysis::job::MemoryInputs {
    let m = &ex.bundle.manifest;
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    seedscope_analysis::job::MemoryInputs {
        models: m
            .models
            .iter()
            .map(|e| {
                let dir = PathBuf::from(&e.path);
                (
                    e.name.clone(),
                    read(dir.join("config.json")),
                    read(dir.join("model.safetensors")),
                )
            })
            .collect(),
        tokens: seedscope_analysis::job::MemoryTokens::Npy(read(PathBuf::from(&m.data_source))),
        tokenizer_json: read(PathBuf::from(&m.models[0].path).join("tokenizer.json")),
        source: m.data_source.clone(),
    }
}

/// A bundle the page analysed from models chosen from disk (bytes in, bundle in memory, the
/// data a text) is served by those same inputs: `Models::from_memory` reads the analysed rows
/// and gives the traces of the models loaded from their directories; weights other than the
/// bundle's, a model it lacks and other data are named.
#[test]
fn models_analysed_in_memory_serve_their_own_bundle() {
    use seedscope_analysis::bundle::BundleSource;
    use seedscope_analysis::job::{MemoryInputs, MemoryTokens, analyse_in_memory};
    let family = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/family");
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let model = |seed: &str, weights_of: &str| {
        (
            seed.to_string(),
            read(family.join(seed).join("config.json")),
            read(family.join(weights_of).join("model.safetensors")),
        )
    };
    let text: String = std::fs::read_to_string(family.join("../../ARCHITECTURE.md"))
        .expect("a text")
        .chars()
        .take(12_000)
        .collect();
    let inputs = |models: Vec<(String, Vec<u8>, Vec<u8>)>, text: &str| MemoryInputs {
        models,
        tokens: MemoryTokens::Text(text.to_string()),
        tokenizer_json: read(family.join("tokenizer.json")),
        source: "ARCHITECTURE.md".into(),
    };
    let picked = inputs(
        vec![model("seed-a", "seed-a"), model("seed-b", "seed-b")],
        &text,
    );
    let device = seedscope_model::ComputeDevice::open(BackendKind::Cpu).expect("cpu");
    let request = AnalysisRequest {
        backend: BackendKind::Cpu,
        ..AnalysisRequest::default()
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let files = pollster::block_on(analyse_in_memory(
        &request,
        &picked,
        &device,
        cancel,
        |_| {},
    ))
    .expect("analysis")
    .expect("not cancelled");
    let ex = Explorer::open_source(BundleSource::Memory {
        label: "models from disk, analysis 1".into(),
        files: Arc::new(files),
    })
    .expect("bundle");
    let models = Models::from_memory(&ex, device.clone(), &picked).expect("models");
    assert!(models.has_data(), "the analysed rows");
    let from_dirs = Models::loaded(
        &ex,
        device.clone(),
        ["seed-a", "seed-b"]
            .iter()
            .map(|s| {
                seedscope_model::LoadedModel::load_on(
                    &family.join(s),
                    &device,
                    burn::tensor::FloatDType::F32,
                )
                .expect("model")
            })
            .collect(),
        seedscope_data::TextTokenizer::from_model_dir(&family.join("seed-a")).expect("tokenizer"),
        None,
    );
    let neurons = page_neurons(
        &ex,
        Some(NeuronId {
            model: 0,
            layer: 1,
            neuron: 7,
        }),
    );
    let live = |m: &Models| pollster::block_on(m.live_text("Enter Horatio.", &neurons));
    assert_eq!(
        live(&models).expect("live"),
        live(&from_dirs).expect("live")
    );
    // Weights other than the bundle's, a model it lacks, other data.
    let swapped = inputs(
        vec![model("seed-a", "seed-a"), model("seed-b", "seed-c")],
        &text,
    );
    let e = Models::from_memory(&ex, device.clone(), &swapped)
        .err()
        .expect("other weights")
        .to_string();
    assert!(e.contains("seed-b/model.safetensors is not the one"), "{e}");
    let lacking = inputs(vec![model("seed-a", "seed-a")], &text);
    let e = Models::from_memory(&ex, device.clone(), &lacking)
        .err()
        .expect("a model missing")
        .to_string();
    assert!(
        e.contains("model seed-b is not among the models at hand (seed-a)"),
        "{e}"
    );
    let other = inputs(
        vec![model("seed-a", "seed-a"), model("seed-b", "seed-b")],
        &text.repeat(2),
    );
    let m = Models::from_memory(&ex, device, &other).expect("models");
    assert!(!m.has_data(), "other text is not the bundle's data");
}

/// As in the browser: the models arrive after the bundle opens, live text and the example
/// scan run on them (the same traces as the desktop's), T and E drive them from the keyboard,
/// and exports are downloads.
#[test]
fn models_handed_over_later_run_live_text_and_examples_and_exports_download() {
    let downloads: Downloads = Arc::default();
    let platform = PageLike {
        native: seedscope_app::native::Native,
        downloads: downloads.clone(),
        pending: None,
    };
    let launch = Launch {
        bundle: Some(bundle()),
        embedded_bundle: PathBuf::from("/nonexistent"),
        analyse_embedded: false,
        ..Launch::default()
    };
    let mut h = Harness::builder()
        .with_size([1280.0, 860.0])
        .build_eframe(move |cc| SeedscopeApp::with_platform(cc, launch, Box::new(platform)));
    wait(&mut h, "the bundle to open", |app| app.ex.is_some());
    let ex = explorer(&h);
    h.key_press(Key::Num4);
    h.run_steps(2);
    assert_eq!(h.state().tab, Tab::Neuron);
    // T gives the live text field the keyboard; typing replaces the text.
    h.key_press(Key::T);
    h.run_steps(2);
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.get_by_label("Live text").type_text("Who is there?");
    wait(&mut h, "the live text", |app| {
        app.neuron
            .live
            .as_ref()
            .is_some_and(|(t, _)| t == "Who is there?")
    });
    let (_, live) = h.state().neuron.live.clone().expect("live text");
    let neurons = page_neurons(&ex, h.state().selected);
    let native = seedscope_app::inspect::Models::new(&ex).expect("models");
    let want = pollster::block_on(native.live_text("Who is there?", &neurons)).expect("live");
    assert_eq!(
        live, want,
        "the handed-over models give the desktop's traces"
    );
    assert_eq!(live.traces.len(), ex.names.len(), "every seed");
    // E (once Escape has taken the keyboard from the text field) scans the data in memory for
    // the neuron and its matches.
    h.key_press(Key::Escape);
    h.run_steps(1);
    h.key_press(Key::E);
    wait(&mut h, "the examples", |app| {
        app.neuron.examples_task.is_none()
            && neurons.iter().all(|n| app.neuron.examples.contains_key(n))
    });
    // The same examples as the desktop's scan of the data file.
    let (k, rows) = (
        h.state().settings.examples_k,
        h.state().settings.examples_rows,
    );
    let scan = neurons.clone();
    let mut desktop =
        seedscope_app::jobs::Task::spawn_async("examples", None, move |rep| async move {
            native.examples(&scan, k, rows, &rep).await
        });
    let want = loop {
        if let seedscope_app::jobs::Poll::Done(r) = desktop.poll() {
            break r.expect("desktop examples");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for (n, w) in neurons.iter().zip(&want) {
        let e = &h.state().neuron.examples[n];
        assert!(e.scanned > 0 && !e.top.is_empty(), "{n:?}");
        assert_eq!(
            e, w,
            "{n:?}: the in-memory data gives the desktop's examples"
        );
    }
    // Exports: the table as CSV, downloaded (no path asked for).
    h.get_by_label("File").click();
    h.run_steps(2);
    let item = h.get_by_label("Export table as CSV…");
    eprintln!("menu item at {:?}", item.rect());
    item.click();
    h.run_steps(2);
    assert!(h.state().prompt.is_none(), "no path is asked for");
    let got = downloads.lock().expect("downloads").clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "neurons.csv");
    let csv = String::from_utf8(got[0].1.clone()).expect("utf-8");
    assert_eq!(csv.lines().count(), 1 + h.state().table.order.len());
}

#[test]
fn live_text_shows_the_neuron_in_every_seed() {
    let mut h = harness();
    let ex = explorer(&h);
    let id = NeuronId {
        model: 0,
        layer: 1,
        neuron: 3,
    };
    h.state_mut().open_neuron(id);
    h.state_mut().settings.live_text = "To be, or not to be".into();
    h.run_steps(4);
    wait(&mut h, "live text", |app| app.neuron.live.is_some());
    let (text, live) = h.state().neuron.live.clone().expect("live text");
    assert_eq!(text, "To be, or not to be");
    // The neuron and its best match in each of the four other seeds.
    assert_eq!(live.traces.len(), 5);
    assert_eq!(live.traces[0].id, id);
    let matches: Vec<NeuronId> = ex.matches(id).iter().map(|m| m.id).collect();
    assert_eq!(
        live.traces[1..].iter().map(|t| t.id).collect::<Vec<_>>(),
        matches
    );
    assert!(live.tokens.len() > 3);
    for t in &live.traces {
        assert_eq!(t.acts.len(), live.tokens.len());
        assert!(t.acts.iter().all(|v| v.is_finite()));
    }
    // Different seeds' neurons give different traces (they are different models).
    assert_ne!(live.traces[0].acts, live.traces[1].acts);
}

#[test]
fn examples_are_found_for_the_neuron_and_its_matches() {
    let mut h = harness();
    let id = NeuronId {
        model: 0,
        layer: 0,
        neuron: 5,
    };
    h.state_mut().settings.examples_rows = 16;
    h.state_mut().settings.examples_k = 5;
    h.state_mut().open_neuron(id);
    h.run_steps(4);
    let button = h
        .query_all_by_label_contains("Find them")
        .next()
        .expect("the find-examples button");
    button.click();
    h.run_steps(4);
    wait(&mut h, "examples", |app| app.neuron.examples_task.is_none());
    let page = h.state().page_neurons();
    for n in &page {
        let e = h
            .state()
            .neuron
            .examples
            .get(n)
            .expect("examples for every page neuron");
        assert_eq!(e.top.len(), 5);
        assert!(e.top.windows(2).all(|w| w[0].value >= w[1].value));
        for x in &e.top {
            // The stored value is the activation at the marked position.
            assert_eq!(x.acts[x.pos], x.value);
        }
        // Top tokens: ones the neuron fires on, highest mean first.
        let means: Vec<f32> = e.top_tokens.iter().map(|t| t.1).collect();
        assert!(!means.is_empty(), "{n:?} has top tokens");
        assert!(means.windows(2).all(|w| w[0] >= w[1]));
        assert!(means.iter().all(|&m| m > 0.0 && m >= 0.01 * means[0]));
    }
}

#[test]
fn snapshots_of_the_main_views() {
    let mut h = harness();
    // The bundle has the permutation null: Fig. 2a draws it and the overview counts.
    h.get_by_label_contains("Permutation null: by chance alignment");
    h.snapshot("overview");
    h.get_by_label("Correlation map").click();
    h.run_steps(4);
    h.state_mut().map.choice.order = seedscope_app::views::map::MapOrder::Assignment;
    h.run_steps(4);
    wait_for_tile(&mut h);
    // The one-to-one assignment lies on the diagonal: each shown row's column is its partner,
    // and no column is shown twice.
    let tile = h.state().map.tile.as_ref().expect("tile");
    assert_eq!(
        tile.choice.order,
        seedscope_app::views::map::MapOrder::Assignment
    );
    let mut cols = tile.col_of.clone();
    cols.sort_unstable();
    cols.dedup();
    assert_eq!(cols.len(), tile.row_of.len());
    h.snapshot("correlation_map");
    h.get_by_label("Table").click();
    h.run_steps(4);
    h.snapshot("table");
    // The most universal neuron, its twins, live text and examples.
    let ex = explorer(&h);
    let top = h.state().table.order[0];
    let id = ex.id_of_row(top).expect("row");
    h.state_mut().settings.examples_rows = 16;
    h.state_mut().settings.examples_k = 4;
    h.state_mut().settings.live_text = "To be, or not to be, that is the question".into();
    h.state_mut().open_neuron(id);
    h.run_steps(4);
    // Live text first: its rows push the examples' button down, so a click sent before they
    // arrive can land where the button no longer is.
    wait(&mut h, "live text", |app| {
        app.neuron.live.is_some() && app.neuron.live_task.is_none()
    });
    h.get_by_label_contains("Find them").click();
    h.run_steps(4);
    wait(&mut h, "the examples", |app| {
        app.neuron.examples_task.is_none() && !app.neuron.examples.is_empty()
    });
    h.snapshot("neuron");
}

#[test]
fn the_training_view_draws_the_series_and_the_neuron_page_its_trajectory() {
    let mut h = app_with(
        Launch {
            bundle: Some(series_bundle()),
            embedded_bundle: PathBuf::from("/nonexistent"),
            analyse_embedded: false,
            ..Launch::default()
        },
        true,
    );
    wait(&mut h, "the series' last bundle to open", |app| {
        app.ex.is_some()
    });
    let t = explorer(&h)
        .trajectory
        .clone()
        .expect("the last step has the trajectory");
    assert_eq!(t.steps.len(), 3);
    h.get_by_label("Training").click();
    h.run_steps(4);
    h.get_by_label_contains("Universal neurons per layer (%) against the step");
    // The family's own series over 4,096 tokens: no universal neuron at step 200, most of the
    // final ones by step 800.
    h.get_by_label("Fraction universal at 0.50: 200 0.00% · 800 1.37% · final 1.27%");
    h.snapshot("training");
    // The neuron page of the neuron the view shows has its own trajectory.
    let last = t.excess_corr.last().expect("steps");
    let i = (0..last.len())
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .expect("neurons");
    h.get_by_label("open").click();
    h.run_steps(4);
    let id = h.state().selected.expect("a neuron is open");
    assert_eq!(id.layer * t.d_mlp + id.neuron, i);
    h.get_by_label_contains("Over training:");
}

#[test]
fn a_token_search_ranks_the_neurons_that_fire_on_it() {
    let mut h = harness();
    h.state_mut().settings.examples_rows = 32;
    h.get_by_label("Table").click();
    h.run_steps(4);
    let search = h.get_by_label("search:");
    search.click();
    search.type_text(" the");
    h.run_steps(4);
    h.get_by_label_contains("Which neurons fire on the token")
        .click();
    h.run_steps(4);
    wait(&mut h, "the token search", |app| {
        app.table.token_task.is_none()
    });
    let rank = h.state().table.token_rank.clone().expect("a ranking");
    assert_eq!(rank.query, " the");
    assert!(rank.occurrences > 10);
    assert!(rank.ranked.windows(2).all(|w| w[0].2 >= w[1].2));
    // In a trained model some neuron singles out " the" clearly.
    assert!(rank.ranked[0].2 > 2.0, "best z {}", rank.ranked[0].2);
    let ex = explorer(&h);
    let order = h.state().table.order.clone();
    assert_eq!(order.len(), 50);
    assert_eq!(ex.id_of_row(order[0]), Some(rank.ranked[0].0));
}

#[test]
fn the_first_start_analyses_in_the_background_and_cancel_keeps_a_checkpoint() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-first-start/bundle");
    let work = seedscope_analysis::bundle::partial_dir(&out);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&out);
    let mut h = app_with(
        Launch {
            bundle: None,
            embedded_bundle: out,
            analyse_embedded: true,
            ..Launch::default()
        },
        false,
    );
    assert!(
        h.state().analysis.is_some(),
        "the embedded analysis starts at once"
    );
    // The window keeps drawing while the analysis runs; progress arrives.
    wait(&mut h, "progress", |app| {
        app.analysis.as_ref().is_some_and(|t| t.progress.is_some())
    });
    assert!(h.query_all_by_label_contains("tokens/s").count() >= 1);
    h.get_by_label("Cancel").click();
    h.run_steps(4);
    wait(&mut h, "the cancel", |app| app.analysis.is_none());
    assert!(
        h.state()
            .messages
            .iter()
            .any(|m| m.contains("analysis cancelled")),
        "{:?}",
        h.state().messages
    );
    assert!(work.join("checkpoint.safetensors").exists());
    assert!(h.state().ex.is_none());
}

#[test]
fn exports_write_the_table_as_csv_and_a_plot_as_png_and_settings_persist() {
    let mut h = harness();
    let ex = explorer(&h);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-exports");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // CSV: the table's current order with its columns.
    let order = h.state().table.order.clone();
    let csv = seedscope_app::views::table::csv_bytes(&ex, &order).expect("csv");
    let mut reader = csv::Reader::from_reader(&csv[..]);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    assert_eq!(rows.len(), order.len());
    let first = &ex.rows()[order[0]];
    assert_eq!(&rows[0][1], first.layer.to_string());
    assert_eq!(&rows[0][2], first.neuron.to_string());
    assert_eq!(
        rows[0][9].parse::<f64>().expect("excess"),
        first.excess_corr
    );
    // PNG: a region of a rendered frame.
    let image = h.render().expect("render");
    let color = egui::ColorImage::from_rgba_unmultiplied(
        [image.width() as usize, image.height() as usize],
        image.as_raw(),
    );
    let rect = h.state().plot_rect().expect("plot rect");
    let png = seedscope_app::export::png_region(&color, rect, 1.0).expect("png");
    let back = image::load_from_memory(&png)
        .expect("png reads back")
        .to_rgba8();
    assert_eq!(back.width(), rect.max.x as u32 - rect.min.x as u32);
    assert_eq!(back.height(), rect.max.y as u32 - rect.min.y as u32);
    assert!(
        back.pixels().any(|p| p.0 != back.get_pixel(0, 0).0),
        "the plot is not blank"
    );
    // Settings: saved with the last bundle, restored by eframe's storage.
    #[derive(Default)]
    struct Mem(std::collections::HashMap<String, String>);
    impl eframe::Storage for Mem {
        fn get_string(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
        fn set_string(&mut self, key: &str, value: String) {
            self.0.insert(key.into(), value);
        }
        fn remove_string(&mut self, key: &str) {
            self.0.remove(key);
        }
        fn flush(&mut self) {}
    }
    let mut mem = Mem::default();
    h.state_mut().settings.live_text = "persist me".into();
    eframe::App::save(h.state_mut(), &mut mem);
    let restored: seedscope_app::Settings =
        eframe::get_value(&mem, eframe::APP_KEY).expect("settings saved");
    assert_eq!(restored.live_text, "persist me");
    assert_eq!(restored.last_bundle.as_deref(), Some(bundle().as_path()));
}

#[test]
fn a_bundle_opens_from_the_file_menu_by_typing_its_path() {
    let dir = bundle();
    let mut h = app_with(
        Launch {
            bundle: None,
            embedded_bundle: PathBuf::from("/nonexistent"),
            analyse_embedded: false,
            ..Launch::default()
        },
        false,
    );
    h.run_steps(2);
    assert!(h.state().ex.is_none());
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Open bundle…").click();
    h.run_steps(2);
    // A wrong path is a readable error, not a crash.
    let path = h.get_by_label("path");
    path.click();
    path.type_text("/nonexistent/bundle");
    h.run_steps(2);
    h.get_by_label("OK").click();
    h.run_steps(2);
    wait(&mut h, "the error", |app| {
        app.messages.iter().any(|m| m.contains("could not open"))
    });
    assert!(
        h.state()
            .messages
            .iter()
            .any(|m| m.contains("/nonexistent/bundle/manifest.json")),
        "{:?}",
        h.state().messages
    );
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Open bundle…").click();
    h.run_steps(2);
    let path = h.get_by_label("path");
    path.click();
    path.type_text(&dir.display().to_string());
    h.run_steps(2);
    h.get_by_label("OK").click();
    h.run_steps(2);
    wait(&mut h, "the bundle to open", |app| app.ex.is_some());
    assert_eq!(explorer(&h).source.display(), dir.display().to_string());
    assert_eq!(h.state().settings.recent.first(), Some(&dir));
}

#[test]
fn the_new_analysis_dialog_runs_an_analysis_and_opens_its_bundle() {
    let mut h = harness();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-dialog/bundle");
    let _ = std::fs::remove_dir_all(&out);
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("New analysis…").click();
    h.run_steps(2);
    let budget = h.get_by_label("Token budget (0 = all)");
    budget.click();
    h.run_steps(2);
    let budget = h.get_by_label("Token budget (0 = all)");
    budget.type_text("2048");
    h.key_press(Key::Enter);
    h.run_steps(2);
    // Replace the default output path: select all, then type.
    h.get_by_label("Output bundle").click();
    h.run_steps(2);
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.run_steps(1);
    h.get_by_label("Output bundle")
        .type_text(&out.display().to_string());
    h.run_steps(2);
    h.get_by_label("Permutation null (chance alignment of tokens)")
        .click();
    h.run_steps(2);
    h.get_by_label("f32 co-moments (no tensor cores)").click();
    h.run_steps(2);
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(h.state().analysis.is_some(), "{:?}", h.state().messages);
    wait(&mut h, "the analysis", |app| app.analysis.is_none());
    let ex = explorer(&h);
    assert_eq!(
        ex.source.display(),
        out.display().to_string(),
        "{:?}",
        h.state().messages
    );
    assert_eq!(ex.bundle.manifest.n_tokens, 2048);
    assert!(
        ex.bundle.manifest.options.permutation_null,
        "the null was asked for"
    );
    assert!(
        ex.bundle.manifest.options.fp32_co_moments,
        "the f32 co-moments were asked for"
    );
    assert!(ex.rows().iter().all(|r| !r.mean_null.is_nan()));
    assert!(
        ex.tile_names().count() > 0,
        "the dialog saves tiles by default"
    );
}

#[test]
fn the_overview_and_the_map_export_as_svg() {
    let mut h = harness();
    let svg = h.state_mut().plot_svg().expect("overview svg");
    assert!(svg.contains("Fig. 2a") && svg.contains("Fig. 2c") && svg.contains("seed-a"));
    h.get_by_label("Correlation map").click();
    h.run_steps(4);
    wait_for_tile(&mut h);
    let svg = h.state_mut().plot_svg().expect("map svg");
    assert!(svg.contains("seed-a L0 (rows, 512)") && svg.contains("seed-b L0 (columns, 512)"));
    h.get_by_label("Table").click();
    h.run_steps(4);
    assert!(h.state_mut().plot_svg().is_err());
    // Through the menu, to a file.
    h.get_by_label("Overview").click();
    h.run_steps(4);
    assert_eq!(h.state().tab, Tab::Overview);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-exports/overview.svg");
    std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    let _ = std::fs::remove_file(&path);
    h.get_by_label("File").click();
    h.run_steps(4);
    h.get_by_label("Export plot as SVG…").click();
    h.run_steps(2);
    h.get_by_label("path").click();
    h.run_steps(1);
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.get_by_label("path")
        .type_text(&path.display().to_string());
    h.run_steps(2);
    h.get_by_label("Save").click();
    h.run_steps(2);
    let written = std::fs::read_to_string(&path).expect("the svg was written");
    assert!(written.starts_with("<svg"));
}

#[test]
fn weight_statistics_reach_the_neuron_page_and_filter_the_table() {
    let mut h = harness();
    let ex = explorer(&h);
    // The job computed them for every anchor neuron.
    assert!(
        ex.rows()
            .iter()
            .all(|r| r.l2_penalty.is_finite() && r.vocab_kurt.is_finite())
    );
    let id = NeuronId {
        model: 0,
        layer: 1,
        neuron: 41,
    };
    let (top, bottom) = ex.vocab_ends(id).expect("vocabulary ends in the bundle");
    assert_eq!((top.len(), bottom.len()), (10, 10));
    h.state_mut().open_neuron(id);
    h.run_steps(4);
    assert!(h.query_all_by_label_contains("promotes: ").count() == 1);
    assert!(h.query_all_by_label("l2 penalty").count() == 1);
    // A range filter on l2 penalty keeps exactly the neurons inside it.
    h.get_by_label("Table").click();
    h.run_steps(2);
    h.get_by_label("where").click();
    h.run_steps(2);
    let mut l2: Vec<f64> = ex.rows().iter().map(|r| r.l2_penalty).collect();
    l2.sort_by(f64::total_cmp);
    let median = l2[l2.len() / 2];
    let range = h.state().table.range.expect("the filter is on");
    h.state_mut().table.range = Some((range.0, median, f64::INFINITY));
    h.run_steps(4);
    let order = h.state().table.order.clone();
    let want = l2.iter().filter(|&&v| v >= median).count();
    assert_eq!(order.len(), want);
    assert!(order.iter().all(|&i| ex.rows()[i].l2_penalty >= median));
}

/// The anatomy from the bundle: the neuron page names the family and best features, and the
/// family filter keeps exactly that family's neurons.
#[test]
fn anatomy_reaches_the_neuron_page_and_the_family_filter() {
    let mut h = harness();
    let ex = explorer(&h);
    let id = NeuronId {
        model: 0,
        layer: 1,
        neuron: 41,
    };
    let best = ex.best_features(id);
    assert_eq!(best.len(), 3, "three best features per neuron");
    assert!(
        best.windows(2).all(|w| w[0].1 >= w[1].1),
        "best first: {best:?}"
    );
    assert!(!ex.mean_top_tokens(id).is_empty());
    h.state_mut().open_neuron(id);
    h.run_steps(4);
    assert_eq!(h.query_all_by_label_contains("family: ").count(), 1);
    assert_eq!(
        h.query_all_by_label_contains("token features by variance explained: ")
            .count(),
        1
    );
    assert_eq!(
        h.query_all_by_label_contains("highest mean activation over the analysed data")
            .count(),
        1
    );
    // Every neuron has a family; the filter keeps one family's neurons.
    assert!(ex.rows().iter().all(|r| !r.family.is_empty()));
    let fam = ex.rows()[0].family.clone();
    let fam: &'static str = seedscope_app::views::table::FAMILIES
        .iter()
        .find(|f| **f == fam)
        .expect("a known family");
    h.get_by_label("Table").click();
    h.run_steps(2);
    h.state_mut().table.family = Some(fam);
    h.run_steps(4);
    let order = h.state().table.order.clone();
    let want = ex.rows().iter().filter(|r| r.family == fam).count();
    assert_eq!(order.len(), want);
    assert!(order.iter().all(|&i| ex.rows()[i].family == fam));
}

#[test]
fn the_role_filter_keeps_the_neurons_with_that_vocabulary_role() {
    let mut h = harness();
    let ex = explorer(&h);
    let role_of = |r: &seedscope_analysis::NeuronRow| {
        seedscope_analysis::weights::vocab_role(r.vocab_kurt, r.vocab_skew, r.vocab_var)
    };
    h.get_by_label("Table").click();
    h.run_steps(2);
    h.state_mut().table.role = Some("partition");
    h.run_steps(4);
    let order = h.state().table.order.clone();
    let want = ex
        .rows()
        .iter()
        .filter(|r| role_of(r) == Some("partition"))
        .count();
    assert_eq!(order.len(), want);
    assert!(want > 0, "some neurons of the family are partition neurons");
    assert!(
        order
            .iter()
            .all(|&i| role_of(&ex.rows()[i]) == Some("partition"))
    );
}

#[test]
fn a_later_start_opens_the_cached_embedded_bundle_without_analysing() {
    let dir = bundle();
    let mut h = app_with(
        Launch {
            bundle: None,
            embedded_bundle: dir,
            analyse_embedded: true,
            ..Launch::default()
        },
        false,
    );
    assert!(
        h.state().analysis.is_none(),
        "a cached bundle is opened, not recomputed"
    );
    wait(&mut h, "the cached bundle", |app| app.ex.is_some());
    assert_eq!(
        explorer(&h).source.display(),
        bundle().display().to_string()
    );
}

#[test]
fn the_bundle_carries_within_layer_percentiles_of_the_papers_statistics() {
    let dir = bundle();
    // `seedscope summary` prints Fig. 3's medians for the universal neurons.
    let summary = seedscope_analysis::Bundle::read(&dir)
        .expect("bundle")
        .summary();
    assert!(
        summary.contains("median percentile within their layer") && summary.contains("vocab_kurt "),
        "{summary}"
    );
    let mut reader = csv::Reader::from_path(dir.join("neurons.csv")).expect("neurons.csv");
    let header = reader.headers().expect("header").clone();
    let col = |name: &str| header.iter().position(|h| h == name).expect(name);
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    let num = |r: &csv::StringRecord, c: usize| r[c].parse::<f64>().expect("number");
    for stat in [
        "sparsity",
        "mean",
        "skew",
        "kurt",
        "input_bias",
        "in_out_sim",
        "l2_penalty",
        "vocab_kurt",
    ] {
        let (v, p, layer) = (col(stat), col(&format!("{stat}_pct")), col("layer"));
        for r in records.iter().step_by(37) {
            let same_layer: Vec<f64> = records
                .iter()
                .filter(|x| x[layer] == r[layer])
                .map(|x| num(x, v))
                .collect();
            let want = seedscope_analysis::stats::percentile_of_score(&same_layer, num(r, v));
            // The values were written with 6 significant digits; allow one rank of slack.
            assert!(
                (num(r, p) - want).abs() <= 100.0 / same_layer.len() as f64 + 1e-3,
                "{stat}: {} vs {want}",
                num(r, p)
            );
        }
    }
}

#[test]
fn a_corrupt_bundle_is_a_readable_error_naming_the_file() {
    let src = bundle();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-corrupt/bundle");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in [
        "manifest.json",
        "neurons.csv",
        "correlation.safetensors",
        "tiles.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy");
    }
    // A truncated correlation file.
    let c = dir.join("correlation.safetensors");
    let bytes = std::fs::read(&c).expect("read");
    std::fs::write(&c, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = Explorer::open(&dir).expect_err("a truncated file is refused");
    assert!(err.to_string().contains("correlation.safetensors"), "{err}");
    // A tile index that lies about its tensors.
    std::fs::write(&c, &bytes).expect("restore");
    std::fs::write(
        dir.join("tiles.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"x\":1}        ",
    )
    .expect("tiles");
    let err = Explorer::open(&dir).expect_err("a bad tile file is refused");
    assert!(err.to_string().contains("tiles.safetensors"), "{err}");
    // Through the app: an error message, no crash, nothing open.
    let mut h = app_with(
        Launch {
            bundle: Some(dir.clone()),
            embedded_bundle: PathBuf::from("/nonexistent"),
            analyse_embedded: false,
            ..Launch::default()
        },
        false,
    );
    wait(&mut h, "the error", |app| {
        app.messages.iter().any(|m| m.contains("could not open"))
    });
    assert!(h.state().ex.is_none());
    assert!(h.query_all_by_label_contains("tiles.safetensors").count() >= 1);
}

/// The examples a bundle stores (what the browser shows, as it cannot run the models): the
/// anchor's top activations with their windows, none for the other seeds' neurons.
#[test]
fn stored_examples_come_from_the_anatomy_file() {
    let ex = seedscope_app::Explorer::open(&bundle()).expect("open the bundle");
    let width = ex.n_layers() * ex.d_mlp();
    let anatomy = seedscope_analysis::bundle::AnatomyFile::read(&bundle(), 0, width, true)
        .expect("read the anatomy")
        .expect("the bundle has one");
    let anchor = seedscope_app::NeuronId {
        model: 0,
        layer: 1,
        neuron: 7,
    };
    let other = seedscope_app::NeuronId { model: 1, ..anchor };
    let list = ex
        .stored_examples(&[anchor, other])
        .expect("stored examples");
    assert_eq!(list.len(), 2);
    let i = ex.d_mlp() + 7;
    let top = &list[0].top;
    assert!(!top.is_empty());
    let tok = ex.tokenizer().expect("tokenizer");
    for (j, e) in top.iter().enumerate() {
        assert_eq!(e.value, anatomy.top_val[i * anatomy.k + j]);
        let centre = anatomy.windows[(i * anatomy.k + j) * anatomy.window() + anatomy.context.0];
        assert_eq!(
            e.tokens[e.pos],
            tok.decode(&[centre as u32]).expect("decode")
        );
        assert_eq!(e.acts[e.pos], e.value);
    }
    assert!(top.windows(2).all(|w| w[0].value >= w[1].value));
    assert!(list[1].top.is_empty(), "seed-b was not an anchor");
    assert!(ex.why_no_stored_examples(1).contains("anchors' neurons"));
    // The same bundle without its examples file, as the page opens one whose file it refused
    // for its size: the anchor's neuron page says the file is not loaded, not that bundles
    // keep no examples for it.
    let mut files = seedscope_analysis::bundle::BundleFiles::new();
    for entry in std::fs::read_dir(bundle()).expect("the bundle") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if name != "anatomy.safetensors" {
            files.insert(name, std::fs::read(&path).expect("a file"));
        }
    }
    let without = Explorer::open_source(seedscope_analysis::bundle::BundleSource::Memory {
        label: "without examples".into(),
        files: Arc::new(files),
    })
    .expect("open without the examples");
    let list = without.stored_examples(&[anchor]).expect("none");
    assert!(list[0].top.is_empty());
    assert!(
        without.why_no_stored_examples(0).contains("not loaded"),
        "{}",
        without.why_no_stored_examples(0)
    );
}

/// A long error (they name files, sizes and what to do) is shown whole: wrapped inside the
/// notice's width and on screen, not one line running off the window's left edge.
#[test]
fn a_long_notice_wraps_inside_the_window() {
    let mut h = harness();
    let message = seedscope_app::platform::check_file_fits(
        "http://127.0.0.1/bundle/anatomy.safetensors",
        5_000_000_000,
        900_000_000,
    )
    .expect_err("too large")
    .to_string();
    h.state_mut().error(message.clone());
    h.run_steps(4);
    let rect = h.get_by_label(&message).rect();
    let screen = h.ctx.content_rect();
    eprintln!("notice text at {rect:?} in {screen:?}");
    assert!(rect.width() <= 440.0, "one line {} px wide", rect.width());
    assert!(
        rect.height() > 30.0,
        "not wrapped: {} px tall",
        rect.height()
    );
    assert!(
        screen.contains_rect(rect),
        "off screen: {rect:?} in {screen:?}"
    );
}
