//! Models of different widths and depths that share a tokenizer (gpt2-plain: 3 layers of 128
//! neurons, gpt2-wide: 4 of 160, gpt2-crfm: 3 of 128), each the anchor in turn, against the
//! numpy reference (`scripts/make_analysis_reference.py unequal`): best and worst matches, the
//! baseline in each model's own width, mutual best matches, the one-to-one assignment of layers
//! at the same relative depth, saved tiles; on both paths, over several passes and refined.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{device, fixture, temp_dir};
use seedscope_analysis::{AnalysisOptions, Family, Outcome, Results, Run, Shape};
use seedscope_model::{BackendKind, ComputeDevice};

const MODELS: [&str; 3] = ["gpt2-plain", "gpt2-wide", "gpt2-crfm"];

/// Largest absolute error allowed on a correlation: the seed family's bound
/// (tests/analysis.rs REFERENCE_TOL, ten times the worst measured there).
const TOL: f64 = 8e-6;

struct Reference(Vec<u8>);

impl Reference {
    fn load() -> Self {
        Self(std::fs::read(fixture("unequal/reference.safetensors")).expect("reference"))
    }

    fn get(&self, name: &str) -> Vec<f64> {
        common::tensor_f64s(&self.0, name)
    }
}

/// The reference's baseline matrix of model `m`, layer `l` (see the script).
fn fixed_rotation(d: usize, m: usize, l: usize) -> Vec<f32> {
    let mut r = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            r[i * d + j] = ((73 * i + 151 * j + 37 * l + 11 * m) % 97) as f64 / 48.0 - 1.0;
        }
        let norm = r[i * d..(i + 1) * d]
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt();
        for v in &mut r[i * d..(i + 1) * d] {
            *v /= norm;
        }
    }
    r.into_iter().map(|v| v as f32).collect()
}

fn options() -> AnalysisOptions {
    AnalysisOptions {
        block_rows: 5,
        all_anchors: true,
        save_tiles: vec![(0, 1), (3, 2)],
        ..AnalysisOptions::default()
    }
}

fn run(dev: &ComputeDevice, options: &AnalysisOptions, tag: &str) -> Results {
    let models = common::fixture_models(&MODELS, dev);
    let shapes: Vec<Shape> = models.iter().map(Shape::of).collect();
    let rotations = shapes
        .iter()
        .enumerate()
        .map(|(m, s)| {
            (0..s.n_layers)
                .map(|l| fixed_rotation(s.d_mlp, m, l))
                .collect()
        })
        .collect();
    let tokens = common::analysis_tokens();
    let work = temp_dir(tag);
    let run = Run {
        family: Family {
            models: &models,
            device: dev,
        },
        tokens: &tokens,
        options,
        fingerprint: tag.into(),
        work_dir: Some(&work),
        cancel: Arc::new(AtomicBool::new(false)),
        checkpoint_every: Duration::from_secs(3600),
        rotations: Some(rotations),
        anatomy: None,
    };
    match run.run(|_| {}).expect("analysis runs") {
        Outcome::Done(r) => *r,
        Outcome::Interrupted { .. } => panic!("interrupted"),
    }
}

/// `got` within `tol` of `want`, else a message naming `what`.
fn close(got: f64, want: f64, tol: f64, what: impl Fn() -> String) {
    assert!((got - want).abs() < tol, "{}: {got} vs {want}", what());
}

/// Every anchor's matches, one-to-one columns and saved tiles against the reference; returns
/// the largest error on a correlation. `exhaustive`: the back matches and the assignment were
/// computed over all pairs (not refinement's candidates).
fn check(r: &Results, exhaustive: bool, tol: f64) -> f64 {
    let reference = Reference::load();
    let shapes = [(3, 128), (4, 160), (3, 128)].map(|(n_layers, d_mlp)| Shape { n_layers, d_mlp });
    assert_eq!(r.shapes, shapes);
    assert_eq!(r.n_tokens as f64, reference.get("n_tokens")[0]);
    assert_eq!(r.anchors.len(), 3, "every model is an anchor");
    let mut worst = 0f64;
    for a in &r.anchors {
        let m = a.anchor;
        let width = shapes[m].width();
        let [max, second, argmax, min, base] = [
            "max_corr",
            "second_max",
            "argmax",
            "min_corr",
            "baseline_max_corr",
        ]
        .map(|n| reference.get(&format!("{n}.{m}")));
        for (k, &o) in a.others.iter().enumerate() {
            assert_eq!(a.real[k].max.len(), width);
            assert_eq!(a.one_to_one[k].back_max.len(), shapes[o].width());
            for i in 0..width {
                let e = k * width + i;
                let what =
                    |n: &'static str| move || format!("{n} of {}[{i}] in {}", MODELS[m], MODELS[o]);
                for (got, want, name) in [
                    (a.real[k].max[i], max[e], "max"),
                    (a.real[k].min[i], min[e], "min"),
                    (a.baseline[k].max[i], base[e], "baseline"),
                ] {
                    worst = worst.max((got as f64 - want).abs());
                    close(got as f64, want, tol, what(name));
                }
                // The best match is the reference's unless the runner-up ties within `tol`.
                if max[e] - second[e] > tol {
                    assert_eq!(
                        a.real[k].argmax[i] as f64,
                        argmax[e],
                        "{}",
                        what("argmax")()
                    );
                }
            }
            if !exhaustive {
                continue;
            }
            let o2o = &a.one_to_one[k];
            let [back, back_max, back_second, partner, partner_corr] = [
                "back_argmax",
                "back_max",
                "back_second",
                "partner",
                "partner_corr",
            ]
            .map(|n| reference.get(&format!("{n}.{m}.{k}")));
            for j in 0..shapes[o].width() {
                close(o2o.back_max[j] as f64, back_max[j], tol, || {
                    format!("back_max {m}.{k}[{j}]")
                });
                if back_max[j] - back_second[j] > tol {
                    assert_eq!(
                        o2o.back_argmax[j] as f64, back[j],
                        "back_argmax {m}.{k}[{j}]"
                    );
                }
            }
            // Each anchor layer is assigned within the other's layer at its relative depth:
            // partners there (or none, where the other layer has fewer neurons), and scipy's
            // total weight.
            let (sa, sb) = (shapes[m], shapes[o]);
            for l in 0..sa.n_layers {
                let paired = sa.paired_layer(l, &sb);
                let rows = sa.layer(l);
                let none = |p: f64| p < 0.0;
                for i in rows.clone() {
                    assert_eq!(
                        o2o.partner[i] == u32::MAX,
                        none(partner[i]),
                        "partner {m}.{k}[{i}]"
                    );
                    if !none(partner[i]) {
                        assert_eq!(sb.layer_of(o2o.partner[i] as usize), paired);
                    }
                }
                let sum = |v: &mut dyn Iterator<Item = f64>| v.filter(|c| !c.is_nan()).sum::<f64>();
                let got = sum(&mut rows.clone().map(|i| o2o.partner_corr[i] as f64));
                let want = sum(&mut rows.clone().map(|i| partner_corr[i]));
                assert!(
                    (got - want).abs() < sa.d_mlp as f64 * tol,
                    "assignment of {} L{l} to {} L{paired}: {got} vs {want}",
                    MODELS[m],
                    MODELS[o]
                );
            }
        }
        if exhaustive {
            let rows = seedscope_analysis::bundle::neuron_rows(
                a,
                &MODELS.map(String::from),
                shapes[m].d_mlp,
                0.5,
                &Default::default(),
            );
            let (mutual, assignment) = (
                reference.get(&format!("mutual_best.{m}")),
                reference.get(&format!("assignment_corr.{m}")),
            );
            for (i, (row, _)) in rows.iter().enumerate() {
                assert_eq!((row.layer, row.neuron), shapes[m].split(i));
                assert_eq!(row.mutual_best, mutual[i], "mutual_best {m}[{i}]");
                assert_eq!(
                    row.assignment_corr.is_nan(),
                    assignment[i].is_nan(),
                    "assignment_corr {m}[{i}]"
                );
                if !assignment[i].is_nan() {
                    close(row.assignment_corr, assignment[i], tol, || {
                        format!("assignment_corr {m}[{i}]")
                    });
                }
            }
        }
    }
    // Saved tiles: [anchor d_mlp, other d_mlp] blocks of the reference's correlations.
    for (ta, tb, la, lb) in [(0, 1, 0, 1), (1, 0, 3, 2)] {
        let want = reference.get(&format!("tile.{ta}.{tb}.{la}.{lb}"));
        let anchor = r.anchors.iter().find(|a| a.anchor == ta).expect("anchor");
        let t = anchor
            .tiles
            .iter()
            .find(|t| (t.other, t.layer_a, t.layer_b) == (tb, la, lb))
            .unwrap_or_else(|| panic!("no tile {ta}/{tb} L{la}-L{lb}"));
        assert_eq!(t.corr.len(), shapes[ta].d_mlp * shapes[tb].d_mlp);
        for (g, w) in t.corr.iter().zip(&want) {
            worst = worst.max((*g as f64 - w).abs());
            close(*g as f64, *w, tol, || format!("tile {ta}/{tb} L{la}-L{lb}"));
        }
    }
    worst
}

#[test]
fn models_of_different_shapes_match_the_numpy_reference_on_both_paths() {
    for kind in [BackendKind::Cpu, BackendKind::Wgpu] {
        let dev = device(kind);
        // On wgpu the device's own co-moment kernel and, on an adapter with cooperative
        // matrices, the f32 kernel too.
        for (fp32_co_moments, tol) in common::co_moment_kernels(&dev, TOL) {
            let options = AnalysisOptions {
                fp32_co_moments,
                ..options()
            };
            let worst = check(&run(&dev, &options, "unequal"), true, tol);
            eprintln!(
                "{kind} (fp32_co_moments: {fp32_co_moments}): max |error| of correlations \
                 against the numpy reference: {worst:.2e}"
            );
        }
    }
}

#[test]
fn models_of_different_shapes_tile_into_passes_and_refine_to_the_same_result() {
    let dev = device(BackendKind::Cpu);
    // A budget that holds a few tiles at a time: several passes, reusing the activations
    // (after 2 MiB of weights and results and 4 MiB of a block's streams and their centred
    // copy).
    let small = AnalysisOptions {
        memory_budget: 8 << 20,
        ..options()
    };
    let passes = run(&dev, &small, "unequal-passes");
    assert!(passes.plan.passes.len() > 1, "the budget splits the plan");
    check(&passes, true, TOL);
    // Refined with the prefix covering every token: the candidates hold the true best match.
    let refined = AnalysisOptions {
        refine: Some(seedscope_analysis::Refine {
            prefix_tokens: 1 << 40,
            k: 3,
        }),
        ..options()
    };
    check(&run(&dev, &refined, "unequal-refined"), false, TOL);
}
